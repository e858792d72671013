"""Broadcasting arithmetic: each gradient is summed back over the axes its operand was broadcast along."""
from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.rules import rule

Grads = Sequence["ir.Value | None"]


def _back(b: GraphBuilder, node: ir.Node, grad: ir.Value, index: int) -> ir.Value:
    return b.unbroadcast(grad, node.inputs[index], b.static_shape(node.outputs[0]))


@rule("Add", "Sum", piecewise_linear=True)
def add(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = Σ_i x_i:  dx_i = unbroadcast(dy)."""
    return [_back(b, node, dys[0], i) if need else None for i, need in enumerate(needs)]


@rule("Sub", piecewise_linear=True)
def sub(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = a − b:  da = unbroadcast(dy), db = −unbroadcast(dy)."""
    da = _back(b, node, dys[0], 0) if needs[0] else None
    db = _back(b, node, b.op("Neg", dys[0]), 1) if needs[1] else None
    return [da, db]


@rule("Neg", piecewise_linear=True)
def neg(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = −x:  dx = −dy."""
    return [b.op("Neg", dys[0])]


@rule("Mul")
def mul(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = a·b:  da = unbroadcast(dy·b), db = unbroadcast(dy·a)."""
    a, c = node.inputs
    da = _back(b, node, b.op("Mul", dys[0], c), 0) if needs[0] else None
    dc = _back(b, node, b.op("Mul", dys[0], a), 1) if needs[1] else None
    return [da, dc]


@rule("Div")
def div(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = a/b:  da = unbroadcast(dy/b), db = unbroadcast(−dy·y/b)."""
    a, c = node.inputs
    da = _back(b, node, b.op("Div", dys[0], c), 0) if needs[0] else None
    dc = None
    if needs[1]:
        dc = _back(b, node, b.op("Neg", b.op("Div", b.op("Mul", dys[0], node.outputs[0]), c)), 1)
    return [da, dc]


@rule("Pow")
def power(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = x^p with p constant:  dx = dy · p · x^(p−1)."""
    x, p = node.inputs
    if needs[1]:
        raise ExportError(f"Pow node '{node.name}': an exponent that depends on the target is not supported")
    exponent = b.require_constant(p, node, "exponent").astype(b.dtype(x))
    slope = b.op("Mul", b.op("Pow", x, b.const(exponent - 1, "exponent")), b.const(exponent, "exponent"))
    return [_back(b, node, b.op("Mul", dys[0], slope), 0), None]


@rule("Expand", piecewise_linear=True)
def expand(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = broadcast(x):  dx = unbroadcast(dy)."""
    return [_back(b, node, dys[0], 0), None]


@rule("Where", piecewise_linear=True)
def where(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = c ? a : b:  da = unbroadcast(c ? dy : 0), db = unbroadcast(c ? 0 : dy)."""
    cond, dy = node.inputs[0], dys[0]
    zero = b.scalar(0.0, node.outputs[0])
    da = _back(b, node, b.op("Where", cond, dy, zero), 1) if needs[1] else None
    db = _back(b, node, b.op("Where", cond, zero, dy), 2) if needs[2] else None
    return [None, da, db]


@rule("Max", "Min", piecewise_linear=True)
def max_min(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = max(x_1 … x_n) (or min), broadcasting:  dx_i = unbroadcast(dy·[x_i = y] / #{j: x_j = y}),
    the operands that tie sharing dy evenly (as torch.maximum / torch.minimum)."""
    y = node.outputs[0]
    dtype = ir.DataType.from_numpy(b.dtype(y))
    masks = [b.op("Cast", b.op("Equal", x, y), to=dtype) for x in node.inputs]
    count = masks[0] if len(masks) == 1 else b.op("Sum", *masks)
    share = b.op("Div", dys[0], count)
    return [_back(b, node, b.op("Mul", mask, share), i) if need else None
            for i, (mask, need) in enumerate(zip(masks, needs))]
