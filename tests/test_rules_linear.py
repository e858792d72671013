"""Gemm, MatMul, Conv and ConvTranspose rules against torch.autograd."""
from __future__ import annotations

import pytest
from exporter_helpers import (
    classifier,
    explanation_graph,
)
from rule_cases import Cases, D, F, H, K, W, check_case, torch, tpads

pytestmark = pytest.mark.torch
case = Cases()

M = 6   # Gemm/MatMul output features


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


@case("Einsum-weights-nchw,kc->nkhw", True)
def _einsum_weights(net, a):
    w = net.param([3, K])
    return net.op("Einsum", a, w, equation="nchw,kc->nkhw"), lambda t: torch.einsum("nchw,kc->nkhw", t, w.t)


@case("Einsum-attention-both-operands-dependent", False)
def _einsum_attention(net, a):
    tokens = net.op("Reshape", a, net.const([0, K, H * W]))   # [N, K, T]
    y = net.op("Einsum", tokens, tokens, equation="nkt,nks->nts")
    return y, lambda t: torch.einsum("nkt,nks->nts", t.reshape(t.shape[0], K, -1), t.reshape(t.shape[0], K, -1))


@case("Einsum-summed-index-broadcast-back", True)
def _einsum_sum(net, a):
    w = net.param([W])
    return net.op("Einsum", a, w, equation="nchw,v->nch"), lambda t: torch.einsum("nchw,v->nch", t, w.t)


@pytest.mark.parametrize("spec", case)
def test_rule_matches_torch_autograd(spec):
    check_case(spec)


@pytest.mark.parametrize("kernel,pads,reverse_op", [((3, 3), (1, 1, 1, 1), "Conv"), ((1, 1), (0, 0, 0, 0), "Conv"),
                                                     ((1, 1), (1, 1, 1, 1), "ConvTranspose")])
def test_stride_one_conv_is_reversed_by_a_conv(kernel, pads, reverse_op):
    """The faster form is really emitted (the cases above check its numbers)."""
    c = classifier(_conv(k=kernel, pads=pads), image=(3, 8, 8))
    graph = explanation_graph(c.model)
    reverse = [n.op_type for n in graph.graph.node if n.name.startswith("onnxcam/") and "Conv" in n.op_type]
    assert reverse == [reverse_op]
