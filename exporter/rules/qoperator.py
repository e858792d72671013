"""Operator-oriented quantized operators (QLinearConv, QLinearMatMul, onnxruntime's QLinearAdd,
QLinearMul, QLinearGlobalAveragePool, QLinearConcat, QGemm), differentiated straight-through.

Each computes y_q = quantize(f(dequantize(inputs)), s_y, z_y) in one integer kernel. As in
``rules.quantization`` a quantized tensor q stands for the real number r = (q − z)·s and carries
the float gradient ∂L/∂q; with the straight-through rule of quantization-aware training

    ∂L/∂r_y = ∂L/∂q_y · 1[q_min < q_y < q_max] / s_y,   ∂L/∂q_x = ∂L/∂r_x · s_x,

and ∂L/∂r_x is the float operator f's rule on the real operands (constant weights dequantized
once, as float initializers). The forward kernels are left as they are.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.rules import rule
from onnxcam.exporter.rules.linear import conv, gemm, matmul
from onnxcam.exporter.rules.quantization import _RANGES, _stand_in

Grads = Sequence["ir.Value | None"]

#: (scale, zero point) input positions of each quantized operator's output
OUTPUT_QUANTIZATION = {
    "QuantizeLinear": (1, 2), "QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QLinearAdd": (6, 7),
    "QLinearMul": (6, 7), "QLinearGlobalAveragePool": (3, 4), "QLinearAveragePool": (3, 4),
    "QLinearConcat": (0, 1), "QGemm": (7, 8), "QLinearLeakyRelu": (3, 4), "QLinearSigmoid": (3, 4),
}
#: operators that pass quantized values through unchanged (same scale and zero point)
_KEEPS_QUANTIZATION = {"MaxPool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity"}


def output_quantization(value: ir.Value) -> tuple[ir.Value, ir.Value | None] | None:
    """(scale, zero point) of an integer tensor made by a quantized operator (through operators
    that keep its quantization), or None."""
    producer = value.producer()
    while producer is not None and producer.op_type in _KEEPS_QUANTIZATION:
        producer = producer.inputs[0].producer()
    if producer is None or producer.op_type not in OUTPUT_QUANTIZATION:
        return None
    s, z = OUTPUT_QUANTIZATION[producer.op_type]
    zero = producer.inputs[z] if len(producer.inputs) > z else None
    return producer.inputs[s], zero


def _output_gradient(b: GraphBuilder, y: ir.Value, dy: ir.Value, scale: ir.Value) -> ir.Value:
    """∂L/∂r_y = dy · 1[q_min < q_y < q_max] / s_y."""
    q_min, q_max = _RANGES[b.dtype(y)]
    levels = b.op("Cast", y, to=ir.DataType.FLOAT)
    inside = b.op("And", b.op("Greater", levels, b.const(np.array(q_min, np.float32), "q_min")),
                  b.op("Less", levels, b.const(np.array(q_max, np.float32), "q_max")))
    return b.op("Div", b.op("Mul", dy, b.op("Cast", inside, to=ir.DataType.FLOAT)), scale)


def _real_output_gradient(b: GraphBuilder, node: ir.Node, dys: Grads) -> ir.Value:
    """∂L/∂r_y of the node's output: the straight-through mask when it is quantized, dy as it
    is when it is float (a QGemm without an output scale)."""
    y = node.outputs[0]
    if not np.issubdtype(b.dtype(y), np.integer):
        return dys[0]
    s = OUTPUT_QUANTIZATION[node.op_type][0]
    return _output_gradient(b, y, dys[0], node.inputs[s])


def _real_constant(b: GraphBuilder, node: ir.Node, q: ir.Value, scale: ir.Value, zero: ir.Value | None,
                   axis: int) -> ir.Value:
    """The float initializer (q − z)·s of a constant quantized operand (per channel along ``axis``)."""
    if q.const_value is None or scale.const_value is None or (zero is not None and zero.const_value is None):
        raise ExportError(f"{node.op_type} node '{node.name}': a quantized operand that depends on the image "
                          "is supported only as the one that leads to the target")
    array = q.const_value.numpy().astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = -1

    def along(param: ir.Value) -> np.ndarray:
        values = param.const_value.numpy().astype(np.float32)
        return values.reshape(shape) if values.size > 1 else values

    real = (array - (along(zero) if zero is not None else 0.0)) * along(scale)
    result = b.const(real.astype(np.float32), f"{node.op_type.lower()}_weight")
    b.facts.shapes[result.name], b.facts.dtypes[result.name] = real.shape, np.dtype(np.float32)
    return result


def _to_levels(b: GraphBuilder, real_gradient: ir.Value | None, scale: ir.Value) -> ir.Value | None:
    """∂L/∂q_x = ∂L/∂r_x · s_x."""
    return None if real_gradient is None else b.op("Mul", real_gradient, scale)


def _optional(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index and node.inputs[index] is not None else None


@rule("QLinearConv", piecewise_linear=True)
def qlinear_conv(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """r_y = r_w ⋆ r_x + bias:  ∂L/∂q_x = s_x · ConvTranspose(∂L/∂r_y, r_w) (the Conv rule)."""
    x, x_scale = node.inputs[0], node.inputs[1]
    weight = _real_constant(b, node, node.inputs[3], node.inputs[4], _optional(node, 5), axis=0)
    dx = conv(b, _stand_in(node, "Conv", [x, weight]), [_real_output_gradient(b, node, dys)], [True, False])[0]
    return [_to_levels(b, dx, x_scale)] + [None] * (len(node.inputs) - 1)


@rule("QLinearMatMul", piecewise_linear=True)
def qlinear_matmul(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """r_y = r_a · r_b, b constant:  ∂L/∂q_a = s_a · ∂L/∂r_y · r_bᵀ (the MatMul rule)."""
    a, a_scale = node.inputs[0], node.inputs[1]
    weight = _real_constant(b, node, node.inputs[3], node.inputs[4], _optional(node, 5), axis=-1)
    da = matmul(b, _stand_in(node, "MatMul", [a, weight]), [_real_output_gradient(b, node, dys)], [True, False])[0]
    return [_to_levels(b, da, a_scale)] + [None] * (len(node.inputs) - 1)


@rule("com.microsoft::QGemm", piecewise_linear=True)
def qgemm(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """r_y = α·op(r_a)·op(r_b) + c, b constant:  ∂L/∂q_a = s_a · the Gemm rule's dA."""
    a, a_scale = node.inputs[0], node.inputs[1]
    weight = _real_constant(b, node, node.inputs[3], node.inputs[4], _optional(node, 5),
                            axis=0 if node.attributes.get_int("transB", 0) else 1)
    da = gemm(b, _stand_in(node, "Gemm", [a, weight]), [_real_output_gradient(b, node, dys)], [True, False])[0]
    return [_to_levels(b, da, a_scale)] + [None] * (len(node.inputs) - 1)


