"""Every reverse-mode rule of the exporter against torch.autograd.

Each case is a tiny ONNX classifier (image → Conv → target "A" [N, K, h, w] → the operator(s)
under test → Flatten → Gemm → logits [N, 5]) with a torch twin written with the same numbers
(float64). The explanation graph runs on a batch of 3 with class_index [-1, 2, 0]; its
``gradients`` must match torch.autograd within max|Δ| ≤ 1e-4·max|g| + 1e-6 and its ``logits``
the torch forward. Each case also states whether the head is piecewise linear, which the
``onnxcam.head_piecewise_linear`` metadata must say.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx_ir")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from onnx import TensorProto  # noqa: E402

from onnxcam.exporter import ExportError  # noqa: E402
from exporter_helpers import (  # noqa: E402
    CLASS_INDEX, Classifier, stem, tail, INT64_MAX, Net, assert_gradients_close, check_against_torch, classifier,
    explanation_graph, head_feed, images, metadata, run,
)

pytestmark = pytest.mark.torch

K, H, W = 4, 6, 7   # the default target tensor A is [N, 4, 6, 7]


@dataclass
class Case:
    head: Callable          # (net, "A") -> (onnx output name, torch function of A)
    linear: bool            # is the head piecewise linear in A?
    opset: int = 17
    image: tuple = (3, H, W)
    channels: int = K
    batch_independent: bool = True    # False where the head mixes the images of a batch


CASES: list = []


def case(name: str, linear: bool, xfail: str | None = None, **kw):
    """Register a head; ``xfail`` is the reason of a known exporter bug (strict: fixing it must
    remove the mark)."""
    def register(head):
        marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
        CASES.append(pytest.param(Case(head, linear, **kw), id=name, marks=marks))
        return head
    return register


def tpads(p):
    """ONNX 2-D pads [hb, wb, he, we] → torch F.pad order (wb, we, hb, he)."""
    return (p[1], p[3], p[0], p[2])


def positive(net: Net, a: str):
    """Sigmoid(A) + 0.25 ∈ (0.25, 1.25): an operand for Log, Sqrt, Reciprocal, Div."""
    quarter = net.param([], values=0.25)
    return net.op("Add", net.op("Sigmoid", a), quarter), lambda t: torch.sigmoid(t) + 0.25


# ---------------------------------------------------------------------------------------------
# Gemm / MatMul
# ---------------------------------------------------------------------------------------------
M = 6   # Gemm/MatMul output features
D = K * H * W


def _gemm_first(ta: int, tb: int, alpha: float, beta: float, cshape):
    def head(net, a):
        f = net.op("Flatten", a, axis=1)                               # [N, D]
        left = net.op("Transpose", f, perm=[1, 0]) if ta else f
        w = net.param([M, D] if tb else [D, M], 0.1)
        ins = [left, w]
        c = None
        if cshape is not None:
            c = net.param(cshape, 0.5)
            ins.append(c)
        y = net.op("Gemm", *ins, alpha=alpha, beta=beta, transA=ta, transB=tb)

        def fn(t):
            out = alpha * (t.flatten(1) @ (w.t.T if tb else w.t))
            return out + beta * c.t if c is not None else out
        return y, fn
    return head


for _ta in (0, 1):
    for _tb in (0, 1):
        case(f"Gemm-A-transA{_ta}-transB{_tb}-C[M]", True)(_gemm_first(_ta, _tb, 0.7, 1.3, [M]))
case("Gemm-A-C[1,M]", True)(_gemm_first(0, 1, 1.0, 1.0, [1, M]))
case("Gemm-A-C-scalar", True)(_gemm_first(1, 1, 2.0, 0.5, []))
case("Gemm-A-noC", True)(_gemm_first(0, 0, 1.0, 1.0, None))


def _gemm_second(ta: int, tb: int, alpha: float, beta: float):
    """The target-dependent operand is Gemm's B: y = Transpose(Gemm(W, f or fᵀ, C[M, 1]))."""
    def head(net, a):
        f = net.op("Flatten", a, axis=1)                               # [N, D]
        right = f if tb else net.op("Transpose", f, perm=[1, 0])
        w = net.param([D, M] if ta else [M, D], 0.1)
        c = net.param([M, 1], 0.5)
        y = net.op("Gemm", w, right, c, alpha=alpha, beta=beta, transA=ta, transB=tb)    # [M, N]
        y = net.op("Transpose", y, perm=[1, 0])

        def fn(t):
            wm = w.t.T if ta else w.t
            return (alpha * (wm @ t.flatten(1).T) + beta * c.t).T
        return y, fn
    return head


for _ta in (0, 1):
    for _tb in (0, 1):
        case(f"Gemm-B-transA{_ta}-transB{_tb}-C[M,1]", True)(_gemm_second(_ta, _tb, 0.8, 1.5))


@case("Gemm-C-depends", True)
def _gemm_c(net, a):
    f = net.op("Flatten", a, axis=1)
    w1, w2 = net.param([D, M], 0.1), net.param([M, D], 0.1)
    c = net.op("Gemm", f, w1)                                          # [N, M], depends on A
    y = net.op("Gemm", f, w2, c, alpha=0.5, beta=-1.5, transB=1)
    return y, lambda t: 0.5 * t.flatten(1) @ w2.t.T - 1.5 * (t.flatten(1) @ w1.t)


@case("Gemm-both-operands-depend", False, batch_independent=False)
def _gemm_both(net, a):
    f = net.op("Flatten", net.op("Slice", a, net.const([0, 0]), net.const([2, 3]), net.const([2, 3])), axis=1)
    gram = net.op("Gemm", f, f, alpha=0.1, transA=1)                   # [d, d], over the batch
    y = net.op("Gemm", f, gram, alpha=0.5)                             # [N, d]

    def fn(t):
        g = t[:, :, :2, :3].flatten(1)
        return 0.5 * g @ (0.1 * g.T @ g)
    return y, fn


@case("MatMul-2d", True)
def _matmul_2d(net, a):
    w = net.param([D, M], 0.1)
    return net.op("MatMul", net.op("Flatten", a, axis=1), w), lambda t: t.flatten(1) @ w.t


@case("MatMul-batched-weight-right", True)
def _matmul_right(net, a):
    w = net.param([W, 3], 0.5)
    return net.op("MatMul", a, w), lambda t: t @ w.t                   # [N, K, H, 3]


@case("MatMul-batched-weight-left-3d", True)
def _matmul_left(net, a):
    w = net.param([K, 2, H], 0.5)
    return net.op("MatMul", w, a), lambda t: w.t @ t                   # [N, K, 2, W]


@case("MatMul-weight-4d-broadcast", True)
def _matmul_w4(net, a):
    w = net.param([1, K, W, 2], 0.5)
    return net.op("MatMul", a, w), lambda t: t @ w.t


