"""Quantized operators, differentiated by the straight-through rule of quantization-aware training.

The forward nodes stay integer, so an explanation runs at the quantized model's speed. The reverse
pass reads a quantized tensor q as the real number it stands for, in quantized units, and carries
its gradient as a float tensor:

- QuantizeLinear  q = clip(round(x / s) + z, q_min, q_max):  ∂q/∂x = 1/s where q lies strictly
  between q_min and q_max, 0 at the bounds, which clipped values take (the backward of torch's
  ``fake_quantize_per_tensor_affine`` except at values that round exactly onto a bound;
  per channel along ``axis`` too). The mask is read off q through a DequantizeLinear of q, never
  off x: x is the output of the operator inside a DequantizeLinear → op → QuantizeLinear group,
  and onnxruntime fuses a group into one integer kernel only while nothing else reads it (see
  ``exporter.qdq_groups`` for the DequantizeLinear side and for int8 activations);
- DequantizeLinear  y = (q − z)·s:  ∂y/∂q = s, so a Q → DQ pair passes dy where x is not clipped;
- DynamicQuantizeLinear (s and z from x's own range, which never clips):  ∂q/∂x = 1/s, with s and
  z held constant (``autodiff`` does not differentiate them);
- MatMulInteger  Y = (A − a_z)(B − b_z) and ConvInteger  Y = (x − x_z) ⋆ (w − w_z): the MatMul
  and Conv rules with the constant operand as the float tensor B − b_z (w − w_z).
"""
from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import onnx_ir as ir
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.rules import rule
from onnxcam.exporter.rules.linear import conv, matmul

Grads = Sequence["ir.Value | None"]

_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255),
           np.dtype(np.int16): (-32768, 32767), np.dtype(np.uint16): (0, 65535)}


def _along_axis(b: GraphBuilder, param: ir.Value, node: ir.Node, rank: int) -> ir.Value:
    """A per-tensor parameter as it is; a per-channel one [C] shaped to broadcast along ``axis``."""
    shape = b.static_shape(param)
    if len(shape) == 0 or int(np.prod(shape)) == 1:
        return param
    axis = node.attributes.get_int("axis", 1) % rank
    return b.op("Reshape", param, b.ints([-1] + [1] * (rank - 1 - axis)))


def _as_float(b: GraphBuilder, value: ir.Value, like: ir.Value) -> ir.Value:
    dtype = b.dtype(like)
    return value if b.dtype(value) == dtype else b.op("Cast", value, to=ir.DataType.from_numpy(dtype))


