"""Keep the source's QDQ groups fusable and every reader of a quantized tensor consistent.

onnxruntime runs a quantized model fast by fusing each DequantizeLinear → op → QuantizeLinear
group into one integer kernel (QLinearConv, QLinearMatMul, …), and fuses a group only when its
DequantizeLinear outputs feed nothing else. The reverse pass reads some of those tensors (a
convolution's dequantized weights, a pooled tensor's shape), so this pass gives every extra
reader its own copy of the DequantizeLinear node: an element-wise dequantization, while the
forward pass keeps its integer kernels and therefore the quantized model's exact scores.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir


class SeparateDequantizeReadersPass(ir.passes.InPlacePass):
    """Every DequantizeLinear output with several consumers → one DequantizeLinear per consumer."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        for node in list(graph):
            if node.op_type != "DequantizeLinear" or node.outputs[0] in graph.outputs:
                continue
            for use in list(node.outputs[0].uses())[1:]:
                copy = ir.node("DequantizeLinear", list(node.inputs), attributes=dict(node.attributes),
                               name=f"{node.name}/reader_{use.idx}_{use.node.name}")
                copy.outputs[0].name = f"{node.outputs[0].name}/{use.node.name}/{use.idx}"
                copy.outputs[0].type, copy.outputs[0].shape = node.outputs[0].type, node.outputs[0].shape
                use.node.graph.insert_before(use.node, copy)  # the head path's branch reads it too
                use.node.replace_input_with(use.idx, copy.outputs[0])
                modified = True
        return ir.passes.PassResult(model, modified=modified)


def _int8_constant(value: ir.Value | None) -> np.ndarray | None:
    tensor = value.const_value if value is not None else None
    return tensor.numpy() if tensor is not None and tensor.dtype == ir.DataType.INT8 else None


class Int8ActivationsToUint8Pass(ir.passes.InPlacePass):
    """Each QuantizeLinear → DequantizeLinear pair(s) of int8 activations → uint8 with the zero
    point moved by 128: exactly the same numbers ((q + 128) − (z + 128) = q − z).

    onnxruntime's x64 kernels take uint8 activations and make this rewrite themselves, but only
    where a quantized tensor has one reader, and one of its fused kernels then leaves other
    readers of the tensor seeing uint8 levels with the int8 zero point. Done here, every reader
    (the reverse pass reads the quantized tensors) sees one consistent tensor and every group
    still fuses."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified, shifted_points = False, {}
        for node in list(model.graph):
            zero = _int8_constant(node.inputs[2] if node.op_type == "QuantizeLinear" and len(node.inputs) > 2 else None)
            readers = [use.node for use in node.outputs[0].uses()] if zero is not None else []
            if not readers or node.outputs[0] in model.graph.outputs or any(
                    r.op_type != "DequantizeLinear" or len(r.inputs) < 3 or r.inputs[2] is not node.inputs[2]
                    for r in readers):
                continue
            if node.inputs[2] not in shifted_points:
                shifted = ir.Value(name=f"{node.inputs[2].name}_uint8",
                                   const_value=ir.tensor((zero.astype(np.int16) + 128).astype(np.uint8)))
                shifted.type, shifted.shape = ir.TensorType(ir.DataType.UINT8), ir.Shape(zero.shape)
                model.graph.register_initializer(shifted)
                shifted_points[node.inputs[2]] = shifted
            shifted = shifted_points[node.inputs[2]]
            for each in (node, *readers):
                each.replace_input_with(2, shifted)
            node.outputs[0].type = ir.TensorType(ir.DataType.UINT8)
            modified = True
        return ir.passes.PassResult(model, modified=modified)
