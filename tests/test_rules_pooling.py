"""Pooling and reduction rules against torch.autograd."""
from __future__ import annotations

import math

import pytest
from rule_cases import Cases, F, H, K, W, check_case, torch, tpads
from test_rules_linear import _same_pads

pytestmark = pytest.mark.torch
case = Cases()

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


def _reduce_other(op, axes, keepdims):
    torch_fn = {
        "ReduceL2": lambda t, d, k: torch.linalg.vector_norm(t, dim=d, keepdim=k),
        "ReduceSumSquare": lambda t, d, k: (t * t).sum(d, keepdim=k),
        "ReduceLogSumExp": lambda t, d, k: torch.logsumexp(t, d, keepdim=k),
        "ReduceMax": lambda t, d, k: torch.amax(t, d, keepdim=k),
        "ReduceMin": lambda t, d, k: torch.amin(t, d, keepdim=k),
    }[op]

    def head(net, a):
        y = net.op(op, a, net.const(axes), keepdims=keepdims)
        return y, lambda t: torch_fn(t, tuple(ax % 4 for ax in axes), bool(keepdims))
    return head


for _op, _linear in (("ReduceL2", False), ("ReduceSumSquare", False), ("ReduceLogSumExp", False),
                     ("ReduceMax", True), ("ReduceMin", True)):
    for _kd, _axes in ((1, [2, 3]), (0, [1]), (0, [-1, 1])):
        case(f"{_op}-axes{_axes}-keepdims{_kd}", _linear, opset=18)(_reduce_other(_op, _axes, _kd))


@case("ReduceMax-ties-share-the-gradient", True, opset=18)
def _reduce_max_ties(net, a):
    y = net.op("ReduceMax", net.op("Relu", a), net.const([2, 3]), keepdims=1)
    return y, lambda t: torch.amax(torch.relu(t), (2, 3), keepdim=True)


def _resize(mode: str, transform: str, *, scales=None, sizes=None, nearest="round_prefer_floor"):
    """Resize against torch F.interpolate (torch's modes: bilinear with align_corners False/True,
    nearest = ONNX asymmetric + floor)."""
    def head(net, a):
        extra = {"nearest_mode": nearest} if mode == "nearest" else {}
        if scales is not None:
            y = net.op("Resize", a, None, net.param([4], values=[1, 1, *scales]), mode=mode,
                       coordinate_transformation_mode=transform, **extra)
        else:
            batch_and_channels = net.op("Slice", net.op("Shape", a), net.const([0]), net.const([2]))
            y = net.op("Resize", a, None, None, net.op("Concat", batch_and_channels, net.const(sizes), axis=0),
                       mode=mode, coordinate_transformation_mode=transform, **extra)

        def fn(t):
            kw = {"scale_factor": tuple(scales)} if scales is not None else {"size": tuple(sizes)}
            if mode == "nearest":
                return F.interpolate(t, mode="nearest", **kw)
            return F.interpolate(t, mode="bilinear", align_corners=transform == "align_corners", **kw)
        return y, fn
    return head


case("Resize-linear-half_pixel-x2", True)(_resize("linear", "half_pixel", scales=[2.0, 2.0]))
case("Resize-linear-half_pixel-sizes-shrink", True)(_resize("linear", "half_pixel", sizes=[4, 5]))
case("Resize-linear-align_corners-sizes", True)(_resize("linear", "align_corners", sizes=[9, 11]))
case("Resize-linear-pytorch_half_pixel-x1.5", True)(_resize("linear", "pytorch_half_pixel", scales=[1.5, 1.5]))
case("Resize-nearest-asymmetric-floor-x2", True)(_resize("nearest", "asymmetric", scales=[2.0, 2.0], nearest="floor"))
case("Resize-nearest-asymmetric-floor-sizes", True)(_resize("nearest", "asymmetric", sizes=[9, 5], nearest="floor"))


@pytest.mark.parametrize("spec", case)
def test_rule_matches_torch_autograd(spec):
    check_case(spec)
