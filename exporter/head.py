"""The head-only path for Ablation-CAM: scores of modified activations without a full forward pass.

Ablation-CAM needs S(A with channel k zeroed) for every channel k. The explanation graph gets a
second input ``head_activations`` (float [M, K, h, w], NCHW, an empty tensor by default) and an
output ``head_logits`` [M, C] computed by a copy of the nodes between the target tensor and the
scores that shares the source's weights. This is only possible when every path from the image
to the scores passes through the target (otherwise the head also needs the image), in which
case nothing is added.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.probe import TensorFacts


def _descendants(graph: ir.Graph, sources: set[ir.Value]) -> tuple[list[ir.Node], set[ir.Value]]:
    reached, nodes = set(sources), []
    for node in graph:
        if any(i is not None and i in reached for i in node.inputs):
            nodes.append(node)
            reached.update(node.outputs)
    return nodes, reached


def add_head_path(builder: GraphBuilder, graph: ir.Graph, facts: TensorFacts, spec, target: ir.Value,
                  logits: ir.Value, layout: str) -> ir.Value | None:
    """Append the head copy and return ``head_logits``, or None when the target is not a cut
    (or the source bakes a batch of 1 into its shape arithmetic, so the head cannot batch)."""
    if not facts.batch_dynamic:
        return None
    image = next(v for v in graph.inputs if v.name == spec.image_input)
    _, image_dependent = _descendants(graph, {image})
    head_nodes, target_dependent = _descendants(graph, {target})
    needed = {logits}
    for node in reversed(head_nodes):
        if any(o in needed for o in node.outputs):
            needed.update(i for i in node.inputs if i is not None)
    head_nodes = [n for n in head_nodes if any(o in needed for o in n.outputs)]
    for node in head_nodes:
        for inp in node.inputs:
            if inp is not None and inp in image_dependent and inp not in target_dependent:
                return None  # a bypass around the target: the head needs the image too
    shape = facts.shape(target.name)
    channels_first = [0, *shape[1:]] if layout == "NCHW" else [0, shape[3], shape[1], shape[2]]
    head_input = ir.Value(
        name="head_activations", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["M", *channels_first[1:]]),
        const_value=ir.tensor(np.zeros(channels_first, np.float32), name="head_activations"),
    )
    graph.inputs.append(head_input)
    graph.register_initializer(head_input)
    start = head_input if layout == "NCHW" else builder.op("Transpose", head_input, perm=[0, 2, 3, 1])
    copies: dict[ir.Value, ir.Value] = {target: start}
    for node in head_nodes:
        inputs = [copies.get(i, i) if i is not None else None for i in node.inputs]
        attributes = {name: attr.value for name, attr in node.attributes.items()}
        outputs = builder.op_multi(node.op_type, *inputs, num_outputs=len(node.outputs), **attributes)
        copies.update(zip(node.outputs, outputs))
    return copies[logits]
