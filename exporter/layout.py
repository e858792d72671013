"""Is a 4-D feature map NCHW or NHWC? Read off the operators around it.

Convolutions, pooling and batch normalisation in ONNX are NCHW; NHWC tensors appear where a
converter (tf2onnx, TFLite converters) wrapped them in Transposes. The layout travels through
element-wise operators unchanged.
"""
from __future__ import annotations

import onnx_ir as ir
from onnxcam.exporter.probe import TensorFacts

_NCHW_PRODUCERS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "BatchNormalization",
                   "GlobalAveragePool", "GlobalMaxPool", "LpPool", "InstanceNormalization"}
_LAYOUT_PRESERVING = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Add",
                      "Sub", "Mul", "Div", "Identity", "Dropout", "Cast", "Erf", "Gelu", "Concat", "Neg",
                      "Sum", "Max", "Min", "Where", "Elu", "Selu", "PRelu", "Softplus", "Mish"}
_TO_NHWC, _TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def feature_layout(value: ir.Value, facts: TensorFacts, depth: int = 64) -> str:
    """``"NCHW"`` or ``"NHWC"`` for a 4-D tensor (NCHW when nothing tells otherwise)."""
    frontier = [value]
    for _ in range(depth):
        next_frontier = []
        for current in frontier:
            node = current.producer()
            if node is None:
                continue
            if node.op_type in _NCHW_PRODUCERS:
                return "NCHW"
            if node.op_type == "Transpose":
                perm = list(node.attributes.get_ints("perm", []))
                if perm == _TO_NHWC:
                    return "NHWC"
                if perm == _TO_NCHW:
                    return "NCHW"
                continue
            if node.op_type in _LAYOUT_PRESERVING:
                shape = facts.shapes.get(current.name)
                next_frontier += [i for i in node.inputs
                                  if i is not None and facts.shapes.get(i.name) == shape]
        if not next_frontier:
            break
        frontier = next_frontier
    return "NCHW"


def is_spatial_map(value: ir.Value, facts: TensorFacts) -> bool:
    """A 4-D float tensor with more than one spatial position."""
    shape = facts.shapes.get(value.name)
    if shape is None or len(shape) != 4 or not facts.is_float(value.name):
        return False
    h, w = (shape[1], shape[2]) if feature_layout(value, facts) == "NHWC" else (shape[2], shape[3])
    return h * w > 1
