"""Read any ONNX classifier and find what the explanation graph needs: the image input, the
pre-softmax scores and the target feature map."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx import version_converter

from onnxcam.exporter.autodiff import find_path, unsupported_nodes
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.explain_graph import resolve_identity, values_by_name
from onnxcam.exporter.layout import is_spatial_map
from onnxcam.exporter.probe import TensorFacts, probe

MIN_OPSET = 17


@dataclass
class Classifier:
    """A normalised classifier graph and the probe's facts about it."""

    model: onnx.ModelProto
    facts: TensorFacts
    image_input: str
    logits: str


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file, with one clear error for a missing or non-ONNX file."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"no such file: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise ExportError(f"{path} is not an ONNX model ({type(exc).__name__})") from exc
    if not model.graph.node:
        raise ExportError(f"{path} is not an ONNX model (no graph nodes)")
    return model


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def normalise(model: onnx.ModelProto, input_shape: tuple[int, ...] | None = None) -> onnx.ModelProto:
    """Inline local functions, convert to opset ≥ 17, fix the image input's C,H,W if asked."""
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    if _default_opset(model) < MIN_OPSET:
        try:
            model = version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:
            raise ExportError(
                f"cannot convert the model from opset {_default_opset(model)} to {MIN_OPSET}: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
    model.ir_version = max(model.ir_version, 8)  # opset 17 needs IR 8
    weights = {i.name for i in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in weights]  # IR < 4 listed weights as inputs
    del model.graph.input[:]
    model.graph.input.extend(kept)
    if input_shape is not None:
        image = image_inputs(model)[0]
        dims = image.type.tensor_type.shape.dim
        if len(dims) != len(input_shape) + 1:
            raise ExportError(f"--input-shape {input_shape} does not fit input '{image.name}' of rank {len(dims)}")
        for dim, size in zip(list(dims)[1:], input_shape):
            dim.Clear()
            dim.dim_value = size
    return model


def image_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs:
        raise ExportError("the model has no input")
    return inputs


#: activations between the class scores and an output, looked through to the scores
SCORE_ACTIVATIONS = ("Softmax", "LogSoftmax", "Sigmoid")
#: words in an output's name that say it holds the class scores
SCORE_WORDS = re.compile(r"logit|score|prob", re.IGNORECASE)


def _pre_activation(name: str, producers: dict[str, onnx.NodeProto]) -> str:
    """The tensor behind output ``name``: Identity nodes and one final Softmax / LogSoftmax /
    Sigmoid followed back to their input (the pre-activation scores)."""
    while name in producers and producers[name].op_type in ("Identity", *SCORE_ACTIVATIONS):
        node = producers[name]
        name = node.input[0]
        if node.op_type != "Identity":
            break
    return name


def _is_score_shape(name: str, facts: TensorFacts) -> bool:
    shape = facts.shapes.get(name)
    return shape is not None and len(shape) == 2 and shape[1] >= 2 and facts.is_float(name)


def _describe_outputs(names: list[str], facts: TensorFacts) -> str:
    return ", ".join(f"{n} {list(facts.shapes.get(n, ()))}" for n in names)


def find_logits(model: onnx.ModelProto, facts: TensorFacts, scores: str | None = None) -> str:
    """The pre-softmax class scores ``[N, C]``: the tensor ``scores`` names (a graph output or any
    tensor), else the one ``[N, C]`` float output. A Softmax / LogSoftmax / Sigmoid producing it
    is looked through to its input. Several ``[N, C]`` outputs are accepted only when they come
    from the same scores, or when exactly one of them feeds no node and has a name that says
    logits / scores / probs; otherwise the choice is the caller's (``scores``), never a guess."""
    producers = {out: node for node in model.graph.node for out in node.output}
    outputs = [o.name for o in model.graph.output]
    if scores is not None:
        known = set(producers) | set(outputs) | {i.name for i in model.graph.input}
        if scores not in known:
            close = difflib.get_close_matches(scores, [o for o in outputs if o in known], n=3)
            raise ExportError(f"scores {scores!r}: no such output or tensor; the outputs are "
                              f"{_describe_outputs(outputs, facts)}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        logits = _pre_activation(scores, producers)
        if not _is_score_shape(logits, facts):
            raise ExportError(f"scores {scores!r} has shape {list(facts.shapes.get(logits, ()))}; class scores are [N, C]")
        return logits
    candidates = [o for o in outputs if _is_score_shape(o, facts)]
    if not candidates:
        raise ExportError(f"the model has no [N, C] score output (outputs: {_describe_outputs(outputs, facts)}); "
                          "is it a classifier?")
    behind = {o: _pre_activation(o, producers) for o in candidates}
    if len(set(behind.values())) > 1:
        consumed = {i for node in model.graph.node for i in node.input}
        named = {behind[o] for o in candidates if SCORE_WORDS.search(o) and o not in consumed}
        if len(named) != 1:
            raise ExportError(f"the model has several [N, C] outputs ({_describe_outputs(candidates, facts)}); "
                              "say which holds the class scores with --scores OUTPUT")
        return named.pop()
    return behind[candidates[0]]


def load_classifier(model: onnx.ModelProto, input_shape: tuple[int, ...] | None = None,
                    scores: str | None = None) -> Classifier:
    """Normalise ``model``, probe it and find its class scores (see :func:`find_logits`)."""
    model = normalise(model, input_shape)
    inputs = image_inputs(model)
    if len(inputs) != 1:
        raise ExportError(f"expected one image input, found {[i.name for i in inputs]}")
    facts = probe(model)
    return Classifier(model, facts, inputs[0].name, find_logits(model, facts, scores))


def spatial_candidates(classifier: Classifier) -> list[str]:
    """Spatial feature maps on the path from the image to the scores, nearest to the scores first."""
    graph = ir.from_proto(classifier.model).graph
    values = values_by_name(graph)
    path = find_path(graph, classifier.facts, values[classifier.image_input], values[classifier.logits])
    order = [o for n in path.nodes for o in n.outputs if o in path.values]
    names = [v.name for v in order if is_spatial_map(v, classifier.facts)]
    return list(reversed(names))


def working_candidates(classifier: Classifier, limit: int = 3) -> list[str]:
    """Spatial maps whose path to the scores only has operators with gradient rules."""
    graph = ir.from_proto(classifier.model).graph
    values = values_by_name(graph)
    found = []
    for name in spatial_candidates(classifier):
        path = find_path(graph, classifier.facts, values[name], values[classifier.logits])
        if not unsupported_nodes(path):
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
    names = {o for n in classifier.model.graph.node for o in n.output}
    if requested not in names:
        close = difflib.get_close_matches(requested, list(names), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ExportError(
            f"unknown target tensor '{requested}'{hint} Candidates: {', '.join(candidates[:6]) or 'none'}"
        )
    return requested


def target_value_name(classifier: Classifier, name: str) -> str:
    """The tensor behind ``name`` once Identity nodes are followed back."""
    graph = ir.from_proto(classifier.model).graph
    return resolve_identity(values_by_name(graph)[name]).name