@rule("QuantizeLinear", piecewise_linear=True)
def quantize_linear(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """q = clip(round(x / s) + z, q_min, q_max):  dx = dq / s · 1[q_min < q < q_max], the test
    made on y = (q − z)·s (a DequantizeLinear of q) against (q_min − z + ½)·s and (q_max − z − ½)·s."""
    x, scale = node.inputs[0], node.inputs[1]
    zero = node.inputs[2] if len(node.inputs) > 2 else None
    q_min, q_max = _RANGES.get(b.dtype(node.outputs[0]), (0, 255))
    dtype, rank = b.dtype(x), b.rank(x)
    axis = {"axis": node.attributes.get_int("axis", 1)} if len(b.static_shape(scale)) else {}
    y = _as_float(b, b.op("DequantizeLinear", *node.outputs[:1], scale, *([zero] if zero is not None else []), **axis), x)
    s = _as_float(b, _along_axis(b, scale, node, rank), x)
    z = _as_float(b, _along_axis(b, zero, node, rank), x) if zero is not None else b.const(np.array(0, dtype), "zero")
    low = b.op("Mul", b.op("Sub", b.const(np.array(q_min + 0.5, dtype), "q_min"), z), s)
    high = b.op("Mul", b.op("Sub", b.const(np.array(q_max - 0.5, dtype), "q_max"), z), s)
    inside = b.op("Cast", b.op("And", b.op("Greater", y, low), b.op("Less", y, high)), to=ir.DataType.from_numpy(dtype))
    return [b.op("Div", b.op("Mul", _as_float(b, dys[0], x), inside), s)] + [None] * (len(node.inputs) - 1)


@rule("DequantizeLinear", piecewise_linear=True)
def dequantize_linear(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = (q − z)·s:  dq = dy · s (a float gradient of the integer q)."""
    q, scale = node.inputs[0], node.inputs[1]
    s = _along_axis(b, scale, node, b.rank(q))
    return [b.op("Mul", dys[0], s)] + [None] * (len(node.inputs) - 1)


@rule("DynamicQuantizeLinear", piecewise_linear=True)
def dynamic_quantize_linear(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """(q, s, z) = quantize(x), s = (max(0, max x) − min(0, min x)) / 255:  dx = dq / s (0 where
    s = 0), s and z held constant. s is recomputed from x rather than read off the node, whose
    outputs onnxruntime fuses into the integer product that follows only while nothing else reads them."""
    x = node.inputs[0]
    if dys[0] is None:
        return [None]
    axes = list(range(b.rank(x)))
    zero = b.const(np.array(0, b.dtype(x)), "zero")
    high = b.op("Max", b.reduce("ReduceMax", x, axes, keepdims=False), zero)
    low = b.op("Min", b.reduce("ReduceMin", x, axes, keepdims=False), zero)
    scale = b.op("Div", b.op("Sub", high, low), b.const(np.array(255, b.dtype(x)), "levels"))
    dx = b.op("Div", _as_float(b, dys[0], x), b.op("Max", scale, b.const(np.array(np.finfo(b.dtype(x)).tiny, b.dtype(x)), "tiny")))
    return [b.op("Where", b.op("Greater", scale, zero), dx, b.zeros_like(dx))]


def _dequantized_constant(b: GraphBuilder, value: ir.Value, zero: ir.Value | None, node: ir.Node,
                          per_channel_axis: int) -> ir.Value:
    """The float constant ``value − zero`` of an integer operand (``zero`` per tensor or per
    channel along ``per_channel_axis``)."""
    if value.const_value is None or (zero is not None and zero.const_value is None):
        raise ExportError(f"{node.op_type} node '{node.name}': an integer operand that depends on the image "
                          "is supported only as the one that leads to the target")
    array = value.const_value.numpy().astype(np.float32)
    if zero is not None:
        z = zero.const_value.numpy().astype(np.float32)
        if z.size > 1:
            shape = [1] * array.ndim
            shape[per_channel_axis] = -1
            z = z.reshape(shape)
        array = array - z
    result = b.const(array, f"{node.op_type.lower()}_operand")
    b.facts.shapes[result.name], b.facts.dtypes[result.name] = array.shape, array.dtype
    return result


def _stand_in(node: ir.Node, op_type: str, inputs: list[ir.Value]) -> SimpleNamespace:
    """What the float rules read of a node (not added to the graph)."""
    return SimpleNamespace(op_type=op_type, name=node.name, inputs=inputs, outputs=node.outputs,
                           attributes=node.attributes)


def _optional(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


@rule("MatMulInteger", piecewise_linear=True)
def matmul_integer(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """Y = (A − a_z)(B − b_z), B constant:  dA = dY (B − b_z)ᵀ (the MatMul rule)."""
    if len(needs) > 1 and needs[1]:
        raise ExportError(f"MatMulInteger node '{node.name}': a right operand that depends on the target "
                          "is not supported")
    a, weight = node.inputs[0], node.inputs[1]
    operand = _dequantized_constant(b, weight, _optional(node, 3), node, per_channel_axis=-1)
    (da, _) = matmul(b, _stand_in(node, "MatMul", [a, operand]), dys, [True, False])
    return [da] + [None] * (len(node.inputs) - 1)


@rule("ConvInteger", piecewise_linear=True)
def conv_integer(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """Y = (x − x_z) ⋆ (w − w_z), w constant:  dx = the Conv rule's dx with the weight w − w_z."""
    x, weight = node.inputs[0], node.inputs[1]
    operand = _dequantized_constant(b, weight, _optional(node, 3), node, per_channel_axis=0)
    dx = conv(b, _stand_in(node, "Conv", [x, operand]), dys, [True, False])[0]
    return [dx] + [None] * (len(node.inputs) - 1)
