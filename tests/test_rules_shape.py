"""Rules of operators that move data (reshapes, joins, slices, gathers, casts, pads, Softmax) against torch.autograd."""
from __future__ import annotations

import numpy as np
import pytest
from exporter_helpers import (
    INT64_MAX,
)
from onnx import TensorProto
from rule_cases import Cases, F, H, K, W, check_case, torch
from test_rules_elementwise import _gap_of

pytestmark = pytest.mark.torch
case = Cases()

@case("Flatten-axis2-and-Reshape-back", True)
def _flatten2(net, a):
    f = net.op("Flatten", a, axis=2)                               # [N·K, h·w]
    return net.op("Reshape", f, net.const([-1, K * H * W])), lambda t: t.reshape(-1, K * H * W)


@case("Flatten-axis3", True)
def _flatten3(net, a):
    f = net.op("Flatten", a, axis=3)                               # [N·K·h, w]
    return net.op("Reshape", f, net.const([-1, K, H, W])), lambda t: t


@case("Reshape-0-K--1", True)
def _reshape1(net, a):
    return net.op("Reshape", a, net.const([0, K, -1])), lambda t: t.reshape(t.shape[0], K, -1)


@case("Reshape-0-2--1-then-transpose", True)
def _reshape2(net, a):
    r = net.op("Reshape", a, net.const([0, 2, -1]))
    return net.op("Transpose", r, perm=[0, 2, 1]), lambda t: t.reshape(t.shape[0], 2, -1).transpose(1, 2)


@case("Reshape-shape-from-Shape-op", True)
def _reshape3(net, a):
    shape = net.op("Shape", a)
    first = net.op("Slice", shape, net.const([0]), net.const([1]))
    target = net.op("Concat", first, net.const([-1, W]), axis=0)
    return net.op("Reshape", a, target), lambda t: t.reshape(t.shape[0], -1, W)


@case("Squeeze-axes", True)
def _squeeze(net, a):
    g, gfn = _gap_of(net, a)
    return net.op("Squeeze", g, net.const([2, 3])), lambda t: gfn(t).squeeze(3).squeeze(2)


@case("Squeeze-negative-axis", True)
def _squeeze_neg(net, a):
    m = net.op("ReduceSum", a, net.const([-1]), keepdims=1)
    return net.op("Squeeze", m, net.const([-1])), lambda t: t.sum(-1)


@case("Unsqueeze-1", True)
def _unsqueeze(net, a):
    return net.op("Unsqueeze", a, net.const([1])), lambda t: t.unsqueeze(1)


@case("Unsqueeze-negative-and-middle", True)
def _unsqueeze2(net, a):
    return net.op("Unsqueeze", a, net.const([-1, 2])), lambda t: t.unsqueeze(2).unsqueeze(-1)


for _perm in ([0, 2, 3, 1], [0, 3, 1, 2], [0, 1, 3, 2], [0, 3, 2, 1]):
    case(f"Transpose-{''.join(map(str, _perm))}", True)(
        (lambda p: lambda net, a: (net.op("Transpose", a, perm=p), lambda t: t.permute(*p)))(_perm))


@case("Concat-A-Relu(A)-channels", True)
def _concat1(net, a):
    return net.op("Concat", a, net.op("Relu", a), axis=1), lambda t: torch.cat([t, torch.relu(t)], 1)


@case("Concat-A-twice-negative-axis", True)
def _concat2(net, a):
    return net.op("Concat", a, a, axis=-1), lambda t: torch.cat([t, t], -1)


@case("Concat-uneven-sizes-height", True)
def _concat3(net, a):
    top = net.op("Slice", a, net.const([0]), net.const([2]), net.const([2]))
    return net.op("Concat", a, top, axis=2), lambda t: torch.cat([t, t[:, :, :2]], 2)


def _split_pieces(net, a):
    s0, s1, s2 = net.op("Split", a, net.const([2, 1, 1]), axis=1, outputs=3)
    return net.op("Concat", s2, s0, axis=1), lambda t: torch.cat([t[:, 3:4], t[:, 0:2]], 1)


case("Split-sizes-one-piece-unused", True)(_split_pieces)


@case("Split-num_outputs-uneven-opset18", True, opset=18)
def _split_num(net, a):
    s0, s1 = net.op("Split", a, axis=3, num_outputs=2, outputs=2)    # 7 → 4, 3
    return net.op("Concat", s1, s0, axis=3), lambda t: torch.cat([t[..., 4:], t[..., :4]], 3)


@case("Split-only-first-piece-used", True, opset=18)
def _split_first(net, a):
    s0, _ = net.op("Split", a, axis=-2, num_outputs=2, outputs=2)
    return s0, lambda t: t[:, :, :3]


