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
    epsilon = node.attributes.get_float("epsilon", 1e-5)
    centred = b.op("Sub", x, b.reduce("ReduceMean", x, axes, keepdims=True))
    variance = b.reduce("ReduceMean", b.op("Mul", centred, centred), axes, keepdims=True)
    inv_std = b.op("Reciprocal", b.op("Sqrt", b.op("Add", variance, b.scalar(epsilon, x))))
    x_hat = b.op("Mul", centred, inv_std)
    g_hat = b.op("Mul", dys[0], scale)
    mean_g = b.reduce("ReduceMean", g_hat, axes, keepdims=True)
    mean_gx = b.reduce("ReduceMean", b.op("Mul", g_hat, x_hat), axes, keepdims=True)
    dx = b.op("Mul", inv_std, b.op("Sub", b.op("Sub", g_hat, mean_g), b.op("Mul", x_hat, mean_gx)))
    return [dx] + [None] * (len(node.inputs) - 1)
