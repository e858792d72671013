"""Normalisation layers (inference mode)."""
from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.rules import rule

Grads = Sequence["ir.Value | None"]


@rule("BatchNormalization", piecewise_linear=True)
def batch_norm(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = γ·(x − μ)/√(σ² + ε) + β with running statistics:  dx = dy · γ/√(σ² + ε) per channel."""
    if node.attributes.get_int("training_mode", 0):
        raise ExportError(f"BatchNormalization node '{node.name}' is in training mode")
    if any(needs[1:]):
        raise ExportError(f"BatchNormalization node '{node.name}': parameters that depend on the target")
    x, scale, _, _, var = node.inputs[:5]
    epsilon = node.attributes.get_float("epsilon", 1e-5)
    factor = b.op("Div", scale, b.op("Sqrt", b.op("Add", var, b.scalar(epsilon, var))))
    rank = b.rank(x)
    factor = b.op("Reshape", factor, b.ints([-1] + [1] * (rank - 2)))
    return [b.op("Mul", dys[0], factor)] + [None] * (len(node.inputs) - 1)


@rule("LayerNormalization")
def layer_norm(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = γ·x̂ + β, x̂ = (x − μ)·r, r = 1/√(σ² + ε) over the normalised axes (n elements):
    dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = dy·γ."""
    if any(needs[1:]):
        raise ExportError(f"LayerNormalization node '{node.name}': parameters that depend on the target")
    x, scale = node.inputs[0], node.inputs[1]
    rank = b.rank(x)
    axis = node.attributes.get_int("axis", -1) % rank
    axes = list(range(axis, rank))
    dx = _normalised_gradient(b, x, b.op("Mul", dys[0], scale), axes, node.attributes.get_float("epsilon", 1e-5))
    return [dx] + [None] * (len(node.inputs) - 1)


def _normalised_gradient(b: GraphBuilder, x: ir.Value, g_hat: ir.Value, axes: list[int], epsilon: float) -> ir.Value:
    """dx of x̂ = (x − μ)·r, r = 1/√(σ² + ε) over ``axes``, given ĝ = ∂L/∂x̂:
    dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))."""
    centred = b.op("Sub", x, b.reduce("ReduceMean", x, axes, keepdims=True))
    variance = b.reduce("ReduceMean", b.op("Mul", centred, centred), axes, keepdims=True)
    inv_std = b.op("Reciprocal", b.op("Sqrt", b.op("Add", variance, b.scalar(epsilon, x))))
    x_hat = b.op("Mul", centred, inv_std)
    mean_g = b.reduce("ReduceMean", g_hat, axes, keepdims=True)
    mean_gx = b.reduce("ReduceMean", b.op("Mul", g_hat, x_hat), axes, keepdims=True)
    return b.op("Mul", inv_std, b.op("Sub", b.op("Sub", g_hat, mean_g), b.op("Mul", x_hat, mean_gx)))


@rule("InstanceNormalization")
def instance_norm(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = γ_c·x̂ + β_c, x̂ normalised over the spatial axes of each (n, c):
    dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = dy·γ_c (means over the spatial axes)."""
    if any(needs[1:]):
        raise ExportError(f"InstanceNormalization node '{node.name}': parameters that depend on the target")
    x, scale = node.inputs[0], node.inputs[1]
    rank = b.rank(x)
    gamma = b.op("Reshape", scale, b.ints([-1] + [1] * (rank - 2)))
    dx = _normalised_gradient(b, x, b.op("Mul", dys[0], gamma), list(range(2, rank)),
                              node.attributes.get_float("epsilon", 1e-5))
    return [dx] + [None] * (len(node.inputs) - 1)


@rule("GroupNormalization")
def group_norm(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = γ·x̂ + β, x̂ normalised over each group of C/G channels and all spatial positions:
    on x viewed as [N, G, C/G·spatial], dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)), ĝ = dy·γ (γ per
    channel, or per group at opset 18)."""
    if any(needs[1:]):
        raise ExportError(f"GroupNormalization node '{node.name}': parameters that depend on the target")
    x, scale = node.inputs[0], node.inputs[1]
    shape = b.static_shape(x)
    groups, channels = node.attributes.get_int("num_groups"), shape[1]
    per_channel = b.static_shape(scale)[0] == channels
    gamma = scale if per_channel else b.op("Expand", b.op("Reshape", scale, b.ints([groups, 1])),
                                           b.ints([groups, channels // groups]))
    gamma = b.op("Reshape", gamma, b.ints([-1] + [1] * (len(shape) - 2)))
    grouped = b.ints([0, groups, -1])  # no size baked in
    g_hat = b.op("Reshape", b.op("Mul", dys[0], gamma), grouped)
    dx = _normalised_gradient(b, b.op("Reshape", x, grouped), g_hat, [2], node.attributes.get_float("epsilon", 1e-5))
    return [b.op("Reshape", dx, b.shape_of(x))] + [None] * (len(node.inputs) - 1)
