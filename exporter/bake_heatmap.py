"""Bake one CAM method and the contract's post-processing into an explanation graph.

:class:`BakeHeatmapPass` splices the method's heatmap graph (``onnxcam.models.heatmap_graph``:
the formula from ``onnxcam.models.formulas`` — the very function the runtime evaluates with numpy
— and the runtime's post-processing, the same graph the runtime runs on a GPU) into the
explanation graph, in its opset, fed by the graph's own outputs A = ``activations``, g =
``gradients``, g2 = ``gradients_pow2``, g3 = ``gradients_pow3``; its ``heatmap`` [N, H, W]
becomes a new output.

Post-processing (per image): non-finite values made finite; cam = ReLU(map); cam ← (cam − min
cam) / (1e-7 + max(cam − min cam)); bilinear resize to (H, W) with half-pixel centres (ONNX
``Resize``, as cv2 INTER_LINEAR and the runtime's ``resize_bilinear``); ReLU; min-max again.
(H, W) is the model input size from the ``onnxcam.preprocess`` metadata, or the image's own size
read at run time for a graph of any input size.
"""
from __future__ import annotations

import onnx
import onnx_ir as ir
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.graph_values import default_opset
from onnxcam.exporter.probe import TensorFacts
from onnxcam.models.contract import (
    ACTIVATIONS,
    GRADIENTS,
    GRADIENTS_POW2,
    GRADIENTS_POW3,
    HEATMAP,
    GraphMetadata,
    Key,
)
from onnxcam.models.errors import param
from onnxcam.models.formulas import FORMULAS
from onnxcam.models.heatmap_graph import heatmap_graph

#: Methods that can be baked: those with a closed-form formula.
BAKEABLE_METHODS = tuple(FORMULAS)
PREFIX = "onnxcam/heatmap"


def check_method(method: str) -> str:
    """``method`` if it can be baked, else an ExportError listing the valid names."""
    if method not in FORMULAS:
        raise ExportError(f"{param('heatmap', method)}: cannot bake this method; choose from "
                          f"{', '.join(FORMULAS)}")
    return method


def splice_heatmap(graph: ir.Graph, method: str, opset: int, feeds: dict[str, ir.Value]) -> ir.Value:
    """Append ``method``'s heatmap graph to ``graph``, its inputs (``activations``, …, ``size``)
    read from ``feeds``; returns its ``heatmap`` value (its ``raw`` output is left out)."""
    small = ir.from_proto(onnx.load_from_string(heatmap_graph(method, opset)[0]))
    for value in list(small.graph.inputs):
        if feeds.get(value.name) is None:
            raise ExportError(f"cannot bake {method}: the graph has no '{value.name}' output")
        value.replace_all_uses_with(feeds[value.name])
    outputs = {v.name: v for v in small.graph.outputs}
    small.graph.outputs.clear()
    for k, node in enumerate(list(small.graph)):
        small.graph.remove(node)
        if outputs["raw"] in node.outputs:
            continue
        node.name = f"{PREFIX}/{node.op_type}_{k}"
        for out in node.outputs:
            out.name = f"{PREFIX}/{out.name}"
        graph.append(node)
    return outputs["heatmap"]


class BakeHeatmapPass(ir.passes.InPlacePass):
    """Append the output ``heatmap`` [N, H, W] of ``method`` and the metadata
    ``onnxcam.heatmap_method`` to an explanation graph (see the module docstring)."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = check_method(method)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        meta = GraphMetadata.from_props(model.metadata_props)
        if meta.heatmap_method is not None:
            raise ExportError(f"the graph already has a baked heatmap ({meta.heatmap_method})")
        if meta.preprocess is None:
            raise ExportError(f"cannot bake a heatmap: no {Key.PREPROCESS} metadata (the input size)")
        graph, size = model.graph, meta.preprocess.size
        outputs = {v.name: v for v in graph.outputs}
        if HEATMAP in outputs:
            raise ExportError(f"the graph already has a '{HEATMAP}' output")
        A = outputs[ACTIVATIONS]
        dims = list(A.shape) if A.shape is not None else []
        if len(dims) != 4:
            raise ExportError(f"cannot bake a heatmap: the activations are not [N, K, h, w], got {dims}")
        b = GraphBuilder(graph, TensorFacts(), default_opset(model), prefix=PREFIX)
        image = next(v for v in graph.inputs if v.name == meta.image_input)
        hw_axes = [1, 2] if meta.preprocess.layout == "NHWC" else [2, 3]
        image_hw = [image.shape[a] for a in hw_axes] if image.shape is not None else [None, None]
        if not all(isinstance(d, int) for d in image_hw + dims[2:]):  # any image size: read it at run time
            size = b.op("Gather", b.op("Shape", image), b.ints(hw_axes), axis=0)
            image_hw = [d if isinstance(d, int) else str(d) for d in image_hw]
        else:
            size, image_hw = b.ints(list(size)), list(size)
        feeds = {ACTIVATIONS: A, GRADIENTS: outputs[GRADIENTS], GRADIENTS_POW2: outputs.get(GRADIENTS_POW2),
                 GRADIENTS_POW3: outputs.get(GRADIENTS_POW3), "size": size}
        heatmap = splice_heatmap(graph, self.method, default_opset(model), feeds)
        heatmap.name = HEATMAP
        heatmap.type = ir.TensorType(ir.DataType.FLOAT)
        heatmap.shape = ir.Shape([dims[0], *image_hw])
        graph.outputs.append(heatmap)
        model.metadata_props[Key.HEATMAP_METHOD] = self.method
        return ir.passes.PassResult(model, modified=True)


def bake_heatmap(model: onnx.ModelProto, method: str) -> onnx.ModelProto:
    """A copy of the explanation graph ``model`` with ``method`` baked in (:class:`BakeHeatmapPass`)."""
    ir_model = ir.from_proto(model)
    BakeHeatmapPass(method)(ir_model)
    return ir.to_proto(ir_model)
