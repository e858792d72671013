"""``export``: any image classifier → the contract's explanation graph (``*.cam.onnx``).

A torch source is exported by ``torch.onnx`` straight into an ``onnx_ir`` model; an ONNX file is
read into one. From there the passes of ``exporter.pipeline`` rewrite that one model in place,
and it is checked and serialised once.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import onnx_ir as ir
from onnxcam.exporter.autodiff import UnsupportedOperator
from onnxcam.exporter.bake_heatmap import check_method
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.explain_graph import GraphSpec, input_gradient_mode
from onnxcam.exporter.onnx_source import (
    Classifier,
    choose_target,
    load_classifier,
    load_onnx,
    working_candidates,
)
from onnxcam.exporter.pipeline import apply_passes, checked_proto, explanation_passes
from onnxcam.exporter.precision import check_precision, half_precision, is_float32
from onnxcam.models.errors import param
from onnxcam.models.files import OutputError, check_target, write_output
from onnxcam.models.labels import load_labels
from onnxcam.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18


@dataclass
class _Prepared:
    """A loaded classifier, what to build from it, and how to check the result against torch."""

    classifier: Classifier
    spec: GraphSpec
    verify: Callable[[onnx.ModelProto], object] | None = None
    notes: tuple[str, ...] = ()   # logged once the graph is built
    torch_source: bool = False    # errors name modules, not exported tensors


def _is_onnx_path(source: object) -> bool:
    return isinstance(source, (str, Path)) and (str(source).lower().endswith(".onnx") or Path(source).is_file())


def _preprocess_overrides(base: Preprocess, overrides: dict) -> Preprocess:
    changes = {k: tuple(v) if k in ("mean", "std") else v for k, v in overrides.items() if v is not None}
    if "resize" in changes:
        changes["resize"] = changes["resize"] or None
    if changes.pop("bgr", False):
        changes["color"] = "BGR"
    try:
        return replace(base, **changes) if changes else base
    except ValueError as exc:
        raise ExportError(f"bad preprocessing option: {exc}") from exc


def _onnx_preprocess(classifier: Classifier) -> Preprocess:
    """Defaults for a bare ONNX file: layout and size from its input, ImageNet statistics."""
    shape = classifier.facts.shape(classifier.image_input)
    nhwc = len(shape) == 4 and shape[-1] in (1, 3) and shape[1] not in (1, 3)
    channels, h, w = (shape[3], shape[1], shape[2]) if nhwc else (shape[1], shape[2], shape[3])
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.0,), (1.0,))
    return Preprocess(layout="NHWC" if nhwc else "NCHW", size=(h, w), resize=None, mean=mean, std=std)


def _check_output(out: str | Path, overwrite: bool) -> None:
    try:
        check_target(out, overwrite)
    except OutputError as exc:
        raise ExportError(*exc.args) from None


def _labels(labels: str | Path | Sequence[str] | None) -> list[str] | None:
    try:
        return load_labels(labels) if isinstance(labels, (str, Path)) else (list(labels) if labels else None)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read labels: {exc}") from exc


def export(
    source: str | Path | nn.Module,
    target_layer: str | None = None,
    *,
    weights: str | None = None,
    input_shape: Sequence[int] | None = None,
    opset: int | None = None,
    labels: str | Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resize: int | None = None,
    layout: str | None = None,
    bgr: bool = False,
    out: str | Path | None = None,
    overwrite: bool = False,
    verify: bool = False,
    input_gradients: bool | str = False,
    heatmap: str | None = None,
    raw_input: bool = False,
    scores: str | None = None,
    precision: str = "fp32",
) -> onnx.ModelProto:
    """Export ``source`` (``torchvision:NAME``, ``timm:NAME``, ``package.module:callable``, a
    registry name, an ``.onnx`` file or a ``torch.nn.Module``) into an explanation graph; write
    it to ``out`` if given.

    ``verify`` (torch sources) compares the graph with ``torch.autograd`` and raises on mismatch.
    ``input_gradients`` adds the outputs ``input_gradients`` (∂S/∂input; ``"plain"``),
    ``guided_gradients`` (Guided Backpropagation; ``"guided"``) or both (``"both"`` or ``True``);
    each is one more reverse pass over the whole network. ``heatmap`` (one of
    ``bake_heatmap.BAKEABLE_METHODS``) adds the output ``heatmap`` [N, H, W]: that CAM with the
    contract's post-processing, computed in the graph. ``raw_input`` makes the image input uint8
    NHWC RGB pixels [N, H, W, 3] of the model's input size, normalised inside the graph (not with
    ``input_gradients``). ``scores`` says which output holds the class scores: an output (or
    tensor) name of an ONNX source, an entry of a ``ModelOutput`` / dict or an index of a tuple
    returned by a torch source; needed only when several outputs could be the scores.
    ``precision="fp16"`` runs the classifier's forward pass in float16 (``exporter.precision``;
    for GPUs), the outputs stay float32.
    """
    if heatmap is not None:
        check_method(heatmap)
    mode = input_gradient_mode(input_gradients)
    if raw_input and mode:
        raise ExportError(f"{param('raw_input', True)} cannot be combined with {param('input_gradients', True)} "
                          "(input gradients are taken w.r.t. the normalised float input)")
    if out is not None:
        _check_output(out, overwrite)  # before the (slow) export
    shape = tuple(int(s) for s in input_shape) if input_shape else None
    options = {"labels": _labels(labels), "input_gradients": mode or False, "scores": scores,
               "precision": check_precision(precision),
               "preprocess": {"mean": mean, "std": std, "resize": resize, "layout": layout, "bgr": bgr}}
    if _is_onnx_path(source):
        if verify:
            raise ExportError(f"{param('verify', True)} compares with torch.autograd and needs a PyTorch source")
        prepared = _from_onnx(str(source), target_layer, shape, options)
    else:
        prepared = _from_torch(source, target_layer, weights, shape, opset or DEFAULT_OPSET, verify, options)
    model = _explain(prepared, heatmap, raw_input)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        try:
            write_output(out, model.SerializeToString(), overwrite)
        except OutputError as exc:
            raise ExportError(*exc.args) from None
        log.info("wrote %s", out)
    return model


def _explain(prepared: _Prepared, heatmap: str | None, raw_input: bool) -> onnx.ModelProto:
    """Run the pipeline on the classifier's model; verify against torch before the raw-pixel input
    (torch's reference takes the float input)."""
    classifier, spec = prepared.classifier, prepared.spec
    model = classifier.model
    try:
        apply_passes(model, explanation_passes(spec, classifier.facts, heatmap))
    except UnsupportedOperator as exc:
        raise ExportError(_unsupported_message(exc, classifier, prepared.torch_source)) from None
    if prepared.verify is not None and raw_input:
        prepared.verify(ir.to_proto(model))
    if raw_input:
        from onnxcam.exporter.raw_input import RawInputPass

        RawInputPass()(model)
    proto = checked_proto(model)
    if prepared.verify is not None and not raw_input:
        prepared.verify(proto)
    for note in prepared.notes:
        log.info(note)
    return proto


def _unsupported_message(exc: UnsupportedOperator, classifier: Classifier, torch_source: bool) -> str:
    """What has no rule and which targets would work: tensor names for an ONNX source, module
    names (the modules that make those tensors) for a torch source."""
    working = working_candidates(classifier, limit=8 if torch_source else 3, avoid=exc.node)
    if not torch_source:
        hint = f"; target layers that would work: {', '.join(working)}" if working else ""
        return f"{exc}{hint}"
    from onnxcam.exporter.torch_export import module_of

    producers = {o.name: node for node in classifier.model.graph for o in node.outputs}
    modules = list(dict.fromkeys(m for name in working if (m := module_of(producers[name]))))[:3]
    where = module_of(exc.node)
    node = f"operator {exc.node.op_type} in module '{where}'" if where else \
        f"operator {exc.node.op_type} (node '{exc.node.name}')"
    hint = f"; target layers that would work: {', '.join(modules)}" if modules else ""
    return f"{node} {exc.reason}{hint}"


def _from_onnx(source: str, target_layer: str | None, shape: tuple[int, ...] | None, options: dict) -> _Prepared:
    model = load_onnx(source)
    if options["precision"] == "fp16":
        if not is_float32(model):
            raise ExportError(f"--precision fp16 converts float32 classifiers; {source} is not one")
        model = half_precision(model)
    classifier = load_classifier(model, shape, options["scores"])
    target = choose_target(classifier, target_layer)
    if target_layer is None:
        log.info("target layer: %s (the last spatial feature map before the scores)", target)
    preprocess = _preprocess_overrides(_onnx_preprocess(classifier), options["preprocess"])
    spec = GraphSpec(classifier.model, classifier.image_input, classifier.logits, target,
                     Path(source).name, target, preprocess, options["labels"], options["input_gradients"])
    scores = f"class scores: {classifier.logits} {list(classifier.facts.shape(classifier.logits))}"
    return _Prepared(classifier, spec, notes=(scores,))


def _from_torch(source: str | nn.Module, target_layer: str | None, weights: str | None, shape: tuple[int, ...] | None,
                opset: int, verify: bool, options: dict) -> _Prepared:
    try:
        from onnxcam.exporter.torch_export import LOGITS, TARGET, export_with_target
        from onnxcam.exporter.torch_loading import (
            load_torch_source,
            resolve_target_module,
        )
    except ImportError as exc:
        raise ExportError(f"PyTorch sources need the export extra: pip install 'onnxcam[export]' ({exc})") from exc
    loaded = load_torch_source(source, weights)
    target = target_layer or loaded.default_target_layer
    if target_layer is None:
        log.info("target layer: %s (default for %s)", target, loaded.source)
    input_size = tuple(shape or loaded.input_size)
    resolve_target_module(loaded.module, target, input_size)
    preprocess = replace(loaded.preprocess, size=(shape[1], shape[2])) if shape else loaded.preprocess
    preprocess = _preprocess_overrides(preprocess, options["preprocess"])
    model, call = export_with_target(loaded.module, target, input_size, opset, options["scores"])
    if options["precision"] == "fp16":
        model = half_precision(model, internal_outputs=(TARGET,))
    if call.describe(target):
        log.info(call.describe(target))
    classifier = load_classifier(model, scores=LOGITS)
    spec = GraphSpec(classifier.model, classifier.image_input, classifier.logits, TARGET, loaded.source, target,
                     preprocess, options["labels"] or loaded.labels, options["input_gradients"])

    def check(proto: onnx.ModelProto) -> None:
        from onnxcam.exporter.verify import verify_against_torch

        report = verify_against_torch(proto, loaded.module, target, call.index, input_size, scores=options["scores"])
        log.info("verified against torch.autograd: %s", report)

    return _Prepared(classifier, spec, check if verify else None, torch_source=True)
