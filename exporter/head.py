"""The head-only path for Ablation-CAM: scores of modified activations without a full forward pass.

Ablation-CAM needs S(A with channel k zeroed) for every channel k. The explanation graph gets a
second input ``head_activations`` (float [M, K, h, w], NCHW, an empty tensor by default) and an
output ``head_logits`` [M, C]: a copy of the nodes between the target tensor and the scores that
shares the source's weights, inside an ``If`` that runs it only when M > 0, so an ordinary
explanation costs nothing extra. This is only possible when every path from the image to the
scores passes through the target (otherwise the head also needs the image) and the batch axis
is free; otherwise nothing is added.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir import tape
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.probe import TensorFacts

HEAD_INPUT, HEAD_OUTPUT = "head_activations", "head_logits"


def _descendants(graph: ir.Graph, sources: set[ir.Value]) -> tuple[list[ir.Node], set[ir.Value]]:
    reached, nodes = set(sources), []
    for node in graph:
        if any(i is not None and i in reached for i in node.inputs):
            nodes.append(node)
            reached.update(node.outputs)
    return nodes, reached


def head_nodes(graph: ir.Graph, image: ir.Value, target: ir.Value, logits: ir.Value) -> list[ir.Node] | None:
    """The nodes between ``target`` and ``logits``, or None when some path bypasses the target."""
    _, image_dependent = _descendants(graph, {image})
    nodes, target_dependent = _descendants(graph, {target})
    needed = {logits}
    for node in reversed(nodes):
        if any(o in needed for o in node.outputs):
            needed.update(i for i in node.inputs if i is not None)
    nodes = [n for n in nodes if any(o in needed for o in n.outputs)]
    for node in nodes:
        for inp in node.inputs:
            if inp is not None and inp in image_dependent and inp not in target_dependent:
                return None
    return nodes


def _small_integer_constant(value: ir.Value) -> bool:
    tensor = value.const_value
    return tensor is not None and tensor.dtype.is_integer() and tensor.size <= 64


def add_head_path(builder: GraphBuilder, graph: ir.Graph, facts: TensorFacts, image: ir.Value,
                  target: ir.Value, logits: ir.Value, layout: str) -> ir.Value | None:
    """Append ``head_activations`` → ``head_logits`` (see the module docstring), or return None."""
    if not facts.batch_dynamic:
        return None
    nodes = head_nodes(graph, image, target, logits)
    if nodes is None:
        return None
    shape = facts.shape(target.name)
    k, h, w = shape[1:] if layout == "NCHW" else (shape[3], shape[1], shape[2])
    head_input = ir.Value(
        name=HEAD_INPUT, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["M", k, h, w]),
        const_value=ir.tensor(np.zeros((0, k, h, w), np.float32), name=HEAD_INPUT),
    )
    graph.inputs.append(head_input)
    graph.register_initializer(head_input)

    branch = tape.Tape()  # the nodes of the If's then-branch
    start = head_input
    if builder.dtype(target) != np.float32:
        start = branch.op("Cast", [start], {"to": ir.DataType.from_numpy(builder.dtype(target))})
    if layout == "NHWC":
        start = branch.op("Transpose", [start], {"perm": [0, 2, 3, 1]})
    copies: dict[ir.Value, ir.Value] = {target: start}
    for node in nodes:
        for i in node.inputs:  # small integer constants (shapes, axes) as the branch's own Constants:
            if i is not None and i not in copies and _small_integer_constant(i):  # the checker's
                copies[i] = branch.op("Constant", [], {"value": i.const_value})    # inference needs them
        inputs = [copies.get(i, i) if i is not None else None for i in node.inputs]
        attributes = {name: attr.value for name, attr in node.attributes.items()}
        outputs = branch.op_multi_out(node.op_type, inputs, attributes, num_outputs=len(node.outputs))
        for original, copy in zip(node.outputs, outputs):  # element types for the checker's inference
            if original.name in facts.dtypes:
                copy.type = ir.TensorType(ir.DataType.from_numpy(facts.dtypes[original.name]))
        copies.update(zip(node.outputs, outputs))
    scores = copies[logits]
    if builder.dtype(logits) != np.float32:
        scores = branch.op("Cast", [scores], {"to": ir.DataType.FLOAT})
    for i, value in enumerate(v for n in branch.nodes for v in n.outputs):
        value.name = f"{builder.prefix}/head/{i}"
    then_graph = ir.Graph([], [scores], nodes=branch.nodes, name="head")

    num_classes = facts.shape(logits.name)[1]
    empty_scores = builder.const(np.zeros((0, num_classes), np.float32), "no_head_logits")
    else_graph = ir.Graph([], [builder.op("Identity", empty_scores)], nodes=[], name="no_head")
    # the else-branch's Identity must live in the branch, not the main graph
    identity = else_graph.outputs[0].producer()
    graph.remove(identity)
    else_graph.append(identity)

    rows = builder.op("Gather", builder.shape_of(head_input), builder.ints([0]), axis=0)
    has_rows = builder.op("Greater", builder.op("Squeeze", rows), builder.const(np.array(0, np.int64), "zero"))
    return builder.op("If", has_rows, then_branch=then_graph, else_branch=else_graph)