def _slice(starts, ends, axes=None, steps=None):
    def head(net, a):
        ins = [a, net.const(starts), net.const(ends)]
        if axes is not None:
            ins.append(net.const(axes))
        if steps is not None:
            ins.append(net.const(steps))
        y = net.op("Slice", *ins)

        def fn(t):
            for i, (s, e) in enumerate(zip(starts, ends)):
                axis = axes[i] % 4 if axes is not None else i
                kept = range(*slice(s, e, steps[i] if steps else 1).indices(t.shape[axis]))  # negative steps too
                t = t.index_select(axis, torch.tensor(list(kept), dtype=torch.long))
            return t
        return y, fn
    return head


case("Slice-negative-end", True)(_slice([1], [-1], [2]))
case("Slice-out-of-range-bounds", True)(_slice([-1000, 2], [1000, INT64_MAX], [3, 1]))
case("Slice-negative-axes-and-starts", True)(_slice([-3, 1], [INT64_MAX, 5], [-1, -2], [1, 1]))
case("Slice-end-beyond-start-clamped", True)(_slice([2, -5], [100, -2], [2, 3]))
case("Slice-all-axes-full-batch-range", True)(_slice([0, 0, 1, 0], [INT64_MAX] * 4))


@case("Slice-int32-bounds", True)
def _slice_int32(net, a):
    y = net.op("Slice", a, net.const([1], np.int32), net.const([-1], np.int32), net.const([3], np.int32))
    return y, lambda t: t[..., 1:-1]


@case("Gather-int32-indices", True)
def _gather_int32(net, a):
    return net.op("Gather", a, net.const([0, 3], dtype=np.int32), axis=1), lambda t: t[:, [0, 3]]


def _gather(indices, axis):
    def head(net, a):
        idx = np.asarray(indices, np.int64)
        y = net.op("Gather", a, net.const(idx), axis=axis)

        def fn(t):
            ax = axis % 4
            taken = torch.index_select(t, ax, torch.from_numpy(idx.reshape(-1) % t.shape[ax]))
            shape = list(t.shape[:ax]) + list(idx.shape) + list(t.shape[ax + 1:])
            return taken.reshape(shape)
        return y, fn
    return head


case("Gather-scalar-index-channels", True)(_gather(2, 1))
case("Gather-scalar-negative-index-last-axis", True)(_gather(-1, 3))
case("Gather-1d-repeats-and-negative", True)(_gather([0, 2, 2, -1], 1))
case("Gather-2d-indices-height", True)(_gather([[0, 1], [1, 5], [3, 3]], 2))
case("Gather-2d-indices-negative-axis", True)(_gather([[6, 0]], -1))


def _gather_nd(indices):
    """GatherND on A moved to [C, H, N, W] (the batch never indexed), the result moved back batch-first."""
    def head(net, a):
        idx = np.asarray(indices, np.int64)
        moved = net.op("Transpose", a, perm=[1, 2, 0, 3])
        y = net.op("GatherND", moved, net.const(idx))
        batch_axis = idx.ndim - 1 + 2 - idx.shape[-1]      # index axes, then [C, H, N, W][k:]
        perm = [batch_axis] + [i for i in range(y_rank(idx)) if i != batch_axis]

        def fn(t):
            m = t.permute(1, 2, 0, 3)
            taken = m[tuple(torch.from_numpy(idx[..., j] % m.shape[j]) for j in range(idx.shape[-1]))]
            return taken.permute(*perm)
        return net.op("Transpose", y, perm=perm), fn
    return head


def y_rank(idx: np.ndarray) -> int:
    """Rank of GatherND's output on a rank-4 input: q - 1 + r - k."""
    return idx.ndim - 1 + 4 - idx.shape[-1]


case("GatherND-channel-rows-with-repeats", True)(_gather_nd([[1], [1], [0], [-1]]))
case("GatherND-channel-height-pairs-repeats-negative", True)(
    _gather_nd([[0, 1], [2, 3], [0, 1], [-1, -2], [1, 0], [0, 1]]))
case("GatherND-2d-index-grid", True)(_gather_nd([[[0, 5], [3, 0]], [[0, 5], [0, 5]]]))


def _softmax(op, axis, opset=17):
    def head(net, a):
        s = net.param([], values=0.5)
        y = net.op(op, net.op("Mul", a, s), axis=axis)
        fn = F.softmax if op == "Softmax" else F.log_softmax
        return y, lambda t: fn(0.5 * t, dim=axis)
    return head


for _axis in (1, -1, 2):
    case(f"Softmax-axis{_axis}", False)(_softmax("Softmax", _axis))
    case(f"LogSoftmax-axis{_axis}", False)(_softmax("LogSoftmax", _axis))


@case("Identity", True)
def _identity(net, a):
    return net.op("Identity", a), lambda t: t


@case("Dropout-inference-with-mask", True)
def _dropout(net, a):
    ratio = net.param([], values=0.5)
    y, _mask = net.op("Dropout", a, ratio, outputs=2)
    return y, lambda t: t


@case("Dropout-plain", True)
def _dropout_plain(net, a):
    return net.op("Dropout", a), lambda t: t


