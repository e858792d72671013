"""Turn a classifier graph (logits + a target tensor) into the contract's explanation graph.

Inputs: the image input and ``class_index`` (int64 [N], negative = top-1). Outputs: ``logits``,
``target``, ``activations``, ``gradients``, ``gradients_pow2``, ``gradients_pow3`` (all NCHW),
plus the head-only path for Ablation-CAM (``head_activations`` → ``head_logits``) when the
target tensor separates the input from the scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from onnxcam.exporter.autodiff import differentiate, find_path, is_piecewise_linear
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.gating import gate_outputs
from onnxcam.exporter.head import add_head_path
from onnxcam.exporter.layout import feature_layout
from onnxcam.exporter.probe import TensorFacts
from onnxcam.exporter.rules.guided import GUIDED_RULES
from onnxcam.models.contract import HEAD_INPUT, RESERVED_NAMES, GraphMetadata
from onnxcam.models.preprocess import Preprocess

@dataclass
class GraphSpec:
    """What the explanation graph is built from."""

    model: onnx.ModelProto          # the classifier, opset ≥ 17, logits as a graph tensor
    image_input: str
    logits: str
    target: str
    source: str
    target_layer: str               # the user-facing name (module name or tensor name)
    preprocess: Preprocess | dict | None
    labels: list[str] | None = None
    input_gradients: bool | str = False   # ∂S/∂input outputs: False, "plain", "guided", "both" (= True)


def values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    """Every named tensor of ``graph``."""
    values: dict[str, ir.Value] = {v.name: v for v in graph.inputs}
    values.update(graph.initializers)
    for node in graph:
        for out in node.outputs:
            if out.name:
                values[out.name] = out
    return values


def resolve_identity(value: ir.Value) -> ir.Value:
    """Follow Identity nodes back to the tensor the rest of the graph actually uses."""
    while value.producer() is not None and value.producer().op_type == "Identity":
        value = value.producer().inputs[0]
    return value


def _set_output(graph: ir.Graph, builder: GraphBuilder, value: ir.Value, name: str, dtype: ir.DataType,
                dims: list) -> ir.Value:
    """Expose ``value`` as graph output ``name`` (renaming new tensors, an Identity for source ones)."""
    if value.name != name:
        if value.name.startswith(builder.prefix):
            value.name = name
        else:
            value = builder.op("Identity", value)
            value.name = name
    value.type = ir.TensorType(dtype)
    value.shape = ir.Shape(dims)
    graph.outputs.append(value)
    return value


def _free_reserved_names(values: dict[str, ir.Value], keep: set[ir.Value]) -> None:
    """Rename source tensors that carry a name the explanation graph gives to its own inputs/outputs."""
    for name in RESERVED_NAMES & set(values):
        if values[name] not in keep:
            values[name].name = f"{name}__source"


def _as_float32(builder: GraphBuilder, value: ir.Value) -> ir.Value:
    """``value`` as float32 (fp16 models keep their outputs float32, as the contract says)."""
    if builder.dtype(value) == np.float32:
        return value
    return builder.op("Cast", value, to=ir.DataType.FLOAT)


#: ``input_gradients`` modes: which reverse passes to the input the graph carries.
INPUT_GRADIENT_MODES = ("plain", "guided", "both")


def input_gradient_mode(value: bool | str | None) -> str | None:
    """The mode for ``value``: None (no input gradients), or one of ``INPUT_GRADIENT_MODES``
    (``True`` means ``"both"``)."""
    if value is None or value is False:
        return None
    if value is True:
        return "both"
    if value not in INPUT_GRADIENT_MODES:
        raise ExportError(f"input gradients '{value}': choose from {', '.join(INPUT_GRADIENT_MODES)}")
    return value


def _input_gradients(builder: GraphBuilder, graph: ir.Graph, facts: TensorFacts, image: ir.Value,
                     logits: ir.Value, seed: ir.Value, mode: str) -> dict[str, ir.Value]:
    """``input_gradients`` = ∂S/∂input (``mode`` "plain" or "both") and ``guided_gradients``
    (Guided Backpropagation; "guided" or "both"), each a reverse pass over the whole network, in
    the image input's layout. Each pass costs about one forward pass: onnxruntime runs every node
    of a graph whatever outputs are fetched, so a graph for one kind of map carries only its pass."""
    if not facts.is_float(image.name):
        raise ExportError(f"input gradients need a float image input; '{image.name}' is {facts.dtypes[image.name]}")
    path = find_path(graph, facts, image, logits)
    grads = {}
    if mode in ("plain", "both"):
        grads["input_gradients"] = differentiate(builder, path, image, logits, seed)
    if mode in ("guided", "both"):
        grads["guided_gradients"] = differentiate(builder, path, image, logits, seed, overrides=GUIDED_RULES)
    if facts.dtypes[image.name] != np.float32:  # a gradient has its tensor's dtype
        grads = {name: builder.op("Cast", g, to=ir.DataType.FLOAT) for name, g in grads.items()}
    return grads


def build_explanation_graph(spec: GraphSpec, facts: TensorFacts) -> onnx.ModelProto:
    """The explanation graph of ``spec`` (see the module docstring)."""
    opset = max(17, next((o.version for o in spec.model.opset_import if o.domain in ("", "ai.onnx")), 17))
    model = ir.from_proto(spec.model)
    graph = model.graph
    values = values_by_name(graph)
    logits, target = values[spec.logits], resolve_identity(values[spec.target])
    builder = GraphBuilder(graph, facts, opset)
    image = values[spec.image_input]
    declared = image.shape[0] if image.shape is not None and len(image.shape) else None
    symbol = declared.value if isinstance(declared, ir.SymbolicDim) and declared.value else "N"
    batch: str | int = symbol if facts.batch_dynamic else facts.shape(image.name)[0]
    if not facts.batch_dynamic:  # the source bakes its batch size into its shape arithmetic
        image.shape = ir.Shape(list(facts.shape(image.name)))

    target_shape = facts.shape(target.name)
    if len(target_shape) != 4:
        raise ExportError(
            f"target '{spec.target_layer}' has shape {list(target_shape)}; a 4-D feature map is needed"
        )
    num_classes = facts.shape(logits.name)[1]

    class_index = ir.Value(name="class_index", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([batch]))
    graph.inputs.append(class_index)
    top1 = builder.op("ArgMax", logits, axis=1, keepdims=0)
    chosen = builder.op("Where", builder.op("Less", class_index, builder.ints([0])), top1, class_index)
    seed = builder.op("OneHot", chosen, builder.ints([num_classes]),
                      builder.const(np.array([0, 1], builder.dtype(logits))), axis=-1)

    path = find_path(graph, facts, target, logits)
    gradient = differentiate(builder, path, target, logits, seed)

    layout = feature_layout(target, facts)
    activations: ir.Value = target
    if builder.dtype(target) != np.float32:  # a gradient has its tensor's dtype
        activations = builder.op("Cast", target, to=ir.DataType.FLOAT)
        gradient = builder.op("Cast", gradient, to=ir.DataType.FLOAT)
    if layout == "NHWC":
        activations = builder.op("Transpose", activations, perm=[0, 3, 1, 2])
        gradient = builder.op("Transpose", gradient, perm=[0, 3, 1, 2])
        target_shape = (target_shape[0], target_shape[3], target_shape[1], target_shape[2])
    gradient_pow2 = builder.op("Mul", gradient, gradient)
    gradient_pow3 = builder.op("Mul", gradient_pow2, gradient)

    has_head = add_head_path(builder, graph, facts, image, target, logits, layout)
    mode = input_gradient_mode(spec.input_gradients)
    input_outputs = _input_gradients(builder, graph, facts, image, logits, seed, mode) if mode else {}

    # after all look-ups of probed facts by name; the source's logits may keep the name "logits"
    _free_reserved_names(values, keep={image} | ({logits} if logits.name == "logits" else set()))
    graph.outputs.clear()
    fmap = [batch, *target_shape[1:]]
    _set_output(graph, builder, _as_float32(builder, logits), "logits", ir.DataType.FLOAT, [batch, num_classes])
    _set_output(graph, builder, chosen, "target", ir.DataType.INT64, [batch])
    for value, name in ((activations, "activations"), (gradient, "gradients"),
                        (gradient_pow2, "gradients_pow2"), (gradient_pow3, "gradients_pow3")):
        _set_output(graph, builder, value, name, ir.DataType.FLOAT, fmap)
    if has_head:
        _set_output(graph, builder, has_head, "head_logits", ir.DataType.FLOAT, ["M", num_classes])
    gated = [_set_output(graph, builder, value, name, ir.DataType.FLOAT, [batch, *facts.shape(image.name)[1:]])
             for name, value in input_outputs.items()]

    for value in values.values():  # a former output declared without an element type
        if value.type is not None and value.dtype == ir.DataType.UNDEFINED and value not in graph.outputs:
            value.type = None
    ir_passes.RemoveUnusedNodesPass()(model)
    ir_passes.TopologicalSortPass()(model)
    switches = gate_outputs(graph, gated, facts.shape(image.name)[1:]) if gated else {}
    preprocess = spec.preprocess if isinstance(spec.preprocess, Preprocess) or not spec.preprocess \
        else Preprocess.from_json(spec.preprocess)
    metadata = GraphMetadata(
        source=spec.source, target_layer=spec.target_layer, image_input=spec.image_input,
        preprocess=preprocess or None, labels=tuple(spec.labels) if spec.labels else None,
        head_piecewise_linear=is_piecewise_linear(path), head_input=HEAD_INPUT if has_head else None,
        input_gradients=mode if input_outputs else None, input_gradient_switches=switches,
    ).to_props()
    proto = ir.to_proto(model)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "onnxcam"
    return proto
