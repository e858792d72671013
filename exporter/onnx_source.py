"""Read any ONNX classifier into one ``onnx_ir`` model and find what the explanation graph needs:
the image input, the pre-activation scores and the target feature map."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes
from onnx import version_converter
from onnxcam.exporter.autodiff import find_path, unsupported_nodes
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.graph_values import default_opset, values_by_name
from onnxcam.exporter.layout import image_size, is_spatial_map
from onnxcam.exporter.probe import TensorFacts, probe
from onnxcam.exporter.qdq_groups import Int8ActivationsToUint8Pass
from onnxcam.exporter.scores import binary_to_two_classes, find_logits
from onnxcam.models.errors import param

MIN_OPSET = 17


@dataclass
class Classifier:
    """A normalised classifier graph, the probe's facts about it, and its image input and scores."""

    model: ir.Model
    facts: TensorFacts
    image_input: str
    logits: str


def load_onnx(path: str | Path) -> ir.Model:
    """Load an ONNX file, with one clear error for a missing or non-ONNX file."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"no such file: {path}")
    try:
        model = ir.load(str(path))
    except Exception as exc:
        raise ExportError(f"{path} is not an ONNX model ({type(exc).__name__})") from exc
    if len(model.graph) == 0:
        raise ExportError(f"{path} is not an ONNX model (no graph nodes)")
    return model


def _convert_opset(model: ir.Model) -> ir.Model:
    """The model at opset MIN_OPSET (through onnx's version converter: old models only)."""
    try:
        return ir.from_proto(version_converter.convert_version(ir.to_proto(model), MIN_OPSET))
    except Exception as exc:
        raise ExportError(f"cannot convert the model from opset {default_opset(model)} to {MIN_OPSET}: "
                          f"{str(exc).splitlines()[0]}") from exc


def image_inputs(model: ir.Model) -> list[ir.Value]:
    inputs = [v for v in model.graph.inputs if v.name not in model.graph.initializers]
    if not inputs:
        raise ExportError("the model has no input")
    return inputs


def _fix_input_shape(model: ir.Model, input_shape: tuple[int, ...]) -> None:
    image = image_inputs(model)[0]
    dims = list(image.shape) if image.shape is not None else []
    if len(dims) != len(input_shape) + 1:
        raise ExportError(f"{param('input_shape', ','.join(map(str, input_shape)))} does not fit input "
                          f"'{image.name}' of rank {len(dims)}")
    image.shape = ir.Shape([dims[0], *input_shape])


def normalise(model: ir.Model, input_shape: tuple[int, ...] | None = None) -> ir.Model:
    """Inline local functions, convert to opset ≥ 17, drop weights listed as inputs, fix the
    image input's C,H,W if asked."""
    if model.functions:
        ir_passes.InlinePass()(model)
    if default_opset(model) < MIN_OPSET:
        model = _convert_opset(model)
    model.ir_version = max(model.ir_version or 0, 8)  # opset 17 needs IR 8
    ir_passes.RemoveInitializersFromInputsPass()(model)  # IR < 4 listed weights as inputs
    Int8ActivationsToUint8Pass()(model)
    if input_shape is not None:
        _fix_input_shape(model, input_shape)
    return model


def load_classifier(model: ir.Model | onnx.ModelProto, input_shape: tuple[int, ...] | None = None,
                    scores: str | None = None) -> Classifier:
    """Normalise ``model`` (in place when it is an ``ir.Model``), probe it and find its class
    scores (see ``exporter.scores``)."""
    model = normalise(ir.from_proto(model) if isinstance(model, onnx.ModelProto) else model, input_shape)
    inputs = image_inputs(model)
    if len(inputs) != 1:
        raise ExportError(f"expected one image input, found {[v.name for v in inputs]}")
    facts = probe(model)
    logits = binary_to_two_classes(model.graph, facts, find_logits(model.graph, facts, scores))
    return Classifier(model, facts, inputs[0].name, logits.name)


def spatial_candidates(classifier: Classifier) -> list[str]:
    """Feature maps and token tensors of the image grid on the path from the image to the
    scores, nearest to the scores first."""
    graph = classifier.model.graph
    values = values_by_name(graph)
    path = find_path(graph, classifier.facts, values[classifier.image_input], values[classifier.logits])
    order = [o for n in path.nodes for o in n.outputs if o in path.values]
    hw = image_size(classifier.facts.shape(classifier.image_input))
    return [v.name for v in reversed(order) if is_spatial_map(v, classifier.facts, hw)]


def working_candidates(classifier: Classifier, limit: int = 3, avoid: ir.Node | None = None) -> list[str]:
    """Spatial maps whose path to the scores only has operators with gradient rules (and not
    the node ``avoid``, whose rule failed)."""
    graph = classifier.model.graph
    values = values_by_name(graph)
    found = []
    for name in spatial_candidates(classifier):
        path = find_path(graph, classifier.facts, values[name], values[classifier.logits])
        if not unsupported_nodes(path) and avoid not in path.nodes:
            found.append(name)
        if len(found) == limit:
            break
    return found


def choose_target(classifier: Classifier, requested: str | None) -> str:
    """The requested tensor name (checked), or the last spatial feature map before the scores."""
    candidates = spatial_candidates(classifier)
    if requested is None:
        if not candidates:
            raise ExportError("no spatial feature map (a 4-D tensor with h·w > 1) leads to the scores")
        return candidates[0]
    names = {o.name for node in classifier.model.graph for o in node.outputs}
    if requested not in names:
        close = difflib.get_close_matches(requested, list(names), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ExportError(
            f"unknown target tensor '{requested}'{hint} Candidates: {', '.join(candidates[:6]) or 'none'}"
        )
    return requested
