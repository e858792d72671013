"""Element-wise non-linearity rules against torch.autograd."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from rule_cases import Cases, F, K, check_case, positive, torch

pytestmark = pytest.mark.torch
case = Cases()

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


@case("Abs", True)
def _abs(net, a):
    return net.op("Abs", a), torch.abs


@case("Elu", False)
def _elu(net, a):
    return net.op("Elu", a, alpha=0.7), lambda t: F.elu(t, 0.7)


@case("Selu", False)
def _selu(net, a):
    return net.op("Selu", a), F.selu


@case("Celu", False)
def _celu(net, a):
    return net.op("Celu", a, alpha=1.3), lambda t: F.celu(t, 1.3)


@case("PRelu-per-channel", True)
def _prelu(net, a):
    slope = net.param([K, 1, 1], low=0.05, high=0.5)
    return net.op("PRelu", a, slope), lambda t: F.prelu(t, slope.t.reshape(-1))


@case("Softplus", False)
def _softplus(net, a):
    return net.op("Softplus", a), F.softplus


@case("Mish", False, opset=18)
def _mish(net, a):
    return net.op("Mish", a), F.mish


@case("Softsign", False)
def _softsign(net, a):
    return net.op("Softsign", a), F.softsign


@pytest.mark.parametrize("spec", case)
def test_rule_matches_torch_autograd(spec):
    check_case(spec)
