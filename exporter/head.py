"""The head-only path for Ablation-CAM: scores of modified activations without a full forward pass.

Ablation-CAM needs S(A with channel k zeroed) for every channel k. The explanation graph gets a
second input ``head_activations`` (float [M, K, h, w], NCHW, an empty tensor by default) and an
output ``head_logits`` [M, C]: a copy of the nodes between the target tensor and the scores that
shares the source's weights, inside an ``If`` that runs it only when M > 0, so an ordinary
explanation costs nothing extra.

Where the head also reads tensors of the image that do not pass through the target (a
transformer block's residual stream around its norm, a DenseNet's concatenated features) or
the target is tokens with prefix tokens (class, distillation, register), the graph gets a third
input ``head_image_index`` (int64 [M]): row m of ``head_activations`` belongs to image
``head_image_index[m]`` of the image batch fed with it (by default image m mod N), whose own
tensors the head gathers.
The prefix tokens of row m are that image's, with every channel that row m holds at exactly
zero over the whole grid zeroed too: an ablated channel is removed from every token, as
pytorch-grad-cam's ``AblationLayerVit`` does. Nothing is added when the batch axis is fixed or a
bypassing tensor is not batch-major.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir import tape
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.layout import TargetLayout, grid_size, prefix_tokens
from onnxcam.exporter.probe import TensorFacts
from onnxcam.exporter.rules.qoperator import output_quantization
from onnxcam.models.contract import HEAD_IMAGE_INDEX, HEAD_INPUT


@dataclass
class HeadPath:
    """The nodes between the target and the scores, and the image's tensors they also read."""

    nodes: list[ir.Node]
    context: list[ir.Value]


def _descendants(graph: ir.Graph, sources: set[ir.Value]) -> tuple[list[ir.Node], set[ir.Value]]:
    reached, nodes = set(sources), []
    for node in graph:
        if any(i is not None and i in reached for i in node.inputs):
            nodes.append(node)
            reached.update(node.outputs)
    return nodes, reached


def head_path(graph: ir.Graph, image: ir.Value, target: ir.Value, logits: ir.Value) -> HeadPath:
    """The nodes from ``target`` to ``logits`` and the image-dependent tensors that feed them
    without depending on the target."""
    _, image_dependent = _descendants(graph, {image})
    nodes, target_dependent = _descendants(graph, {target})
    needed = {logits}
    for node in reversed(nodes):
        if any(o in needed for o in node.outputs):
            needed.update(i for i in node.inputs if i is not None)
    nodes = [n for n in nodes if any(o in needed for o in n.outputs)]
    context = {i for node in nodes for i in node.inputs
               if i is not None and i in image_dependent and i not in target_dependent}
    return HeadPath(nodes, sorted(context, key=lambda v: v.name or ""))


def _head_start(builder: GraphBuilder, head_input: ir.Value, target: ir.Value, layout: TargetLayout,
                rows: ir.Value | None) -> ir.Value:
    """``head_activations`` [M, K, h, w] in the target's own dtype and layout (main graph: with
    M = 0 these nodes cost nothing)."""
    start = head_input
    quantization = output_quantization(target) if np.issubdtype(builder.dtype(target), np.integer) else None
    if quantization is not None:  # the real activations back to the target's levels
        scale, zero = quantization
        start = builder.op("QuantizeLinear", start, scale, *([zero] if zero is not None else []))
    elif builder.dtype(target) != np.float32:
        start = builder.op("Cast", start, to=ir.DataType.from_numpy(builder.dtype(target)))
    if layout.layout == "NCHW":
        return start
    start = builder.op("Transpose", start, perm=[0, 2, 3, 1])
    if layout.layout == "NHWC":
        return start
    h, w = layout.grid
    tokens = builder.op("Reshape", start, builder.ints([0, h * w, builder.static_shape(target)[2]]))
    if not layout.prefix:
        return tokens
    zero = builder.const(np.array(0, builder.dtype(target)), "zero")
    kept = builder.op("Greater", builder.reduce("ReduceMax", builder.op("Abs", start), [1, 2], keepdims=True), zero)
    prefix = builder.op("Gather", prefix_tokens(builder, target, layout), rows, axis=0)
    prefix = builder.op("Mul", prefix, builder.op("Cast", builder.op("Squeeze", kept, builder.ints([1])),
                                                  to=ir.DataType.from_numpy(builder.dtype(target))))
    return builder.op("Concat", prefix, tokens, axis=1)


