"""Reading and validating an explanation graph when it is loaded: its inputs and outputs against
the contract (docs/contract.md §1) and its ``onnxcam.*`` metadata (``GraphMetadata``).

Everything is checked here, once, before any image is touched: a tampered or inconsistent
``.cam.onnx`` is one :class:`ModelError` naming what is wrong.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxcam.models.contract import (CLASS_INPUT, HEAD_OUTPUT, HEATMAP, REQUIRED_OUTPUTS, GraphMetadata, Key,
                                     MetadataError)
from onnxcam.models.preprocess import Preprocess
from onnxcam.runtime.errors import ModelError

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(uint8)": np.uint8}


def _static(dim: object) -> int | None:
    return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else None


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output as onnxruntime reports it: ``type`` like ``tensor(float)``,
    ``shape`` with ints for static axes and str/None for dynamic ones."""

    name: str
    type: str
    shape: tuple

    @property
    def dtype(self) -> str:
        """The element type alone: ``float``, ``int64``, ..."""
        return self.type[len("tensor("):-1] if self.type.startswith("tensor(") else self.type


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know about one explanation graph."""

    path: str
    image_input: str
    image_shape: tuple  # ORT shape: ints for static dims, str/None for dynamic ones
    image_dtype: type
    preprocess: Preprocess | None
    labels: list[str] | None = field(repr=False)
    head_input: str | None
    target_layer: str
    source: str
    piecewise_linear: bool | None
    num_classes: int | None
    outputs: tuple[str, ...]
    raw_input: bool = False               # image input = uint8 NHWC RGB pixels (export --raw-input)
    heatmap_method: str | None = None     # the method baked into the ``heatmap`` output (--heatmap)
    # output → the bool input that turns its reverse pass to the input on/off (default on)
    input_gradient_switches: dict[str, str] = field(default_factory=dict)
    inputs: tuple[TensorInfo, ...] = field(default=(), repr=False)
    output_info: tuple[TensorInfo, ...] = field(default=(), repr=False)
    metadata: GraphMetadata = field(default_factory=GraphMetadata, repr=False)
    producer: str = ""
    head_image_index: str | None = None   # the head path reads the image rows of its activations

    @property
    def layout(self) -> str:
        """'NCHW' or 'NHWC' of the image input: NHWC for raw-pixel graphs, else from the preprocess
        metadata, else guessed from a 3/1-channel axis."""
        if self.raw_input:
            return "NHWC"
        if self.preprocess is not None:
            return self.preprocess.layout
        return "NHWC" if len(self.image_shape) == 4 and self.image_shape[-1] in (1, 3) \
            and self.image_shape[1] not in (1, 3) else "NCHW"

    @property
    def static_batch(self) -> int | None:
        """The image input's fixed batch size, or None when the batch axis is dynamic."""
        return _static(self.image_shape[0]) if self.image_shape else None

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(H, W) of the model input: preprocess ``size``, else the static input shape."""
        if self.preprocess is not None:
            return tuple(self.preprocess.size)
        hw = self.image_shape[2:4] if self.layout == "NCHW" else self.image_shape[1:3]
        return tuple(hw) if all(_static(d) for d in hw) else None


def not_an_explanation_graph(path: str, why: str) -> ModelError:
    stem = Path(path).name.split(".")[0] or "model"
    source = shlex.quote(path) if path.lower().endswith(".onnx") else "SOURCE"  # a plain ONNX classifier
    return ModelError(f"{path} is not an onnxcam explanation graph ({why}); make one with "
                      f"`onnxcam export {source} -o {stem}.cam.onnx`")


def _tensors(values) -> dict[str, TensorInfo]:
    return {v.name: TensorInfo(v.name, v.type, tuple(v.shape)) for v in values}


def _read_metadata(path: str, props: dict[str, str]) -> GraphMetadata:
    if Key.FORMAT not in props:
        raise not_an_explanation_graph(path, f"no {Key.FORMAT} metadata")
    if props[Key.FORMAT] != "1":
        raise ModelError(f"{path}: onnxcam graph format {props[Key.FORMAT]!r} is not supported by this runtime "
                         "(expects '1'); re-export it with this version's `onnxcam export`")
    try:
        return GraphMetadata.from_props(props)
    except MetadataError as exc:
        raise ModelError(f"{path}: bad metadata: {exc}") from None


def _image_input(path: str, meta: GraphMetadata, inputs: dict[str, TensorInfo], feedable: set[str]) -> TensorInfo:
    """The image input, checked against the preprocessing metadata."""
    others = {CLASS_INPUT, meta.head_input, meta.head_image_index, *meta.input_gradient_switches.values()}
    name = meta.image_input or next((n for n in inputs if n not in others), None)
    if name is None or name not in inputs or name in others:
        raise not_an_explanation_graph(path, f"image input {name!r} not found")
    image = inputs[name]
    if len(image.shape) != 4:
        raise ModelError(f"{path}: image input {name!r} has rank {len(image.shape)}; an image batch is 4-D")
    if meta.raw_input:
        if image.type != "tensor(uint8)":
            raise ModelError(f"{path}: {Key.RAW_INPUT} is set but the image input {name!r} is {image.type}, "
                             "not uint8; re-export it with `onnxcam export --raw-input`")
        if meta.preprocess is None:
            raise ModelError(f"{path}: a raw-input graph needs {Key.PREPROCESS} metadata (its input size)")
    elif image.type not in _DTYPES:
        raise ModelError(f"{path}: image input {name!r} is {image.type}; onnxcam feeds float images")
    pre = meta.preprocess
    if pre is not None:
        layout = "NHWC" if meta.raw_input else pre.layout
        dims = image.shape[1:]
        channels, hw = (dims[2], dims[:2]) if layout == "NHWC" else (dims[0], dims[1:])
        want_channels = 3 if meta.raw_input else pre.channels
        if _static(channels) not in (None, want_channels) or any(
                _static(d) not in (None, s) for d, s in zip(hw, pre.size)):
            raise ModelError(f"{path}: {Key.PREPROCESS} ({layout}, {want_channels} channels, size "
                             f"{list(pre.size)}) does not fit the image input {name!r} {list(image.shape)}")
    return image


def read_model_info(session: ort.InferenceSession, path: str) -> ModelInfo:
    """Validate the session's graph against the contract (§1) and collect its metadata."""
    outputs, inputs = _tensors(session.get_outputs()), _tensors(session.get_inputs())
    missing = [n for n in REQUIRED_OUTPUTS if n not in outputs]
    if missing:
        raise not_an_explanation_graph(path, "missing outputs: " + ", ".join(missing))
    if CLASS_INPUT not in inputs:
        raise not_an_explanation_graph(path, f"no '{CLASS_INPUT}' input")
    modelmeta = session.get_modelmeta()
    meta = _read_metadata(path, dict(modelmeta.custom_metadata_map))
    feedable = set(inputs) | {i.name for i in session.get_overridable_initializers()}
    bad_switch = next(((o, i) for o, i in meta.input_gradient_switches.items()
                       if o not in outputs or i not in feedable), None)
    if bad_switch:
        raise ModelError(f"{path}: {Key.INPUT_GRADIENT_SWITCHES} names {bad_switch[0]!r} → {bad_switch[1]!r}, "
                         "which the graph does not have")
    if meta.heatmap_method is not None and HEATMAP not in outputs:
        raise ModelError(f"{path}: {Key.HEATMAP_METHOD} is set but the graph has no '{HEATMAP}' output")
    image = _image_input(path, meta, inputs, feedable)
    logits_shape = outputs["logits"].shape
    num_classes = _static(logits_shape[1]) if len(logits_shape) == 2 else None
    if meta.labels is not None and num_classes is not None and len(meta.labels) != num_classes:
        raise ModelError(f"{path}: {Key.LABELS} has {len(meta.labels)} names for {num_classes} classes")
    head = meta.head_input if meta.head_input and HEAD_OUTPUT in outputs and meta.head_input in feedable else None
    if head and meta.head_image_index and meta.head_image_index not in feedable:
        raise ModelError(f"{path}: {Key.HEAD_IMAGE_INDEX} names {meta.head_image_index!r}, which the graph "
                         "cannot be fed")
    return ModelInfo(
        path=path, image_input=image.name, image_shape=image.shape,
        image_dtype=_DTYPES.get(image.type, np.float32), preprocess=meta.preprocess,
        labels=list(meta.labels) if meta.labels is not None else None,
        head_input=head, head_image_index=meta.head_image_index if head else None,
        target_layer=meta.target_layer, source=meta.source, piecewise_linear=meta.head_piecewise_linear,
        num_classes=num_classes, outputs=tuple(outputs), raw_input=meta.raw_input,
        heatmap_method=meta.heatmap_method, input_gradient_switches=dict(meta.input_gradient_switches),
        inputs=tuple(inputs.values()), output_info=tuple(outputs.values()), metadata=meta,
        producer=" ".join(p for p in (modelmeta.producer_name, modelmeta.version and str(modelmeta.version)) if p))
