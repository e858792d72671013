"""How a target tensor is laid out, so that the graph can output it as NCHW.

- 4-D: NCHW or NHWC, read off the operators around it. Convolutions, pooling and batch
  normalisation are NCHW; channels-last tensors are produced or consumed by LayerNormalization
  over the last axis or MatMul (Swin, ConvNeXt blocks, MaxViT), or wrapped in Transposes by
  converters (tf2onnx, TFLite). The layout travels through element-wise operators unchanged.
- 3-D ``[N, T, D]``: tokens of a vision transformer (ViT, DeiT, BEiT, EVA) or an MLP mixer:
  prefix tokens then a grid of patches (``models.grids.token_grid``).
"""
from __future__ import annotations

import onnx_ir as ir

from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.probe import TensorFacts
from onnxcam.exporter.rules.qoperator import output_quantization
from onnxcam.models.contract import TargetLayout
from onnxcam.models.grids import token_grid

_NCHW_PRODUCERS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "BatchNormalization",
                   "GlobalAveragePool", "GlobalMaxPool", "LpPool", "InstanceNormalization", "ConvInteger",
                   "QLinearConv", "QLinearAveragePool", "QLinearGlobalAveragePool"}
_NCHW_CONSUMERS = _NCHW_PRODUCERS - {"GlobalMaxPool"}
_LAYOUT_PRESERVING = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Add",
                      "Sub", "Mul", "Div", "Identity", "Dropout", "Cast", "Erf", "Gelu", "Concat", "Neg",
                      "Sum", "Max", "Min", "Where", "Elu", "Selu", "PRelu", "Softplus", "Mish",
                      "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul",
                      "QLinearConcat", "QLinearLeakyRelu", "QLinearSigmoid"}
_TO_NHWC, _TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
_INT64_MAX = 2**63 - 1


def _weight_matmul(node: ir.Node, value: ir.Value) -> bool:
    """A MatMul/Gemm of ``value`` with a 2-D weight (a Linear over the last axis), not attention."""
    others = [i for i in node.inputs[:2] if i is not None and i is not value]
    return node.op_type in ("MatMul", "Gemm") and len(others) == 1 and others[0].const_value is not None \
        and len(others[0].const_value.shape) == 2


def _channels_last_use(node: ir.Node, value: ir.Value) -> bool | None:
    """True when ``node`` treats the 4-D ``value`` as channels-last, False as NCHW, None: no clue."""
    if node.op_type in _NCHW_CONSUMERS:
        return False
    if node.op_type == "LayerNormalization":
        return True if node.attributes.get_int("axis", -1) in (-1, 3) else None
    if _weight_matmul(node, value):
        return True
    if node.op_type == "Transpose":
        perm = list(node.attributes.get_ints("perm", []))
        return True if perm == _TO_NCHW else False if perm == _TO_NHWC else None
    return None


def _producer_layout(value: ir.Value, facts: TensorFacts, depth: int) -> str | None:
    """The layout the operators producing ``value`` give it, through element-wise operators."""
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
                if perm in (_TO_NHWC, _TO_NCHW):
                    return "NHWC" if perm == _TO_NHWC else "NCHW"
                continue
            if node.op_type == "LayerNormalization" and node.attributes.get_int("axis", -1) in (-1, 3):
                return "NHWC"
            if any(_weight_matmul(node, i) for i in node.inputs[:2] if i is not None):
                return "NHWC"
            if node.op_type in _LAYOUT_PRESERVING:
                shape = facts.shapes.get(current.name)
                next_frontier += [i for i in node.inputs if i is not None and facts.shapes.get(i.name) == shape]
        if not next_frontier:
            break
        frontier = next_frontier
    return None


def feature_layout(value: ir.Value, facts: TensorFacts, depth: int = 64) -> str | None:
    """``"NCHW"`` or ``"NHWC"`` for a 4-D tensor: the output of a convolution, pooling or batch
    norm is NCHW whatever uses it; else its direct uses tell, else its producers; None when nothing
    tells (an attention tensor [N, heads, T, T], say)."""
    if value.producer() is not None and value.producer().op_type in _NCHW_PRODUCERS:
        return "NCHW"
    votes = [_channels_last_use(use.node, value) for use in value.uses()]
    votes = [v for v in votes if v is not None]
    if votes:
        return "NHWC" if sum(votes) > len(votes) / 2 else "NCHW"
    return _producer_layout(value, facts, depth)


def target_layout(value: ir.Value, facts: TensorFacts, image_hw: tuple[int, int] | None,
                  assume_nchw: bool = True) -> TargetLayout | None:
    """The layout of a target tensor (see the module docstring); None when it is neither a 4-D
    map nor tokens of the image (nor, without ``assume_nchw``, a 4-D tensor whose operators say
    how it is laid out)."""
    shape = facts.shapes.get(value.name)
    if shape is None or not (facts.is_float(value.name) or output_quantization(value) is not None):
        return None
    if len(shape) == 4:
        layout = feature_layout(value, facts) or ("NCHW" if assume_nchw else None)
        return TargetLayout(layout) if layout else None
    if len(shape) == 3 and image_hw is not None:
        found = token_grid(shape[1], image_hw)
        if found is not None:
            return TargetLayout("tokens", found[0], found[1])
    return None


def image_size(shape: tuple[int, ...], layout: str | None = None) -> tuple[int, int] | None:
    """(H, W) of an image input of ``shape`` [N, C, H, W] or [N, H, W, C] (``layout``, or the
    side with 1, 3 or 4 channels); None when it is not a 4-D image."""
    if len(shape) != 4:
        return None
    if layout is None:
        layout = "NHWC" if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4) else "NCHW"
    return (shape[1], shape[2]) if layout == "NHWC" else (shape[2], shape[3])


def grid_size(shape: tuple[int, ...], layout: TargetLayout) -> tuple[int, int]:
    """(h, w) of a target of ``shape`` in ``layout``."""
    if layout.layout == "tokens":
        return layout.grid
    return (shape[1], shape[2]) if layout.layout == "NHWC" else (shape[2], shape[3])


def is_spatial_map(value: ir.Value, facts: TensorFacts, image_hw: tuple[int, int] | None = None) -> bool:
    """A float feature map or token tensor with more than one grid position, laid out as its
    operators say (see :func:`target_layout`)."""
    layout = target_layout(value, facts, image_hw, assume_nchw=False)
    if layout is None:
        return False
    h, w = grid_size(facts.shape(value.name), layout)
    return h * w > 1


def to_nchw(builder: GraphBuilder, value: ir.Value, layout: TargetLayout) -> ir.Value:
    """``value`` (the target, in ``layout``) as [N, K, h, w]: NHWC transposed; tokens without
    their prefix, reshaped row-major to [N, h, w, D] and transposed."""
    if layout.layout == "NCHW":
        return value
    if layout.layout == "tokens":
        h, w = layout.grid
        if layout.prefix:
            value = builder.op("Slice", value, builder.ints([layout.prefix]), builder.ints([_INT64_MAX]),
                               builder.ints([1]))
        value = builder.op("Reshape", value, builder.ints([0, h, w, -1]))
    return builder.op("Transpose", value, perm=_TO_NCHW)


def prefix_tokens(builder: GraphBuilder, value: ir.Value, layout: TargetLayout) -> ir.Value:
    """The prefix tokens [N, P, D] of a token target."""
    return builder.op("Slice", value, builder.ints([0]), builder.ints([layout.prefix]), builder.ints([1]))
