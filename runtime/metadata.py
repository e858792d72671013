"""Reading and validating an explanation graph's interface and ``onnxcam.*`` metadata."""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import onnxruntime as ort

from onnxcam.runtime.errors import ModelError
from onnxcam.runtime.images import PreprocessSpec

REQUIRED_OUTPUTS = ("logits", "target", "activations", "gradients", "gradients_pow2", "gradients_pow3")
CLASS_INPUT = "class_index"
HEAD_OUTPUT = "head_logits"
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(uint8)": np.uint8}


def _static(dim: object) -> Optional[int]:
    return dim if isinstance(dim, int) and dim > 0 else None


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know about one explanation graph."""

    path: str
    image_input: str
    image_shape: tuple  # ORT shape: ints for static dims, str/None for dynamic ones
    image_dtype: type
    preprocess: Optional[PreprocessSpec]
    labels: Optional[list[str]] = field(repr=False)
    head_input: Optional[str]
    target_layer: str
    source: str
    piecewise_linear: Optional[bool]
    num_classes: Optional[int]
    outputs: tuple[str, ...]
    raw_input: bool = False               # image input = uint8 NHWC RGB pixels (export --raw-input)
    heatmap_method: Optional[str] = None  # the method baked into the ``heatmap`` output (--heatmap)
    # output → the bool input that turns its reverse pass to the input on/off (default on)
    input_gradient_switches: dict[str, str] = field(default_factory=dict)

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
    def static_batch(self) -> Optional[int]:
        """The image input's fixed batch size, or None when the batch axis is dynamic."""
        return _static(self.image_shape[0]) if self.image_shape else None

    @property
    def input_size(self) -> Optional[tuple[int, int]]:
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


def read_model_info(session: ort.InferenceSession, path: str) -> ModelInfo:
    """Validate the session's graph against the contract (§1) and collect its metadata."""
    outputs = {o.name: o for o in session.get_outputs()}
    inputs = {i.name: i for i in session.get_inputs()}
    meta = session.get_modelmeta().custom_metadata_map
    missing = [n for n in REQUIRED_OUTPUTS if n not in outputs]
    if missing:
        raise not_an_explanation_graph(path, "missing outputs: " + ", ".join(missing))
    if CLASS_INPUT not in inputs:
        raise not_an_explanation_graph(path, f"no '{CLASS_INPUT}' input")
    fmt = meta.get("onnxcam.format")
    if fmt is None:
        raise not_an_explanation_graph(path, "no onnxcam.format metadata")
    if fmt != "1":
        raise ModelError(f"{path}: onnxcam graph format {fmt!r} is not supported by this runtime "
                         "(expects '1'); re-export it with this version's `onnxcam export`")
    head = meta.get("onnxcam.head_input")
    image = meta.get("onnxcam.image_input") or next(
        (n for n in inputs if n not in (CLASS_INPUT, head)), None)
    if image not in inputs:
        raise not_an_explanation_graph(path, f"image input {image!r} not found")
    try:
        spec = PreprocessSpec.from_json(meta["onnxcam.preprocess"]) if "onnxcam.preprocess" in meta else None
        labels = json.loads(meta["onnxcam.labels"]) if "onnxcam.labels" in meta else None
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: unreadable onnxcam metadata ({exc})") from None
    flag = meta.get("onnxcam.head_piecewise_linear")
    feedable = set(inputs) | {i.name for i in session.get_overridable_initializers()}
    logits_shape = outputs["logits"].shape
    raw_input = meta.get("onnxcam.raw_input", "").lower() == "true"
    if raw_input and inputs[image].type != "tensor(uint8)":
        raise ModelError(f"{path}: onnxcam.raw_input is set but the image input {image!r} is {inputs[image].type}, "
                         "not uint8; re-export it with `onnxcam export --raw-input`")
    if raw_input and spec is None:
        raise ModelError(f"{path}: a raw-input graph needs onnxcam.preprocess metadata (its input size)")
    baked = meta.get("onnxcam.heatmap_method")
    try:
        switches = json.loads(meta.get("onnxcam.input_gradient_switches", "{}"))
        switches = {str(o): str(i) for o, i in switches.items() if o in outputs and i in feedable}
    except (ValueError, AttributeError):
        raise ModelError(f"{path}: unreadable onnxcam.input_gradient_switches metadata") from None
    return ModelInfo(
        path=path, image_input=image, image_shape=tuple(inputs[image].shape),
        image_dtype=_DTYPES.get(inputs[image].type, np.float32), preprocess=spec,
        labels=[str(s) for s in labels] if isinstance(labels, list) else None,
        head_input=head if head and HEAD_OUTPUT in outputs and head in feedable else None,
        target_layer=meta.get("onnxcam.target_layer", ""), source=meta.get("onnxcam.source", ""),
        piecewise_linear=None if flag is None else flag.lower() == "true",
        num_classes=_static(logits_shape[1]) if len(logits_shape) == 2 else None,
        outputs=tuple(outputs), raw_input=raw_input,
        heatmap_method=baked if baked and "heatmap" in outputs else None,
        input_gradient_switches=switches)