@case("MatMul-dependent-operand-broadcast", True)
def _matmul_dep_broadcast(net, a):
    axes = net.const([1])
    m = net.op("ReduceMean", a, axes, keepdims=1) if net.opset >= 18 else net.op("ReduceMean", a, axes=[1], keepdims=1)
    w = net.param([3, W, 2], 0.5)
    return net.op("MatMul", m, w), lambda t: t.mean(1, keepdim=True) @ w.t     # [N,1,H,W]@[3,W,2] → [N,3,H,2]


@case("MatMul-both-depend", False)
def _matmul_both(net, a):
    at = net.op("Transpose", a, perm=[0, 1, 3, 2])
    return net.op("MatMul", a, at), lambda t: t @ t.transpose(2, 3)


# ---------------------------------------------------------------------------------------------
# Conv / ConvTranspose
# ---------------------------------------------------------------------------------------------
def _same_pads(size, k, s, d, mode):
    out = -(-size // s)
    total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
    small, large = total // 2, total - total // 2
    return (small, large) if mode == "SAME_UPPER" else (large, small)


def _conv(cout=5, k=(3, 3), strides=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1), group=1, auto_pad=None, bias=True):
    def head(net, a):
        cin = net.channels
        w = net.param([cout, cin // group, *k], 0.4)
        b = net.param([cout], 0.1) if bias else None
        attrs = dict(strides=list(strides), dilations=list(dil), group=group)
        if auto_pad:
            attrs["auto_pad"] = auto_pad
        else:
            attrs["pads"] = list(pads)
        y = net.op("Conv", a, w, b, **attrs)
        h, wd = net.image[1], net.image[2]

        def fn(t):
            if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                ph = _same_pads(h, k[0], strides[0], dil[0], auto_pad)
                pw = _same_pads(wd, k[1], strides[1], dil[1], auto_pad)
                t = F.pad(t, (pw[0], pw[1], ph[0], ph[1]))
            elif auto_pad != "VALID":
                t = F.pad(t, tpads(pads))
            return F.conv2d(t, w.t, b.t if b is not None else None, stride=strides, dilation=dil, groups=group)
        return y, fn
    return head


case("Conv-s1-p1", True)(_conv(pads=(1, 1, 1, 1)))
case("Conv-s2-p1-odd-width", True)(_conv(strides=(2, 2), pads=(1, 1, 1, 1)))
case("Conv-s2-p0-output-padding", True)(_conv(strides=(2, 2)))                          # 6→2 needs op=1
case("Conv-s3-p0-output-padding-2", True, image=(3, 8, 7))(_conv(strides=(3, 3), k=(2, 2)))
case("Conv-s2x1-k1x3", True)(_conv(k=(1, 3), strides=(2, 1), pads=(0, 1, 0, 1)))
case("Conv-dilation2", True)(_conv(dil=(2, 2), pads=(2, 2, 2, 2)))
case("Conv-dilation2-s2", True, image=(3, 9, 8))(_conv(dil=(2, 2), strides=(2, 2), pads=(1, 0, 0, 1)))
case("Conv-asymmetric-pads", True)(_conv(pads=(0, 1, 2, 0)))
case("Conv-groups2", True)(_conv(cout=6, group=2, pads=(1, 1, 1, 1)))
case("Conv-depthwise", True)(_conv(cout=8, group=4, strides=(2, 2), pads=(1, 1, 1, 1)))
case("Conv-no-bias", True)(_conv(bias=False, k=(2, 2)))
case("Conv-auto_pad-SAME_UPPER-s2", True)(_conv(strides=(2, 2), auto_pad="SAME_UPPER"))
case("Conv-auto_pad-SAME_LOWER-s2", True)(_conv(strides=(2, 2), auto_pad="SAME_LOWER"))
case("Conv-auto_pad-SAME_UPPER-k2", True)(_conv(k=(2, 2), auto_pad="SAME_UPPER"))
case("Conv-auto_pad-SAME_LOWER-k4-s3", True, image=(3, 8, 7))(_conv(k=(4, 4), strides=(3, 3), auto_pad="SAME_LOWER"))
case("Conv-auto_pad-VALID-s2", True)(_conv(strides=(2, 2), auto_pad="VALID"))
# stride 1: the reverse pass is a Conv with the adjoint kernel unless the pads exceed (k − 1)·d
case("Conv-s1-k1", True)(_conv(k=(1, 1)))
case("Conv-s1-k1-p1-wider-than-kernel", True)(_conv(k=(1, 1), pads=(1, 1, 1, 1)))
case("Conv-s1-k3x1-uneven-pads", True)(_conv(k=(3, 1), pads=(2, 0, 0, 0)))
case("Conv-s1-k2x4", True)(_conv(k=(2, 4), pads=(1, 2, 0, 1)))
case("Conv-s1-depthwise", True)(_conv(cout=4, group=4, pads=(1, 1, 1, 1)))
case("Conv-s1-depthwise-multiplier2", True)(_conv(cout=8, group=4, pads=(1, 1, 1, 1)))
case("Conv-s1-groups2-k1", True)(_conv(cout=6, group=2, k=(1, 1)))


def _conv_transpose(cout=3, k=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), out_pad=(0, 0), dil=(1, 1), group=1):
    def head(net, a):
        w = net.param([net.channels, cout // group, *k], 0.4)
        b = net.param([cout], 0.1)
        y = net.op("ConvTranspose", a, w, b, strides=list(strides), pads=list(pads), dilations=list(dil),
                   group=group, output_padding=list(out_pad))

        def fn(t):
            full = F.conv_transpose2d(t, w.t, b.t, stride=strides, output_padding=out_pad, groups=group,
                                      dilation=dil)
            hb, wb, he, we = pads
            return full[:, :, hb:full.shape[2] - he, wb:full.shape[3] - we]
        return y, fn
    return head


case("ConvTranspose-s2-p1", True)(_conv_transpose())
case("ConvTranspose-s2-p1-output_padding", True)(_conv_transpose(out_pad=(1, 1)))
case("ConvTranspose-s2-k2-p0", True)(_conv_transpose(k=(2, 2), pads=(0, 0, 0, 0)))
case("ConvTranspose-s1-asymmetric-pads", True)(_conv_transpose(strides=(1, 1), pads=(0, 1, 2, 0)))
case("ConvTranspose-groups2-dilation2", True)(_conv_transpose(cout=4, group=2, dil=(2, 2), out_pad=(1, 0)))


# ---------------------------------------------------------------------------------------------
# Pooling and reductions
# ---------------------------------------------------------------------------------------------
def _max_pool(k=(2, 2), s=(2, 2), p=(0, 0), ceil=0, dil=(1, 1), storage_order=0):
    def head(net, a):
        y = net.op("MaxPool", a, kernel_shape=list(k), strides=list(s), pads=[*p, *p], ceil_mode=ceil,
                   dilations=list(dil), storage_order=storage_order)
        return y, lambda t: F.max_pool2d(t, k, s, p, dilation=dil, ceil_mode=bool(ceil))
    return head


case("MaxPool-k2-s2", True)(_max_pool())
case("MaxPool-k3-s2-p1", True)(_max_pool(k=(3, 3), p=(1, 1)))
case("MaxPool-k3-s1-p1", True)(_max_pool(k=(3, 3), s=(1, 1), p=(1, 1)))
case("MaxPool-k2-s2-ceil", True)(_max_pool(ceil=1))
case("MaxPool-k3-s2-p1-ceil", True, image=(3, 8, 7))(_max_pool(k=(3, 3), p=(1, 1), ceil=1))
case("MaxPool-k2-dilation2", True)(_max_pool(s=(1, 1), dil=(2, 2)))
case("MaxPool-storage_order1", True)(_max_pool(k=(3, 2), s=(1, 2), storage_order=1))


def _avg_pool(k=(3, 3), s=(2, 2), p=(0, 0), ceil=0, include=0):
    def head(net, a):
        y = net.op("AveragePool", a, kernel_shape=list(k), strides=list(s), pads=[*p, *p], ceil_mode=ceil,
                   count_include_pad=include)
        return y, lambda t: F.avg_pool2d(t, k, s, p, ceil_mode=bool(ceil), count_include_pad=bool(include))
    return head


for _inc in (0, 1):
    case(f"AveragePool-k3-s2-p1-count_include_pad{_inc}", True)(_avg_pool(p=(1, 1), include=_inc))
    case(f"AveragePool-k3-s1-p1-count_include_pad{_inc}", True)(_avg_pool(s=(1, 1), p=(1, 1), include=_inc))
    case(f"AveragePool-k2-s2-ceil-count_include_pad{_inc}", True)(_avg_pool(k=(2, 2), ceil=1, include=_inc))
    case(f"AveragePool-k3-s2-p1-ceil-count_include_pad{_inc}", True, image=(3, 8, 7))(
        _avg_pool(p=(1, 1), ceil=1, include=_inc))
case("AveragePool-k2-s2", True)(_avg_pool(k=(2, 2)))
case("AveragePool-k3x2-s1x2", True)(_avg_pool(k=(3, 2), s=(1, 2)))


def _pool_same(op, mode, k=(3, 3), s=(2, 2), dil=(1, 1), include=0):
    """MaxPool/AveragePool with auto_pad (or explicit pads via ``mode`` = a pads list) and dilations,
    against a torch reference written from the ONNX definition (F.unfold over the padded input)."""
    def head(net, a):
        attrs = dict(kernel_shape=list(k), strides=list(s))
        if dil != (1, 1):
            attrs["dilations"] = list(dil)
        if isinstance(mode, str):
            attrs["auto_pad"] = mode
        else:
            attrs["pads"] = list(mode)
        if op == "AveragePool":
            attrs["count_include_pad"] = include
        y = net.op(op, a, **attrs)
        h, w = net.image[1], net.image[2]
        if mode == "VALID":
            pads = (0, 0, 0, 0)
        elif isinstance(mode, str):
            ph, pw = (_same_pads(h, k[0], s[0], dil[0], mode), _same_pads(w, k[1], s[1], dil[1], mode))
            pads = (ph[0], pw[0], ph[1], pw[1])
        else:
            pads = tuple(mode)

        def fn(t):
            n, ch = t.shape[:2]
            hp, wp = h + pads[0] + pads[2], w + pads[1] + pads[3]
            oh, ow = (hp - dil[0] * (k[0] - 1) - 1) // s[0] + 1, (wp - dil[1] * (k[1] - 1) - 1) // s[1] + 1
            fill = -math.inf if op == "MaxPool" else 0.0
            padded = F.pad(t, tpads(pads), value=fill)
            cols = F.unfold(padded, k, dilation=dil, stride=s).reshape(n, ch, k[0] * k[1], oh, ow)
            if op == "MaxPool":
                return cols.max(2).values
            if include:
                return cols.sum(2) / (k[0] * k[1])
            ones = F.pad(torch.ones(1, 1, h, w, dtype=t.dtype), tpads(pads))
            counts = F.unfold(ones, k, dilation=dil, stride=s).reshape(1, 1, k[0] * k[1], oh, ow).sum(2)
            return cols.sum(2) / counts
        return y, fn
    return head


case("MaxPool-auto_pad-SAME_UPPER-s2", True)(_pool_same("MaxPool", "SAME_UPPER"))
case("MaxPool-auto_pad-SAME_LOWER-k2", True)(_pool_same("MaxPool", "SAME_LOWER", k=(2, 2), s=(1, 1)))
case("MaxPool-asymmetric-pads", True)(_pool_same("MaxPool", (0, 1, 1, 0), k=(2, 3), s=(2, 2)))
for _inc in (0, 1):
    case(f"AveragePool-auto_pad-SAME_UPPER-s2-count_include_pad{_inc}", True)(
        _pool_same("AveragePool", "SAME_UPPER", include=_inc))
    case(f"AveragePool-auto_pad-SAME_LOWER-k2-count_include_pad{_inc}", True)(
        _pool_same("AveragePool", "SAME_LOWER", k=(2, 2), s=(1, 1), include=_inc))
    case(f"AveragePool-asymmetric-pads-count_include_pad{_inc}", True)(
        _pool_same("AveragePool", (1, 0, 0, 2), k=(2, 3), s=(1, 2), include=_inc))
case("AveragePool-dilation2-opset19", True, opset=19)(_pool_same("AveragePool", (1, 1, 1, 1), s=(1, 1), dil=(2, 2)))
case("AveragePool-auto_pad-VALID", True)(_pool_same("AveragePool", "VALID", s=(1, 2)))


def _one_d(op, **attrs):
    """A as a 1-D signal [N, K, h·w] → a 1-D Conv / pooling (the rules are written for any rank)."""
    def head(net, a):
        seq = net.op("Reshape", a, net.const([0, K, H * W]))
        ins = [seq]
        if op == "Conv":
            w = net.param([3, K, 4], 0.4)
            ins.append(w)
        y = net.op(op, *ins, **attrs)

        def fn(t):
            t = t.reshape(t.shape[0], K, H * W)
            if op == "Conv":
                return F.conv1d(F.pad(t, (1, 2)), w.t, stride=attrs["strides"][0], dilation=attrs["dilations"][0])
            if op == "MaxPool":
                return F.max_pool1d(t, attrs["kernel_shape"], attrs["strides"])
            return F.avg_pool1d(t, attrs["kernel_shape"], attrs["strides"], attrs["pads"][0],
                                count_include_pad=bool(attrs["count_include_pad"]))
        return y, fn
    return head


case("Conv-1d", True)(_one_d("Conv", strides=[2], dilations=[2], pads=[1, 2]))
case("Conv-1d-s1", True)(_one_d("Conv", strides=[1], dilations=[1], pads=[1, 2]))
case("MaxPool-1d", True)(_one_d("MaxPool", kernel_shape=[3], strides=[2]))
case("AveragePool-1d", True)(_one_d("AveragePool", kernel_shape=[4], strides=[3], pads=[1, 1], count_include_pad=0))


@case("GlobalAveragePool", True)
def _gap(net, a):
    return net.op("GlobalAveragePool", a), lambda t: t.mean((2, 3), keepdim=True)


def _reduce(op, axes, keepdims, opset):
    def head(net, a):
        if op == "ReduceMean" and opset < 18:
            y = net.op(op, a, axes=axes, keepdims=keepdims)
        else:
            y = net.op(op, a, net.const(axes), keepdims=keepdims)

        def fn(t):
            dims = tuple(ax % 4 for ax in axes)
            return t.mean(dims, keepdim=bool(keepdims)) if op == "ReduceMean" else t.sum(dims, keepdim=bool(keepdims))
        return y, fn
    return head


for _op in ("ReduceMean", "ReduceSum"):
    for _kd in (0, 1):
        for _axes in ([2, 3], [1], [-1, 1]):
            case(f"{_op}-axes{_axes}-keepdims{_kd}", True, opset=18)(_reduce(_op, _axes, _kd, 18))
    case(f"{_op}-opset17-keepdims0", True)(_reduce(_op, [3, 2], 0, 17))


@case("ReduceSum-noop_with_empty_axes", True, opset=18)
def _reduce_noop(net, a):
    return net.op("ReduceSum", a, noop_with_empty_axes=1), lambda t: t


# ---------------------------------------------------------------------------------------------
# Element-wise non-linearities
# ---------------------------------------------------------------------------------------------
@case("Relu", True)
def _relu(net, a):
    return net.op("Relu", a), torch.relu


@case("Clip-min-max", True)
def _clip(net, a):
    lo, hi = net.param([], values=-1.0), net.param([], values=1.5)
    return net.op("Clip", a, lo, hi), lambda t: F.hardtanh(t, -1.0, 1.5)


@case("Clip-min-only", True)
def _clip_min(net, a):
    lo = net.param([], values=0.5)
    return net.op("Clip", a, lo), lambda t: torch.where(t > 0.5, t, torch.full_like(t, 0.5))


@case("Clip-max-only", True)
def _clip_max(net, a):
    hi = net.param([], values=0.5)
    return net.op("Clip", a, None, hi), lambda t: torch.where(t < 0.5, t, torch.full_like(t, 0.5))


@case("Clip-no-bounds", True)
def _clip_none(net, a):
    return net.op("Clip", a), lambda t: t


@case("LeakyRelu", True)
def _leaky(net, a):
    return net.op("LeakyRelu", a, alpha=0.15), lambda t: F.leaky_relu(t, 0.15)


@case("Sigmoid", False)
def _sigmoid(net, a):
    return net.op("Sigmoid", a), torch.sigmoid


@case("HardSigmoid", True)
def _hard_sigmoid(net, a):
    return (net.op("HardSigmoid", a, alpha=0.3, beta=0.4),
            lambda t: torch.where((0.3 * t + 0.4 > 0) & (0.3 * t + 0.4 < 1), 0.3 * t + 0.4, (0.3 * t + 0.4 >= 1).double()))


@case("HardSigmoid-defaults", True)
def _hard_sigmoid_default(net, a):
    return net.op("HardSigmoid", a), lambda t: torch.clamp(0.2 * t + 0.5, 0, 1)


@case("HardSwish", False, opset=17)
def _hard_swish(net, a):
    return net.op("HardSwish", a), F.hardswish


@case("Tanh", False)
def _tanh(net, a):
    return net.op("Tanh", a), torch.tanh


@case("Erf", False)
def _erf(net, a):
    half = net.param([], values=0.5)
    return net.op("Erf", net.op("Mul", a, half)), lambda t: torch.erf(0.5 * t)


@case("Gelu-none", False, opset=20)
def _gelu(net, a):
    return net.op("Gelu", a), lambda t: F.gelu(t)


@case("Gelu-tanh", False, opset=20)
def _gelu_tanh(net, a):
    return net.op("Gelu", a, approximate="tanh"), lambda t: F.gelu(t, approximate="tanh")


@case("Exp", False)
def _exp(net, a):
    s = net.param([], values=0.3)
    return net.op("Exp", net.op("Mul", a, s)), lambda t: torch.exp(0.3 * t)


@case("Log", False)
def _log(net, a):
    p, fn = positive(net, a)
    return net.op("Log", p), lambda t: torch.log(fn(t))


@case("Sqrt", False)
def _sqrt(net, a):
    p, fn = positive(net, a)
    return net.op("Sqrt", p), lambda t: torch.sqrt(fn(t))


@case("Reciprocal", False)
def _reciprocal(net, a):
    p, fn = positive(net, a)
    return net.op("Reciprocal", p), lambda t: 1.0 / fn(t)


@case("Neg", True)
def _neg(net, a):
    return net.op("Neg", a), lambda t: -t


@case("Pow-float-scalar-2", False)
def _pow2(net, a):
    return net.op("Pow", a, net.param([], values=2.0)), lambda t: t ** 2


@case("Pow-int64-scalar-3", False)
def _pow3(net, a):
    return net.op("Pow", a, net.const(3)), lambda t: t ** 3


@case("Pow-fractional-per-channel", False)
def _pow_channel(net, a):
    p, fn = positive(net, a)
    e = net.param([K, 1, 1], values=np.array([0.5, 1.5, 2.5, -1.0]).reshape(K, 1, 1))
    return net.op("Pow", p, e), lambda t: fn(t) ** e.t


@case("Pow-constant-node-exponent", False)
def _pow_constant(net, a):
    e = net.op("Constant", value=onnx.numpy_helper.from_array(np.array(2.0, np.float32)))
    return net.op("Pow", a, e), lambda t: t ** 2


# ---------------------------------------------------------------------------------------------
# Broadcasting arithmetic
# ---------------------------------------------------------------------------------------------
def _mean_channels(net, a):
    """[N, 1, h, w]: a target-dependent operand that broadcasts along the channels."""
    return net.op("ReduceMean", a, axes=[1], keepdims=1), lambda t: t.mean(1, keepdim=True)


def _gap_of(net, a):
    """[N, K, 1, 1]: a target-dependent operand that broadcasts over space."""
    return net.op("GlobalAveragePool", a), lambda t: t.mean((2, 3), keepdim=True)


_BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}


def _binary_const(op, const_shape, const_first, dependent="A", low=None):
    """op(A-side, W) or op(W, A-side) with W broadcast (dependent="A") or the A-side broadcast
    ("mean": [N,1,h,w] against W [K,1,w] — broadcasting both ways)."""
    def head(net, a):
        x, fn = (a, lambda t: t) if dependent == "A" else _mean_channels(net, a)
        if op == "Div" and const_first:
            x, inner = positive(net, x)
            fn = (lambda f, g: lambda t: g(f(t)))(fn, inner)
        w = net.param(const_shape, low=0.5 if op == "Div" else -1.0, high=1.5)
        ins = (w, x) if const_first else (x, w)
        y = net.op(op, *ins)
        return y, lambda t: _BINARY[op](*((w.t, fn(t)) if const_first else (fn(t), w.t)))
    return head


for _op in _BINARY:
    case(f"{_op}-A-W[K,1,1]", True)(_binary_const(_op, [K, 1, 1], False))
    case(f"{_op}-W[1,1,h,w]-A", _op != "Div")(_binary_const(_op, [1, 1, H, W], True))
    case(f"{_op}-both-ways-[N,1,h,w]-W[K,1,w]", True)(_binary_const(_op, [K, 1, W], False, "mean"))
    case(f"{_op}-both-ways-W[K,1,w]-[N,1,h,w]", _op != "Div")(_binary_const(_op, [K, 1, W], True, "mean"))
    case(f"{_op}-W-rank5-leading-axis", True)(
        (lambda inner: (lambda net, a: (lambda y, fn: (net.op("Transpose", y, perm=[1, 0, 2, 3, 4]),
                                                       lambda t: fn(t).transpose(0, 1)))(*inner(net, a))))(
            _binary_const(_op, [2, 1, 1, 1, 1], False)))


def _binary_both(op, linear):
    """op(A, GAP(A)): both operands depend on the target, the second broadcasts over space."""
    def head(net, a):
        g, gfn = _gap_of(net, a)
        if op == "Div":
            g, pfn = positive(net, g)
            gfn = (lambda f, p: lambda t: p(f(t)))(gfn, pfn)
        return net.op(op, a, g), lambda t: _BINARY[op](t, gfn(t))
    return head


case("Add-both-depend-A+GAP(A)", True)(_binary_both("Add", True))
case("Sub-both-depend-A-GAP(A)", True)(_binary_both("Sub", True))
case("Mul-both-depend-A*GAP(A)", False)(_binary_both("Mul", False))
case("Div-both-depend-A/pos(GAP(A))", False)(_binary_both("Div", False))


@case("Mul-x*x", False)
def _square(net, a):
    return net.op("Mul", a, a), lambda t: t * t


@case("Mul-squeeze-excitation", False)
def _se(net, a):
    g, gfn = _gap_of(net, a)
    return net.op("Mul", a, net.op("Sigmoid", g)), lambda t: t * torch.sigmoid(gfn(t))


@case("Sub-x-x-cancels-plus-A", True)
def _sub_self(net, a):
    two = net.param([], values=2.0)
    return net.op("Sub", net.op("Mul", a, two), a), lambda t: 2 * t - t


@case("Div-x/x-plus", False)
def _div_both_same(net, a):
    p, fn = positive(net, a)
    return net.op("Div", a, p), lambda t: t / fn(t)


@case("Sum-three-inputs-broadcast", True)
def _sum3(net, a):
    w = net.param([K, 1, 1])
    g, gfn = _gap_of(net, a)
    return net.op("Sum", a, w, g), lambda t: t + w.t + gfn(t)


@case("Sum-one-input", True)
def _sum1(net, a):
    return net.op("Sum", a), lambda t: t


@case("Sum-same-input-twice", True)
def _sum_twice(net, a):
    m, mfn = _mean_channels(net, a)
    return net.op("Sum", a, a, m), lambda t: t + t + mfn(t)


@case("Where-A-vs-W-mask-from-A", True)
def _where1(net, a):
    thr = net.param([], values=0.3)
    w = net.param([1, 1, H, W])
    return (net.op("Where", net.op("Greater", a, thr), a, w),
            lambda t: torch.where(t > 0.3, t, w.t.expand_as(t)))


@case("Where-W-vs-A-const-mask", True)
def _where2(net, a):
    cond = net.const(np.random.default_rng(3).random((H, W)) > 0.5, dtype=np.bool_)
    w = net.param([K, 1, 1])
    return net.op("Where", cond, w, a), lambda t: torch.where(cond.t, w.t, t)


@case("Where-both-depend-broadcast", True)
def _where3(net, a):
    cond = net.const(np.array([True, False, True, False]).reshape(K, 1, 1), dtype=np.bool_)
    two = net.param([], values=2.0)
    m, mfn = _mean_channels(net, a)
    return (net.op("Where", cond, net.op("Mul", a, two), m),
            lambda t: torch.where(cond.t, 2 * t, mfn(t)))


@case("Expand-spatial", True)
def _expand1(net, a):
    g, gfn = _gap_of(net, a)
    return net.op("Expand", g, net.const([1, 1, H, W])), lambda t: gfn(t).expand(-1, -1, H, W)


@case("Expand-channels-rank-lower-shape", True)
def _expand2(net, a):
    m, mfn = _mean_channels(net, a)
    return net.op("Expand", m, net.const([K, 1, 1])), lambda t: mfn(t).expand(-1, K, -1, -1)


@case("Expand-leading-axis", True)
def _expand3(net, a):
    e = net.op("Expand", a, net.const([2, 1, 1, 1, 1]))
    return net.op("Transpose", e, perm=[1, 0, 2, 3, 4]), lambda t: t.unsqueeze(1).expand(-1, 2, -1, -1, -1)


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------
@case("BatchNormalization", True)
def _bn(net, a):
    scale, bias = net.param([K]), net.param([K])
    mean, var = net.param([K]), net.param([K], low=0.5, high=2.0)
    y = net.op("BatchNormalization", a, scale, bias, mean, var, epsilon=1e-3)
    return y, lambda t: F.batch_norm(t, mean.t, var.t, scale.t, bias.t, training=False, eps=1e-3)


@case("BatchNormalization-rank2-features", True)
def _bn1d(net, a):
    f = net.op("Flatten", a, axis=1)
    scale, bias, mean, var = net.param([D]), net.param([D]), net.param([D]), net.param([D], low=0.5, high=2.0)
    y = net.op("BatchNormalization", f, scale, bias, mean, var)
    return y, lambda t: F.batch_norm(t.flatten(1), mean.t, var.t, scale.t, bias.t, training=False, eps=1e-5)


@case("BatchNormalization-rank3", True)
def _bn_rank3(net, a):
    seq = net.op("Reshape", a, net.const([0, K, -1]))
    scale, bias, mean, var = net.param([K]), net.param([K]), net.param([K]), net.param([K], low=0.5, high=2.0)
    y = net.op("BatchNormalization", seq, scale, bias, mean, var, epsilon=0.1)
    return y, lambda t: F.batch_norm(t.reshape(t.shape[0], K, -1), mean.t, var.t, scale.t, bias.t, False, eps=0.1)


def _layer_norm(axis, bias=True):
    def head(net, a):
        shape = [K, H, W][axis % 4 - 1:]
        scale = net.param(shape, low=0.5, high=1.5)
        b = net.param(shape) if bias else None
        y = net.op("LayerNormalization", a, scale, b, axis=axis, epsilon=1e-4)
        return y, lambda t: F.layer_norm(t, shape, scale.t, b.t if b is not None else None, eps=1e-4)
    return head


case("LayerNormalization-axis-1", False)(_layer_norm(-1))
case("LayerNormalization-axis1", False)(_layer_norm(1))
case("LayerNormalization-axis2-no-bias", False)(_layer_norm(2, bias=False))


# ---------------------------------------------------------------------------------------------
# Moving data
# ---------------------------------------------------------------------------------------------
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
            index = [slice(None)] * 4
            for i, (s, e) in enumerate(zip(starts, ends)):
                axis = axes[i] % 4 if axes is not None else i
                index[axis] = slice(max(s, -10**6), min(e, 10**6), steps[i] if steps else 1)
            return t[tuple(index)]
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
# Several operators: realistic heads
# ---------------------------------------------------------------------------------------------
@case("Head-Relu-Conv-BN-Relu-MaxPool-GAP", True)
def _cnn_head(net, a):
    r = net.op("Relu", a)
    conv, cfn = _conv(cout=6, pads=(1, 1, 1, 1))(net, r)
    bn, bfn = (lambda s, b, m, v: (net.op("BatchNormalization", conv, s, b, m, v),
                                   lambda t: F.batch_norm(t, m.t, v.t, s.t, b.t, False, eps=1e-5)))(
        net.param([6]), net.param([6]), net.param([6]), net.param([6], low=0.5, high=2))
    mp = net.op("MaxPool", net.op("Relu", bn), kernel_shape=[2, 2], strides=[2, 2])
    y = net.op("GlobalAveragePool", mp)
    return y, lambda t: F.max_pool2d(torch.relu(bfn(cfn(torch.relu(t)))), 2, 2).mean((2, 3), keepdim=True)


@case("Head-residual-block", True)
def _residual(net, a):
    c1, f1 = _conv(cout=K, pads=(1, 1, 1, 1))(net, a)
    c2, f2 = _conv(cout=K, pads=(1, 1, 1, 1))(net, net.op("Relu", c1))
    y = net.op("Relu", net.op("Add", c2, a))
    return y, lambda t: torch.relu(f2(torch.relu(f1(t))) + t)


@case("Head-token-attention", False)
def _attention(net, a):
    tokens = net.op("Transpose", net.op("Reshape", a, net.const([0, K, -1])), perm=[0, 2, 1])   # [N, hw, K]
    ln, lfn = (lambda s: (net.op("LayerNormalization", tokens, s, axis=-1), lambda t: F.layer_norm(t, [K], s.t)))(
        net.param([K], low=0.5, high=1.5))
    wq, wk = net.param([K, K]), net.param([K, K])
    q, k = net.op("MatMul", ln, wq), net.op("MatMul", ln, wk)
    scores = net.op("Softmax", net.op("MatMul", q, net.op("Transpose", k, perm=[0, 2, 1])), axis=-1)
    y = net.op("MatMul", scores, ln)

    def fn(t):
        tok = lfn(t.reshape(t.shape[0], K, -1).transpose(1, 2))
        qq, kk = tok @ wq.t, tok @ wk.t
        return torch.softmax(qq @ kk.transpose(1, 2), -1) @ tok
    return y, fn


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", CASES)
def test_rule_matches_torch_autograd(spec: Case):
    c = classifier(spec.head, opset=spec.opset, image=spec.image, channels=spec.channels)
    graph, out, g = check_against_torch(c, batch_independent=spec.batch_independent)
    meta = metadata(graph)
    assert meta["onnxcam.head_piecewise_linear"] == ("true" if spec.linear else "false")
    np.testing.assert_allclose(out["gradients_pow2"], out["gradients"] ** 2, rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("kernel,pads,reverse_op", [((3, 3), (1, 1, 1, 1), "Conv"), ((1, 1), (0, 0, 0, 0), "Conv"),
                                                     ((1, 1), (1, 1, 1, 1), "ConvTranspose")])
def test_stride_one_conv_is_reversed_by_a_conv(kernel, pads, reverse_op):
    """The faster form is really emitted (the cases above check its numbers)."""
    c = classifier(_conv(k=kernel, pads=pads), image=(3, 8, 8))
    graph = explanation_graph(c.model)
    reverse = [n.op_type for n in graph.graph.node if n.name.startswith("onnxcam/") and "Conv" in n.op_type]
    assert reverse == [reverse_op]


# ---------------------------------------------------------------------------------------------
# The engine: branches, fan-out, Softmax at the end, head path, powers
# ---------------------------------------------------------------------------------------------
def test_branch_not_depending_on_target_is_left_alone():
    """A Cos (no rule) on an image-only branch that reaches the scores, and a Cos on the
    target that only feeds another output: neither is differentiated, export succeeds."""
    side = {}

    def head(net, a):
        w = net.param([2, 3, 3, 3], 0.3)
        branch = net.op("Cos", net.op("Conv", "image", w, pads=[1, 1, 1, 1]))    # [N, 2, h, w], image only
        net.op("Cos", a, out="aux")                                              # target → aux output only
        side["w"] = w

        def fn(t):
            value = side.get("value", torch.zeros(t.shape[0], 2, H, W, dtype=t.dtype))
            return torch.cat([t, value], 1)
        return net.op("Concat", a, branch, axis=1), fn

    c = classifier(head, extra_outputs=("aux",))
    side["value"] = torch.cos(F.conv2d(torch.from_numpy(images(c)).double(), side["w"].t, padding=1))
    graph, out, g = check_against_torch(c)
    assert "head_logits" not in out          # the image bypasses the target: no head path
    assert metadata(graph)["onnxcam.head_piecewise_linear"] == "true"
    assert [n.op_type for n in graph.graph.node].count("Cos") == 1   # the aux branch is gone, no Sin added
    assert not any(n.op_type == "Sin" for n in graph.graph.node)


def test_fan_out_accumulates_gradients():
    """A feeds two branches (Relu → Conv and GAP → Mul) that are summed."""
    def head(net, a):
        c1, f1 = _conv(cout=K, pads=(1, 1, 1, 1))(net, net.op("Relu", a))
        g, gfn = _gap_of(net, a)
        w = net.param([K, 1, 1])
        y = net.op("Add", c1, net.op("Mul", g, w))
        return y, lambda t: f1(torch.relu(t)) + gfn(t) * w.t

    graph, out, g = check_against_torch(classifier(head))
    assert metadata(graph)["onnxcam.head_piecewise_linear"] == "true"


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_output_scores_are_its_input(op):
    """A source ending in Softmax/LogSoftmax: S (``logits``) is that op's input."""
    def head(net, a):
        return net.op("GlobalAveragePool", a), lambda t: t.mean((2, 3), keepdim=True)

    net = Net()
    torch_stem = stem(net)
    y, fn = head(net, "A")
    torch_head = tail(net, y, fn, (1, K, H, W), out="scores")
    net.op(op, "scores", axis=1, out="logits")     # probabilities, named "logits" by the source
    c = Classifier(net.model(["logits"]), torch_stem, torch_head, net)
    graph, out, g = check_against_torch(c)
    assert metadata(graph)["onnxcam.head_piecewise_linear"] == "true"


def _head_graph(head, **kw):
    c = classifier(head, **kw)
    graph = explanation_graph(c.model)
    x = images(c)
    return c, graph, x


def _split_gather(net, a):
    s0, s1 = net.op("Split", a, net.const([1, 3]), axis=1, outputs=2)
    y = net.op("Gather", net.op("Concat", s1, s0, axis=1), net.const([0, 1, 1]), axis=1)
    return y, lambda t: torch.cat([t[:, 1:], t[:, :1]], 1)[:, [0, 1, 1]]


HEADS = {
    "cnn": _cnn_head,
    "maxpool": _max_pool(k=(3, 3), p=(1, 1), ceil=1),
    "attention": _attention,
    "split-gather": _split_gather,
    "sigmoid": lambda net, a: (net.op("Relu", net.op("Sigmoid", a)), lambda t: torch.relu(torch.sigmoid(t))),
    "softmax": _softmax("Softmax", 1),
    "layernorm": _layer_norm(1),
    "x*x": lambda net, a: (net.op("Relu", net.op("Mul", a, a)), lambda t: torch.relu(t * t)),
    "relu-then-x*w": lambda net, a: (lambda w: (net.op("Mul", net.op("Relu", a), w), lambda t: torch.relu(t) * w.t))(
        net.param([K, 1, 1])),
}


@pytest.mark.parametrize("name", ["cnn", "maxpool", "attention", "split-gather"])
def test_head_logits_and_powers(name):
    c = classifier(HEADS[name])
    graph = explanation_graph(c.model)
    x = images(c)
    assert "head_activations" in [i.name for i in graph.graph.input]
    assert metadata(graph).get("onnxcam.head_input") == "head_activations"
    out = run(graph, {"image": x, "class_index": CLASS_INDEX, **head_feed(graph)})
    np.testing.assert_allclose(out["gradients_pow2"], out["gradients"] ** 2, rtol=1e-6, atol=0)
    np.testing.assert_allclose(out["gradients_pow3"], out["gradients"] ** 3, rtol=1e-5, atol=0)
    # head_logits of the graph's own activations are its logits (also with another batch size)
    again = run(graph, {"image": x, "class_index": CLASS_INDEX, "head_activations": out["activations"]})
    np.testing.assert_allclose(again["head_logits"], out["logits"], rtol=1e-5, atol=1e-5)
    doubled = np.concatenate([out["activations"], out["activations"][:2]])
    again = run(graph, {"image": x, "class_index": CLASS_INDEX, "head_activations": doubled})
    np.testing.assert_allclose(again["head_logits"], np.concatenate([out["logits"], out["logits"][:2]]),
                               rtol=1e-5, atol=1e-5)
    # and zeroing a channel changes them the way the torch head says
    ablated = out["activations"].copy()
    ablated[:, 1] = 0
    again = run(graph, {"image": x, "class_index": CLASS_INDEX, "head_activations": ablated})
    with torch.no_grad():
        want = c.head(torch.from_numpy(ablated).double()).numpy()
    np.testing.assert_allclose(again["head_logits"], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,linear", [
    ("cnn", "true"), ("maxpool", "true"), ("sigmoid", "false"), ("softmax", "false"),
    ("layernorm", "false"), ("x*x", "false"), ("relu-then-x*w", "true"), ("attention", "false"),
])
def test_head_piecewise_linear_metadata(name, linear):
    graph = explanation_graph(classifier(HEADS[name]).model)
    assert metadata(graph)["onnxcam.head_piecewise_linear"] == linear


# ---------------------------------------------------------------------------------------------
# Graph-level behaviour
# ---------------------------------------------------------------------------------------------
def _gap_head(net, a):
    return net.op("GlobalAveragePool", a), lambda t: t.mean((2, 3), keepdim=True)


def _token_head(net, a):
    """[N, K, h·w] tokens through a Reshape with 0 and -1, as vision transformers and `x.view(n, -1)` do."""
    y = net.op("Reshape", a, net.const([0, K, -1]))
    return y, lambda t: t.reshape(t.shape[0], K, -1)


def _matmul_left_head(net, a):
    w = net.param([K, 2, H], 0.5)
    return net.op("MatMul", w, a), lambda t: w.t @ t


def _reduce_last_head(net, a):
    y = net.op("ReduceSum", a, net.const([-1]), keepdims=1)
    return net.op("Squeeze", y, net.const([-1])), lambda t: t.sum(-1)



@pytest.mark.parametrize("name", [
    "gap",
    "reshape-0-minus1",
    "matmul-broadcast",
    "reducesum-squeeze",
])
def test_graph_runs_without_feeding_head_activations(name):
    """The contract's inputs are the image and class_index only: running every output of the
    graph (sess.run(None, ...), as other languages do) must work without head_activations."""
    head = {"gap": _gap_head, "reshape-0-minus1": _token_head, "matmul-broadcast": _matmul_left_head,
            "reducesum-squeeze": _reduce_last_head}[name]
    c = classifier(head)
    graph = explanation_graph(c.model)
    out = run(graph, {"image": images(c), "class_index": CLASS_INDEX})
    assert out["gradients"].shape == (3, K, H, W)


def test_target_layout_nhwc_is_returned_nchw():
    """A target behind a Transpose to NHWC: activations and gradients come back NCHW."""
    def head(net, a):
        nhwc = net.op("Transpose", a, perm=[0, 2, 3, 1], out="A_nhwc")
        return net.op("Relu", nhwc), lambda t: torch.relu(t.permute(0, 2, 3, 1))

    c = classifier(head)
    graph, out, g = check_against_torch(c, target="A_nhwc")     # compared with ∂S/∂A, NCHW
    dims = [d.dim_value or d.dim_param for d in graph.graph.output[3].type.tensor_type.shape.dim]
    assert graph.graph.output[3].name == "gradients" and dims == ["N", K, H, W]


def test_target_behind_identity():
    """A target named by an Identity's output resolves to the tensor the graph really uses."""
    def head(net, a):
        net.op("Identity", a, out="A_alias")
        return net.op("Relu", a), torch.relu

    check_against_torch(classifier(head, extra_outputs=("A_alias",)), target="A_alias")


def test_fixed_batch_of_one():
    """A source with a static batch of 1: no head path, a batch-1 graph."""
    c = classifier(_cnn_head)
    c.model = c.net.model(["logits"], batch=1)
    graph, out, g = check_against_torch(c, class_index=np.array([-1], np.int64), batch_independent=False)
    assert "head_logits" not in out


def test_fixed_batch_of_three():
    c = classifier(_cnn_head)
    c.model = c.net.model(["logits"], batch=3)
    check_against_torch(c, batch_independent=False)


def test_old_opset_source_is_converted():
    """An opset-11 source (Squeeze/Unsqueeze/ReduceMean axes as attributes, Clip bounds as
    inputs, Softmax with the old coerced-2-D semantics) is converted to opset ≥ 17 first."""
    def head(net, a):
        lo, hi = net.param([], values=-1.0), net.param([], values=2.0)
        clipped = net.op("Clip", a, lo, hi)
        m = net.op("ReduceMean", clipped, axes=[3], keepdims=1)                 # [N, K, h, 1]
        sq = net.op("Squeeze", m, axes=[3])                                     # [N, K, h]
        un = net.op("Unsqueeze", sq, axes=[1])                                  # [N, 1, K, h]
        flat = net.op("Flatten", un, axis=1)
        return net.op("Softmax", flat, axis=1), lambda t: torch.softmax(F.hardtanh(t, -1, 2).mean(3).flatten(1), 1)

    c = classifier(head, opset=11)
    graph, out, g = check_against_torch(c)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17


def _raises_export_error(head, opset=17):
    c = classifier(head, opset=opset)
    with pytest.raises(ExportError) as info:
        explanation_graph(c.model)
    message = str(info.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("name", ["slice-step2", "pad-reflect", "convtranspose-auto_pad", "pow-dependent-exponent",
                                  "reduce-batch-axis"])
def test_unsupported_forms_raise_one_line_export_error(name):
    """Forms a rule refuses end in one ExportError naming the node, never a crash."""
    def head(net, a):
        shape = lambda t: t                                          # noqa: E731  (only shapes matter)
        if name == "slice-step2":
            y = net.op("Slice", a, net.const([0]), net.const([H]), net.const([2]), net.const([2]))
            shape = lambda t: t[:, :, ::2]                           # noqa: E731
        elif name == "pad-reflect":
            y = net.op("Pad", a, net.const([0, 0, 1, 1, 0, 0, 1, 1]), mode="reflect")
            shape = lambda t: F.pad(t, (1, 1, 1, 1))                 # noqa: E731
        elif name == "convtranspose-auto_pad":
            y = net.op("ConvTranspose", a, net.param([K, 2, 3, 3]), strides=[2, 2], auto_pad="SAME_UPPER")
            shape = lambda t: t.new_zeros(t.shape[0], 2, 2 * H, 2 * W)   # noqa: E731
        elif name == "pow-dependent-exponent":
            y = net.op("Pow", net.op("Sigmoid", a), a)
        else:   # reduce-batch-axis
            y = net.op("Sub", a, net.op("ReduceMean", a, axes=[0], keepdims=1))
        return y, shape
    message = _raises_export_error(head)
    assert "node" in message


def test_gather_nd_repeated_indices_on_several_threads():
    """onnxruntime's CPU ScatterND(add) applies repeated indices from several threads and loses
    updates; the GatherND rule's scatter must give the same, right gradient on every run."""
    rows = np.tile([[1, 2], [0, 0], [1, 2], [-1, 5]], (2000, 1))
    c = classifier(_gather_nd(rows), image=(3, 16, 16), channels=8)
    graph, _, want = check_against_torch(c)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 4
    sess = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {"image": images(c), "class_index": CLASS_INDEX, **head_feed(graph)}
    runs = [run(sess, feeds)["gradients"] for _ in range(6)]
    for got in runs:
        assert_gradients_close(got, want, "gradients (4 threads)")
        np.testing.assert_array_equal(got, runs[0])


def test_runtime_computed_gather_indices_are_not_baked_in():
    """Indices computed from the data (ArgMax of the channel means): either a clean ExportError or
    gradients that follow the indices of each run."""
    def head(net, a):
        idx = net.op("ArgMax", net.op("ReduceMean", a, axes=[0, 2, 3], keepdims=0), axis=0, keepdims=1)

        def fn(t):
            i = int(t.mean((0, 2, 3)).argmax())
            return t[:, i:i + 1]
        return net.op("Gather", a, idx, axis=1), fn

    c = classifier(head)
    try:
        explanation_graph(c.model)
    except ExportError:
        return
    for x in (images(c), -images(c)):      # two batches whose arg-max channels differ
        check_against_torch(c, batch_independent=False, x=x)


@pytest.mark.parametrize("batch", [
    pytest.param(1, id="static-batch-1"),
    pytest.param("N", id="dynamic-batch"),
])
def test_float16_target_tensor(batch):
    """image (float32) → Cast fp16 → Conv (fp16) → A (fp16) → Relu → GAP → Gemm (fp16) → Cast → logits (float32):
    activations and gradients come out float32 (the contract), close to torch at fp16 precision."""
    net = Net(image=(3, H, W))
    w, b = net.param([K, 3, 3, 3], dtype=np.float16), net.param([K], 0.1, dtype=np.float16)
    net.op("Conv", net.op("Cast", "image", to=TensorProto.FLOAT16), w, b, pads=[1, 1, 1, 1], out="A")
    wc = net.param([5, K], dtype=np.float16)
    y = net.op("Gemm", net.op("Flatten", net.op("GlobalAveragePool", net.op("Relu", "A"))), wc, transB=1)
    net.op("Cast", y, to=TensorProto.FLOAT, out="logits")
    model = net.model(["logits"], batch=batch)
    n = 1 if batch == 1 else 3
    graph = explanation_graph(model)
    x = np.random.default_rng(1).standard_normal((n, 3, H, W)).astype(np.float32)
    out = run(graph, {"image": x, "class_index": CLASS_INDEX[:n], **head_feed(graph)})
    assert out["activations"].dtype == np.float32 and out["gradients"].dtype == np.float32
    a = torch.from_numpy(out["activations"]).double().requires_grad_()
    logits = torch.relu(a).mean((2, 3)) @ wc.t.T
    logits[torch.arange(n), torch.from_numpy(out["target"])].sum().backward()
    np.testing.assert_allclose(out["gradients"], a.grad.numpy(), rtol=0, atol=2e-3 * a.grad.abs().max().item())



@pytest.mark.parametrize("name", [
    "activations",
    "target",
    "gradients",
    "class_index",
])
def test_source_tensor_named_like_a_graph_output(name):
    """The target tensor of the source is called ``name``."""
    net = Net()
    torch_stem = stem(net, out=name)
    torch_head = tail(net, net.op("Relu", name), torch.relu, (1, K, H, W))
    check_against_torch(Classifier(net.model(["logits"]), torch_stem, torch_head, net), target=name)


def test_source_tensor_named_logits_that_is_not_the_scores():
    """A source whose tensor "logits" is temperature-scaled into its [N, C] output."""
    net = Net()
    torch_stem = stem(net)
    torch_head = tail(net, net.op("Relu", "A"), torch.relu, (1, K, H, W), out="logits")
    net.op("Div", "logits", net.param([], values=2.0), out="scaled")
    c = Classifier(net.model(["scaled"]), torch_stem, lambda a: torch_head(a) / 2.0, net)
    check_against_torch(c)
