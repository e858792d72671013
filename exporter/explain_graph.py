"""The explanation graph (docs/contract.md §1) as an in-place pass over the classifier's IR model.

:class:`ExplanationGraphPass` adds the input ``class_index`` (int64 [N], negative = top-1) and
the outputs ``logits``, ``target``, ``activations``, ``gradients``, ``gradients_pow2``,
``gradients_pow3`` (all NCHW), the head-only path for Ablation-CAM (``head_activations`` →
``head_logits``) when the target separates the input from the scores, the input-gradient
outputs when asked for, and the metadata. It expects :class:`MaxPoolIndicesPass` to have run on
the same paths. ``build_explanation_graph`` runs both on a copy and returns a proto.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnx_ir as ir
from onnxcam.exporter.autodiff import differentiate, find_path, is_piecewise_linear, is_straight_through
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.graph_values import (
    default_opset,
    resolve_identity,
    values_by_name,
)
from onnxcam.exporter.head import Head, add_head_path
from onnxcam.exporter.layout import grid_size, image_size, target_layout, to_nchw
from onnxcam.exporter.probe import TensorFacts
from onnxcam.exporter.rules.guided import GUIDED_RULES
from onnxcam.exporter.rules.qoperator import output_quantization
from onnxcam.models.contract import (
    ACTIVATIONS,
    CLASS_INPUT,
    GRADIENTS,
    GRADIENTS_POW2,
    GRADIENTS_POW3,
    GUIDED_GRADIENTS,
    HEAD_IMAGE_INDEX,
    HEAD_INPUT,
    HEAD_OUTPUT,
    INPUT_GRADIENT_MODES,
    LOGITS,
    RESERVED_NAMES,
    TARGET,
    GraphMetadata,
    TargetLayout,
)
from onnxcam.models.errors import param
from onnxcam.models.preprocess import Preprocess


@dataclass
class GraphSpec:
    """What the explanation graph is built from."""

    model: ir.Model                 # the classifier, opset ≥ 17, logits as a graph tensor
    image_input: str
    logits: str
    target: str
    source: str
    target_layer: str               # the user-facing name (module name or tensor name)
    preprocess: Preprocess | dict | None
    labels: list[str] | None = None
    input_gradients: bool | str = False   # ∂S/∂input outputs: False, "plain", "guided", "both" (= True)


def input_gradient_mode(value: bool | str | None) -> str | None:
    """The mode for ``value``: None (no input gradients), or a key of ``INPUT_GRADIENT_MODES``
    (``True`` means ``"both"``)."""
    if value is None or value is False:
        return None
    if value is True:
        return "both"
    if value not in INPUT_GRADIENT_MODES:
        raise ExportError(f"{param('input_gradients', value)}: choose from {', '.join(INPUT_GRADIENT_MODES)}")
    return value


def differentiated_sources(spec: GraphSpec) -> list[str]:
    """The tensors the graph differentiates the scores with respect to: the target, and the image
    input when input gradients are asked for."""
    return [spec.target] + ([spec.image_input] if input_gradient_mode(spec.input_gradients) else [])


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


def _as_float32(builder: GraphBuilder, value: ir.Value) -> ir.Value:
    """``value`` as float32 (fp16 models keep their outputs float32, as the contract says)."""
    if builder.dtype(value) == np.float32:
        return value
    return builder.op("Cast", value, to=ir.DataType.FLOAT)


def _free_reserved_names(values: dict[str, ir.Value], keep: set[ir.Value], facts: TensorFacts) -> None:
    """Rename source tensors that carry a name the explanation graph gives to its own inputs/outputs."""
    for name in RESERVED_NAMES & set(values):
        if values[name] not in keep:
            values[name].name = f"{name}__source"
            facts.rename(name, values[name].name)


class ExplanationGraphPass(ir.passes.InPlacePass):
    """The classifier of ``spec`` → the explanation graph (see the module docstring)."""

    def __init__(self, spec: GraphSpec, facts: TensorFacts) -> None:
        super().__init__()
        self.spec, self.facts = spec, facts

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        spec, facts, graph = self.spec, self.facts, model.graph
        values = values_by_name(graph)
        logits, target, image = values[spec.logits], resolve_identity(values[spec.target]), values[spec.image_input]
        builder = GraphBuilder(graph, facts, max(17, default_opset(model)))
        batch = self._batch(image)
        image_dims = [batch, *self._image_dims(image)]
        layout = self._layout(target, image)
        num_classes = facts.shape(logits.name)[1]

        class_index = ir.Value(name=CLASS_INPUT, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([batch]))
        graph.inputs.append(class_index)
        top1 = builder.op("ArgMax", logits, axis=1, keepdims=0)
        chosen = builder.op("Where", builder.op("Less", class_index, builder.ints([0])), top1, class_index)
        seed = builder.op("OneHot", chosen, builder.ints([num_classes]),
                          builder.const(np.array([0, 1], builder.dtype(logits))), axis=-1)

        path = find_path(graph, facts, target, logits)
        activations, gradient = self._feature_outputs(builder, target, layout, differentiate(
            builder, path, target, logits, seed))
        head = add_head_path(builder, graph, facts, image, target, logits, layout)
        mode = input_gradient_mode(spec.input_gradients)
        input_outputs = _input_gradients(builder, graph, facts, image, logits, seed, mode) if mode else {}

        # after all look-ups of probed facts by name; the source's logits may keep the name "logits"
        _free_reserved_names(values, {image} | ({logits} if logits.name == LOGITS and builder.dtype(logits) == np.float32
                                                else set()), facts)
        graph.outputs.clear()
        fmap = [batch, int(self._channels(target, layout)), *self._grid_dims(target, layout)]
        _set_output(graph, builder, _as_float32(builder, logits), LOGITS, ir.DataType.FLOAT, [batch, num_classes])
        _set_output(graph, builder, chosen, TARGET, ir.DataType.INT64, [batch])
        gradient_pow2 = builder.op("Mul", gradient, gradient)
        for value, name in ((activations, ACTIVATIONS), (gradient, GRADIENTS), (gradient_pow2, GRADIENTS_POW2),
                            (builder.op("Mul", gradient_pow2, gradient), GRADIENTS_POW3)):
            _set_output(graph, builder, value, name, ir.DataType.FLOAT, fmap)
        if head is not None:
            _set_output(graph, builder, head.logits, HEAD_OUTPUT, ir.DataType.FLOAT, ["M", num_classes])
        for name, value in input_outputs.items():
            _set_output(graph, builder, value, name, ir.DataType.FLOAT, image_dims)
        for value in values.values():  # a former output declared without an element type
            if value.type is not None and value.dtype == ir.DataType.UNDEFINED and value not in graph.outputs:
                value.type = None
        self._metadata(model, path, head, layout, mode)
        return ir.passes.PassResult(model, modified=True)

    def _batch(self, image: ir.Value) -> str | int:
        """The batch axis of every output: the image input's symbol, or its fixed size."""
        facts = self.facts
        declared = image.shape[0] if image.shape is not None and len(image.shape) else None
        if not facts.batch_dynamic:  # the source bakes its batch size into its shape arithmetic
            image.shape = ir.Shape(list(facts.shape(image.name)))
            return facts.shape(image.name)[0]
        return declared.value if isinstance(declared, ir.SymbolicDim) and declared.value else "N"

    def _image_dims(self, image: ir.Value) -> list[int | str]:
        """The image input's dims after the batch: a symbolic height and width kept when the graph
        runs at any size, else fixed at the probed size (the source bakes it into its arithmetic)."""
        probed, dims = self.facts.shape(image.name), list(image.shape)
        for axis in range(1, len(dims)):
            if isinstance(dims[axis], ir.SymbolicDim):
                dims[axis] = (dims[axis].value or f"image_{axis}") if self.facts.size_dynamic else probed[axis]
        image.shape = ir.Shape(dims)
        return dims[1:]

    def _grid_dims(self, target: ir.Value, layout: TargetLayout) -> list[int | str]:
        """(h, w) of the NCHW outputs: symbols ``h``/``w`` along the axes that follow the image size."""
        h, w = grid_size(self.facts.shape(target.name), layout)
        if layout.layout == "tokens":
            return [h, w]
        axes = (2, 3) if layout.layout == "NCHW" else (1, 2)
        follows = self.facts.axes_with_size(target.name)
        return ["h" if axes[0] in follows else h, "w" if axes[1] in follows else w]

    def _layout(self, target: ir.Value, image: ir.Value) -> TargetLayout:
        """The target's layout (NCHW, NHWC, or tokens of the image's patch grid), or an error."""
        pre = self.spec.preprocess
        declared = pre.layout if isinstance(pre, Preprocess) else (pre or {}).get("layout")
        hw = image_size(self.facts.shape(image.name), declared)
        layout = target_layout(target, self.facts, hw)
        if layout is None:
            raise ExportError(
                f"target '{self.spec.target_layer}' has shape {list(self.facts.shape(target.name))}; a feature map "
                f"[N, C, h, w] / [N, h, w, C] or tokens [N, prefix + h·w, D] of the image's patch grid is needed")
        if layout.layout == "tokens" and self.facts.axes_with_size(target.name):
            raise ExportError(f"target '{self.spec.target_layer}' is a token tensor whose grid follows the image "
                              f"size; export with {param('input_shape', 'C,H,W')}")
        return layout

    def _channels(self, target: ir.Value, layout: TargetLayout) -> int:
        shape = self.facts.shape(target.name)
        return shape[1] if layout.layout == "NCHW" else shape[-1]

    @staticmethod
    def _feature_outputs(builder: GraphBuilder, target: ir.Value, layout: TargetLayout,
                         gradient: ir.Value) -> tuple[ir.Value, ir.Value]:
        """(activations, gradients) as float32 NCHW (see ``layout.to_nchw``); a quantized target
        q (of an operator-oriented quantized model) as the real A = (q − z)·s, ∂S/∂A = (∂S/∂q)/s."""
        activations = target
        quantization = output_quantization(target) if np.issubdtype(builder.dtype(target), np.integer) else None
        if quantization is not None:
            scale, zero = quantization
            activations = builder.op("DequantizeLinear", target, scale, *([zero] if zero is not None else []))
            gradient = builder.op("Div", gradient, scale)
        elif builder.dtype(target) != np.float32:  # a gradient has its tensor's dtype
            activations = builder.op("Cast", target, to=ir.DataType.FLOAT)
            gradient = builder.op("Cast", gradient, to=ir.DataType.FLOAT)
        return to_nchw(builder, activations, layout), to_nchw(builder, gradient, layout)

    def _metadata(self, model: ir.Model, path, head: Head | None, layout: TargetLayout, mode: str | None) -> None:
        spec = self.spec
        preprocess = spec.preprocess if isinstance(spec.preprocess, Preprocess) or not spec.preprocess \
            else Preprocess.from_json(spec.preprocess)
        model.metadata_props.clear()
        model.metadata_props.update(GraphMetadata(
            source=spec.source, target_layer=spec.target_layer, image_input=spec.image_input,
            preprocess=preprocess or None, labels=tuple(spec.labels) if spec.labels else None,
            head_piecewise_linear=is_piecewise_linear(path), head_input=HEAD_INPUT if head else None,
            head_image_index=HEAD_IMAGE_INDEX if head and head.image_index else None, target_layout=layout,
            input_gradients=mode, straight_through=is_straight_through(path)).to_props())
        model.producer_name = "onnxcam"