@case("Cast-fp16-weights-Mul", True)
def _cast_fp16_mul(net, a):
    w = net.param([K, 1, 1], dtype=np.float16)
    return net.op("Mul", a, net.op("Cast", w, to=TensorProto.FLOAT)), lambda t: t * w.t


@case("Cast-fp16-weights-Conv", True)
def _cast_fp16_conv(net, a):
    w, b = net.param([3, K, 3, 3], 0.3, dtype=np.float16), net.param([3], dtype=np.float16)
    y = net.op("Conv", a, net.op("Cast", w, to=TensorProto.FLOAT), net.op("Cast", b, to=TensorProto.FLOAT),
               pads=[1, 1, 1, 1])
    return y, lambda t: F.conv2d(t, w.t, b.t, padding=1)


@case("Cast-to-double-and-back", True)
def _cast_double(net, a):
    d = net.op("Cast", a, to=TensorProto.DOUBLE)
    w = net.param([K, 1, 1], dtype=np.float64)
    return net.op("Cast", net.op("Mul", d, w), to=TensorProto.FLOAT), lambda t: t * w.t


@case("Cast-float-to-float", True)
def _cast_same(net, a):
    return net.op("Cast", a, to=TensorProto.FLOAT), lambda t: t


def _pad(pads, value=0.0, axes=None, opset=17):
    def head(net, a):
        ins = [a, net.const(pads), net.param([], values=value)]
        if axes is not None:
            ins.append(net.const(axes))
        y = net.op("Pad", *ins, mode="constant")

        def fn(t):
            full = [0] * 8
            ax = [x % 4 for x in axes] if axes is not None else list(range(4))
            for i, x in enumerate(ax):
                full[x], full[4 + x] = pads[i], pads[len(ax) + i]
            order = []
            for x in reversed(range(4)):
                order += [full[x], full[4 + x]]
            return F.pad(t, tuple(order), value=value)
        return y, fn
    return head


case("Pad-constant", True)(_pad([0, 0, 1, 2, 0, 0, 2, 1]))
case("Pad-constant-value-and-negative", True)(_pad([0, 1, -1, 1, 0, 0, 1, -2], value=0.5))
case("Pad-axes-input-opset18", True, opset=18)(_pad([1, 0, 0, 2], axes=[2, 3]))
case("Pad-negative-axis-opset18", True, opset=18)(_pad([2, -1], axes=[-1], value=-1.0))


# ---------------------------------------------------------------------------------------------


case("Slice-step2-spatial", True)(_slice([0, 1], [INT64_MAX, INT64_MAX], [2, 3], [2, 2]))
case("Slice-negative-step-flip", True)(_slice([-1], [-INT64_MAX], [3], [-1]))
case("Slice-step3-channels", True)(_slice([1], [4], [1], [3]))
case("Slice-negative-step2-from-inside", True)(_slice([4], [0], [2], [-2]))


@case("Tile-spatial-and-channels", True)
def _tile(net, a):
    return net.op("Tile", a, net.const([1, 2, 1, 3])), lambda t: t.repeat(1, 2, 1, 3)


@case("GatherElements-axis3-repeats", True)
def _gather_elements(net, a):
    idx = np.random.default_rng(5).integers(-W, W, (1, K, H, 4))
    index = net.const(idx)
    expanded = net.op("Expand", index, net.op("Concat", net.op("Slice", net.op("Shape", a), net.const([0]),
                                                                 net.const([1])), net.const([K, H, 4]), axis=0))
    y = net.op("GatherElements", a, expanded, axis=3)
    return y, lambda t: torch.gather(t, 3, torch.from_numpy(idx % W).expand(t.shape[0], K, H, 4))


def _depth_space(op: str, mode: str = "DCR"):
    def head(net, a):
        if op == "DepthToSpace":
            y = net.op(op, a, blocksize=2, mode=mode)
        else:
            y = net.op(op, net.op("Slice", a, net.const([0, 0]), net.const([H - H % 2, W - W % 2]),
                                  net.const([2, 3])), blocksize=2)

        def fn(t):
            n, c, h, w = t.shape
            if op == "SpaceToDepth":
                t = t[:, :, :h - h % 2, :w - w % 2]
                n, c, h, w = t.shape
                return t.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4).reshape(n, c * 4, h // 2, w // 2)
            if mode == "DCR":
                return F.pixel_shuffle(t, 2)  # torch's pixel_shuffle is ONNX's CRD
            return F.pixel_shuffle(t, 2)
        return y, fn
    return head


case("DepthToSpace-CRD", True)(_depth_space("DepthToSpace", "CRD"))
case("SpaceToDepth", True)(_depth_space("SpaceToDepth"))


@case("DepthToSpace-DCR", True)
def _depth_to_space_dcr(net, a):
    y = net.op("DepthToSpace", a, blocksize=2, mode="DCR")

    def fn(t):
        n, c, h, w = t.shape
        return t.reshape(n, 2, 2, c // 4, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c // 4, h * 2, w * 2)
    return y, fn


@pytest.mark.parametrize("spec", case)
def test_rule_matches_torch_autograd(spec):
    check_case(spec)
