"""Make an explanation graph take raw pixels: uint8 NHWC RGB ``[N, H, W, 3]``.

``raw_input(model)`` replaces the image input (same name) by a uint8 tensor of the model's input
size and prepends the preprocessing the runtime would otherwise do in numpy
(``runtime/images.py: preprocess_image``), from the ``onnxcam.preprocess`` metadata::

    p = float32(pixels)                       # [N, H, W, 3], RGB, 0..255
    p = p[..., ::-1]                          # only when the model wants BGR
    x = (p · scale − mean) / std              # per channel, in the model's channel order
    x = transpose(x, [0, 3, 1, 2])            # only when the model is NCHW
    x = cast(x, model dtype)                  # only for fp16 / fp64 image inputs

The resize / centre crop stays outside the graph (clients send images of the model's input
size). The ``onnxcam.preprocess`` entry keeps describing the normalisation the graph now applies
inside; ``onnxcam.raw_input`` = ``"true"`` says the input is raw pixels.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.graph_values import default_opset
from onnxcam.exporter.probe import TensorFacts
from onnxcam.models.contract import GraphMetadata, Key
from onnxcam.models.errors import param
from onnxcam.models.preprocess import Preprocess


class RawInputPass(ir.passes.InPlacePass):
    """Make the explanation graph's image input (same name) uint8 NHWC RGB pixels of the model's
    input size, normalised inside the graph (see the module docstring)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        meta = GraphMetadata.from_props(model.metadata_props)
        if meta.raw_input:
            raise ExportError("the graph already takes raw uint8 pixels")
        if meta.input_gradients:
            raise ExportError(f"{param('raw_input', True)} cannot be combined with {param('input_gradients', True)} "
                              "(input gradients are taken w.r.t. the normalised float input)")
        pre = meta.preprocess
        if pre is None:
            raise ExportError(f"{param('raw_input', True)} needs {Key.PREPROCESS} metadata")
        if pre.channels != 3:
            raise ExportError(f"{param('raw_input', True)} needs a 3-channel (RGB/BGR) model; this one takes "
                              f"{pre.channels} channel(s)")
        graph = model.graph
        index = next((i for i, v in enumerate(graph.inputs) if v.name == meta.image_input), None)
        if index is None:
            raise ExportError(f"internal: image input {meta.image_input!r} not found in the graph")
        old = graph.inputs[index]
        if old.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE):
            raise ExportError(f"{param('raw_input', True)} needs a float image input; {old.name!r} is {old.dtype}")
        batch = old.shape[0] if old.shape is not None and len(old.shape) == 4 else "N"
        pixels = ir.Value(name=old.name, type=ir.TensorType(ir.DataType.UINT8),
                          shape=ir.Shape([batch, pre.size[0], pre.size[1], 3]))
        old.name = "onnxcam/raw_input/normalised"
        old.replace_all_uses_with(_normalise(GraphBuilder(graph, TensorFacts(), default_opset(model),
                                                          prefix="onnxcam/raw_input"), pixels, pre, old.dtype))
        graph.inputs[index] = pixels
        ir_passes.TopologicalSortPass()(model)
        model.metadata_props[Key.RAW_INPUT] = "true"
        return ir.passes.PassResult(model, modified=True)


def _normalise(b: GraphBuilder, pixels: ir.Value, pre: Preprocess, dtype: ir.DataType) -> ir.Value:
    """x = (float(pixels)[..., ::-1 if BGR] · scale − mean)/std, transposed to NCHW if needed."""
    x = b.op("Cast", pixels, to=ir.DataType.FLOAT)
    if pre.color == "BGR":
        x = b.op("Gather", x, b.ints([2, 1, 0]), axis=3)
    x = b.op("Mul", x, b.const(np.array(pre.scale, np.float32), "scale"))
    x = b.op("Sub", x, b.const(np.asarray(pre.mean, np.float32), "mean"))
    x = b.op("Div", x, b.const(np.asarray(pre.std, np.float32), "std"))
    if pre.layout == "NCHW":
        x = b.op("Transpose", x, perm=[0, 3, 1, 2])
    return x if dtype == ir.DataType.FLOAT else b.op("Cast", x, to=dtype)


def raw_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the explanation graph ``model`` that takes raw pixels (:class:`RawInputPass`)."""
    ir_model = ir.from_proto(model)
    RawInputPass()(ir_model)
    return ir.to_proto(ir_model)