def _input_gradients(builder: GraphBuilder, graph: ir.Graph, facts: TensorFacts, image: ir.Value,
                     logits: ir.Value, seed: ir.Value, mode: str) -> dict[str, ir.Value]:
    """``input_gradients`` = ∂S/∂input (``mode`` "plain" or "both") and ``guided_gradients``
    (Guided Backpropagation; "guided" or "both"), each a reverse pass over the whole network, in
    the image input's layout (gated afterwards, see ``gating``)."""
    if not facts.is_float(image.name):
        raise ExportError(f"input gradients need a float image input; '{image.name}' is {facts.dtypes[image.name]}")
    path = find_path(graph, facts, image, logits)
    grads = {}
    for name in INPUT_GRADIENT_MODES[mode]:
        overrides = GUIDED_RULES if name == GUIDED_GRADIENTS else None
        grads[name] = differentiate(builder, path, image, logits, seed, overrides=overrides)
    if facts.dtypes[image.name] != np.float32:  # a gradient has its tensor's dtype
        grads = {name: builder.op("Cast", g, to=ir.DataType.FLOAT) for name, g in grads.items()}
    return grads


def build_explanation_graph(spec: GraphSpec, facts: TensorFacts) -> onnx.ModelProto:
    """The explanation graph of ``spec`` as a proto (the classifier in ``spec.model`` is left as
    it was): the passes of ``exporter.pipeline.explanation_passes`` without the optional ones."""
    from onnxcam.exporter.pipeline import apply_passes, explanation_passes

    copy = replace(spec, model=spec.model.clone())
    apply_passes(copy.model, explanation_passes(copy, facts))
    return ir.to_proto(copy.model)
