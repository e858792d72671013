"""Broadcasting arithmetic rules (Add, Sub, Mul, Div, Sum, Where, Expand) against torch.autograd."""
from __future__ import annotations

import numpy as np
import pytest
from rule_cases import Cases, H, K, W, check_case, positive, torch

pytestmark = pytest.mark.torch
case = Cases()

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


@case("Max-broadcast-W[K,1,1]", True)
def _max_w(net, a):
    w = net.param([K, 1, 1])
    return net.op("Max", a, w), lambda t: torch.maximum(t, w.t)


@case("Min-three-operands", True)
def _min3(net, a):
    w = net.param([1, 1, W])
    return net.op("Min", a, w, net.op("Neg", a)), lambda t: torch.minimum(torch.minimum(t, w.t), -t)


@case("Max-ties-share-the-gradient", True)
def _max_ties(net, a):
    relu = net.op("Relu", a)  # many exact ties at 0 with the zero operand
    zero = net.param([], values=0.0)
    return net.op("Max", relu, zero), lambda t: torch.maximum(torch.relu(t), torch.zeros((), dtype=t.dtype))


@pytest.mark.parametrize("spec", case)
def test_rule_matches_torch_autograd(spec):
    check_case(spec)
