"""BatchNormalization and LayerNormalization rules against torch.autograd."""
from __future__ import annotations

import pytest
from rule_cases import Cases, D, F, H, K, W, check_case

pytestmark = pytest.mark.torch
case = Cases()

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


@case("InstanceNormalization", False)
def _instance_norm(net, a):
    scale, bias = net.param([K], low=0.5, high=1.5), net.param([K])
    y = net.op("InstanceNormalization", a, scale, bias, epsilon=1e-4)
    return y, lambda t: F.instance_norm(t, weight=scale.t, bias=bias.t, eps=1e-4)


def _group_norm(groups: int, opset: int):
    def head(net, a):
        scale = net.param([K if opset >= 21 else groups], low=0.5, high=1.5)
        bias = net.param([K if opset >= 21 else groups])
        y = net.op("GroupNormalization", a, scale, bias, num_groups=groups, epsilon=1e-4)

        def fn(t):
            gamma = scale.t if opset >= 21 else scale.t.repeat_interleave(K // groups)
            beta = bias.t if opset >= 21 else bias.t.repeat_interleave(K // groups)
            return F.group_norm(t, groups, gamma, beta, eps=1e-4)
        return y, fn
    return head


case("GroupNormalization-2-groups-opset21", False, opset=21)(_group_norm(2, 21))
case("GroupNormalization-4-groups-opset21", False, opset=21)(_group_norm(4, 21))


@pytest.mark.parametrize("spec", case)
def test_rule_matches_torch_autograd(spec):
    check_case(spec)
