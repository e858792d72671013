"""``export``: any image classifier → the contract's explanation graph (``*.cam.onnx``)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import onnx

from onnxcam.exporter.autodiff import UnsupportedOperator
from onnxcam.exporter.bake_heatmap import bake_heatmap, check_method
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.explain_graph import GraphSpec, build_explanation_graph, input_gradient_mode
from onnxcam.exporter.onnx_source import (
    Classifier, choose_target, load_classifier, load_onnx, working_candidates,
)
from onnxcam.exporter.raw_input import raw_input as make_raw_input
from onnxcam.models.labels import load_labels
from onnxcam.models.preprocess import Preprocess

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18


def _is_onnx_path(source: str) -> bool:
    return source.lower().endswith(".onnx") or Path(source).is_file()


def _preprocess_overrides(base: Preprocess, mean, std, resize, layout, bgr) -> Preprocess:
    changes = {}
    if mean is not None:
        changes["mean"] = tuple(mean)
    if std is not None:
        changes["std"] = tuple(std)
    if resize is not None:
        changes["resize"] = resize or None
    if layout is not None:
        changes["layout"] = layout
    if bgr:
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
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if channels == 3 else ((0.0,), (1.0,))
    return Preprocess(layout="NHWC" if nhwc else "NCHW", size=(h, w), resize=None, mean=mean, std=std)


def _check(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ExportError(f"internal: the explanation graph fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
    return model


def _finish(model: onnx.ModelProto, heatmap: str | None, raw_input: bool) -> onnx.ModelProto:
    """The optional in-graph steps: a baked ``heatmap`` output, then the raw uint8 pixel input."""
    if heatmap is not None:
        model = bake_heatmap(model, heatmap)
    if raw_input:
        model = make_raw_input(model)
    return _check(model) if heatmap is not None or raw_input else model


def _build(spec: GraphSpec, classifier: Classifier) -> onnx.ModelProto:
    try:
        model = build_explanation_graph(spec, classifier.facts)
    except UnsupportedOperator as exc:
        working = working_candidates(classifier)
        hint = f"; target layers that would work: {', '.join(working)}" if working else ""
        raise ExportError(f"{exc}{hint}") from None
    return _check(model)


def export(
    source: str,
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
) -> onnx.ModelProto:
    """Export ``source`` (``torchvision:NAME``, ``timm:NAME``, ``package.module:callable``, a
    registry name or an ``.onnx`` file) into an explanation graph; write it to ``out`` if given.

    ``verify`` (torch sources) compares the graph with ``torch.autograd`` and raises on mismatch.
    ``input_gradients`` adds the outputs ``input_gradients`` (∂S/∂input; ``"plain"``),
    ``guided_gradients`` (Guided Backpropagation; ``"guided"``) or both (``"both"`` or ``True``);
    each is one more reverse pass over the whole network. ``heatmap`` (one of ``bake_heatmap.BAKEABLE_METHODS``) adds the
    output ``heatmap`` [N, H, W]: that CAM with the contract's post-processing, computed in the
    graph. ``raw_input`` makes the image input uint8 NHWC RGB pixels [N, H, W, 3] of the model's
    input size, normalised inside the graph (not with ``input_gradients``). ``scores`` says which
    output holds the class scores: an output (or tensor) name of an ONNX source, an entry of a
    ``ModelOutput`` / dict or an index of a tuple returned by a torch source; needed only when
    several outputs could be the scores.
    """
    if heatmap is not None:
        check_method(heatmap)
    input_gradients = input_gradient_mode(input_gradients) or False
    if raw_input and input_gradients:
        raise ExportError("--raw-input cannot be combined with --input-gradients "
                          "(input gradients are taken w.r.t. the normalised float input)")
    if out is not None and Path(out).exists() and not overwrite:
        raise ExportError(f"{out} exists; pass --overwrite to replace it")
    try:
        label_list = load_labels(labels) if isinstance(labels, (str, Path)) else (list(labels) if labels else None)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read labels: {exc}") from exc
    shape = tuple(int(s) for s in input_shape) if input_shape else None
    if _is_onnx_path(source):
        if verify:
            raise ExportError("--verify compares with torch.autograd and needs a PyTorch source")
        classifier = load_classifier(load_onnx(source), shape, scores)
        target = choose_target(classifier, target_layer)
        if target_layer is None:
            log.info("target layer: %s (the last spatial feature map before the scores)", target)
        preprocess = _preprocess_overrides(_onnx_preprocess(classifier), mean, std, resize, layout, bgr)
        spec = GraphSpec(classifier.model, classifier.image_input, classifier.logits, target,
                         Path(source).name, target, preprocess, label_list, input_gradients)
        model = _build(spec, classifier)
        log.info("class scores: %s %s", classifier.logits, list(classifier.facts.shape(classifier.logits)))
    else:
        model = _export_torch(source, target_layer, weights, shape, opset or DEFAULT_OPSET, label_list,
                              (mean, std, resize, layout, bgr), verify, input_gradients, scores)
    model = _finish(model, heatmap, raw_input)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(out))
        log.info("wrote %s", out)
    return model


def _export_torch(source, target_layer, weights, shape, opset, label_list, overrides, verify,
                  input_gradients, scores) -> onnx.ModelProto:
    try:
        from onnxcam.exporter.torch_export import LOGITS, TARGET, export_with_target
        from onnxcam.exporter.torch_loading import load_torch_source, resolve_target_module
    except ImportError as exc:
        raise ExportError(f"PyTorch sources need the export extra: pip install 'onnxcam[export]' ({exc})") from exc
    loaded = load_torch_source(source, weights)
    target = target_layer or loaded.default_target_layer
    if target_layer is None:
        log.info("target layer: %s (default for %s)", target, loaded.source)
    input_size = shape or loaded.input_size
    resolve_target_module(loaded.module, target, tuple(input_size))
    preprocess = loaded.preprocess
    if shape:
        preprocess = replace(preprocess, size=(shape[1], shape[2]))
    preprocess = _preprocess_overrides(preprocess, *overrides)
    proto, call = export_with_target(loaded.module, target, tuple(input_size), opset, scores)
    if call.describe(target):
        log.info(call.describe(target))
    classifier = load_classifier(proto, scores=LOGITS)
    spec = GraphSpec(classifier.model, classifier.image_input, classifier.logits, TARGET, loaded.source, target,
                     preprocess, label_list or loaded.labels, input_gradients)
    model = _build(spec, classifier)
    if verify:
        from onnxcam.exporter.verify import verify_against_torch

        report = verify_against_torch(model, loaded.module, target, call.index, tuple(input_size), scores=scores)
        log.info("verified against torch.autograd: %s", report)
    return model