def _small_integer_constant(value: ir.Value) -> bool:
    tensor = value.const_value
    return tensor is not None and tensor.dtype.is_integer() and tensor.size <= 64


def _overridable_input(graph: ir.Graph, name: str, array: np.ndarray, dims: list) -> ir.Value:
    """A graph input with an initializer (``array``, its default) of the same name."""
    value = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), shape=ir.Shape(dims),
                     const_value=ir.tensor(array, name=name))
    graph.inputs.append(value)
    graph.register_initializer(value)
    return value


def _image_rows(builder: GraphBuilder, given: ir.Value, head_input: ir.Value, image: ir.Value) -> ir.Value:
    """The image of each ``head_activations`` row: ``head_image_index`` when fed, else row m ↔
    image m mod N (so one image explains any number of rows, and N rows are N images)."""
    count = builder.op("Gather", builder.shape_of(head_input), builder.ints([0]), axis=0)
    images = builder.op("Gather", builder.shape_of(image), builder.ints([0]), axis=0)
    default = builder.op("Mod", builder.op("Range", builder.const(np.array(0, np.int64), "zero"),
                                           builder.op("Squeeze", count), builder.const(np.array(1, np.int64), "one")),
                         images)
    return builder.op("Slice", builder.op("Concat", given, default, axis=0), builder.ints([0]), count,
                      builder.ints([0]))


@dataclass
class Head:
    """The head-only path: ``head_logits``, and whether it reads ``head_image_index``."""

    logits: ir.Value
    image_index: bool


def add_head_path(builder: GraphBuilder, graph: ir.Graph, facts: TensorFacts, image: ir.Value,
                  target: ir.Value, logits: ir.Value, layout: TargetLayout) -> Head | None:
    """Append ``head_activations`` (and ``head_image_index``) → ``head_logits`` (see the module
    docstring), or return None."""
    if not facts.batch_dynamic:
        return None
    path = head_path(graph, image, target, logits)
    if any(facts.axes_with_batch(v.name) != (0,) for v in path.context):
        return None
    shape = facts.shape(target.name)
    k = shape[2] if layout.layout == "tokens" else shape[1] if layout.layout == "NCHW" else shape[3]
    h, w = grid_size(shape, layout)
    follows = facts.axes_with_size(target.name)  # an NCHW / NHWC grid that follows the image size
    axes = (2, 3) if layout.layout == "NCHW" else (1, 2)
    dims = ["M", k, "h" if axes[0] in follows else h, "w" if axes[1] in follows else w]
    head_input = _overridable_input(graph, HEAD_INPUT, np.zeros((0, k, h, w), np.float32), dims)
    rows = None
    if path.context or layout.prefix:
        rows = _image_rows(builder, _overridable_input(graph, HEAD_IMAGE_INDEX, np.zeros(0, np.int64), ["M"]),
                           head_input, image)
    copies: dict[ir.Value, ir.Value] = {target: _head_start(builder, head_input, target, layout, rows)}
    for value in path.context:
        copies[value] = builder.op("Gather", value, rows, axis=0)

    branch = tape.Tape()  # the nodes of the If's then-branch
    for node in path.nodes:
        for i in node.inputs:  # small integer constants (shapes, axes) as the branch's own Constants:
            if i is not None and i not in copies and _small_integer_constant(i):  # the checker's
                copies[i] = branch.op("Constant", [], {"value": i.const_value})    # inference needs them
        inputs = [copies.get(i, i) if i is not None else None for i in node.inputs]
        attributes = {name: attr.value for name, attr in node.attributes.items()}
        outputs = branch.op_multi_out(node.op_type, inputs, attributes, domain=node.domain,
                                      num_outputs=len(node.outputs))
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

    count = builder.op("Gather", builder.shape_of(head_input), builder.ints([0]), axis=0)
    has_rows = builder.op("Greater", builder.op("Squeeze", count), builder.const(np.array(0, np.int64), "zero"))
    return Head(builder.op("If", has_rows, then_branch=then_graph, else_branch=else_graph), rows is not None)