@rule("com.microsoft::QLinearAdd", piecewise_linear=True)
def qlinear_add(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """r_y = r_a + r_b:  ∂L/∂q_a = s_a · unbroadcast(∂L/∂r_y), the same for b."""
    dy, y_shape = _real_output_gradient(b, node, dys), b.static_shape(node.outputs[0])
    grads: list[ir.Value | None] = [None] * len(node.inputs)
    for index in (0, 3):
        if needs[index]:
            grads[index] = _to_levels(b, b.unbroadcast(dy, node.inputs[index], y_shape), node.inputs[index + 1])
    return grads


def _dequantized(b: GraphBuilder, node: ir.Node, index: int) -> ir.Value:
    """r = (q − z)·s of the operand at ``index`` (its scale and zero point follow it)."""
    zero = _optional(node, index + 2)
    return b.op("DequantizeLinear", node.inputs[index], node.inputs[index + 1], *([zero] if zero is not None else []))


@rule("com.microsoft::QLinearMul")
def qlinear_mul(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """r_y = r_a · r_b:  ∂L/∂q_a = s_a · unbroadcast(∂L/∂r_y · r_b), the same for b."""
    dy, y_shape = _real_output_gradient(b, node, dys), b.static_shape(node.outputs[0])
    grads: list[ir.Value | None] = [None] * len(node.inputs)
    for index, other in ((0, 3), (3, 0)):
        if needs[index]:
            product = b.op("Mul", dy, _dequantized(b, node, other))
            grads[index] = _to_levels(b, b.unbroadcast(product, node.inputs[index], y_shape), node.inputs[index + 1])
    return grads


@rule("com.microsoft::QLinearGlobalAveragePool", piecewise_linear=True)
def qlinear_global_average_pool(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """r_y = mean over space of r_x:  ∂L/∂q_x = s_x · expand(∂L/∂r_y) / (h·w) (channels first or
    last, as ``channels_last`` says)."""
    x = node.inputs[0]
    rank = b.rank(x)
    spatial = range(1, rank - 1) if node.attributes.get_int("channels_last", 0) else range(2, rank)
    dy = b.divide_by(_real_output_gradient(b, node, dys), b.size_of(x, spatial), node.inputs[1])
    return [_to_levels(b, b.op("Expand", dy, b.shape_of(x)), node.inputs[1])] + [None] * (len(node.inputs) - 1)


@rule("com.microsoft::QLinearConcat", piecewise_linear=True)
def qlinear_concat(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """r_y = concat(r_x1 … r_xn):  ∂L/∂q_xi = s_xi · the i-th piece of ∂L/∂r_y (inputs: s_y, z_y,
    then (q_xi, s_xi, z_xi) per operand)."""
    rank = b.rank(node.outputs[0])
    axis = node.attributes.get_int("axis") % rank
    b.check_batch_axis([axis], node, node.outputs[0])
    b.check_fixed_size([axis], node, node.outputs[0], why="splits its gradient at sizes read off the probe")
    operands = list(range(2, len(node.inputs), 3))
    pieces = b.split_sizes(_real_output_gradient(b, node, dys), axis,
                           [b.static_shape(node.inputs[i])[axis] for i in operands])
    grads: list[ir.Value | None] = [None] * len(node.inputs)
    for i, piece in zip(operands, pieces):
        grads[i] = _to_levels(b, piece, node.inputs[i + 1]) if needs[i] else None
    return grads
