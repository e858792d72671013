"""The explanation graph's public contract (docs/contract.md) as Python names.

One place for what the exporter writes and every reader relies on: the graph's input and output
names, the ``onnxcam.*`` metadata keys, the format version, and :class:`GraphMetadata`, the typed
and validated form of the metadata (``to_props`` / ``from_props``). Needs neither torch nor onnx.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from onnxcam.models.preprocess import Preprocess

FORMAT_VERSION = "1"

# -- inputs ------------------------------------------------------------------------------------
CLASS_INPUT = "class_index"           #: int64 [N], the class to explain; negative = top-1
HEAD_INPUT = "head_activations"       #: float [M, K, h, w], the head alone (Ablation-CAM)
HEAD_IMAGE_INDEX = "head_image_index"  #: int64 [M], the image each head row belongs to

# -- outputs -----------------------------------------------------------------------------------
LOGITS = "logits"
TARGET = "target"
ACTIVATIONS = "activations"
GRADIENTS = "gradients"
GRADIENTS_POW2 = "gradients_pow2"
GRADIENTS_POW3 = "gradients_pow3"
HEAD_OUTPUT = "head_logits"
INPUT_GRADIENTS = "input_gradients"
GUIDED_GRADIENTS = "guided_gradients"
HEATMAP = "heatmap"

#: what every explanation graph outputs
REQUIRED_OUTPUTS = (LOGITS, TARGET, ACTIVATIONS, GRADIENTS, GRADIENTS_POW2, GRADIENTS_POW3)
#: the reverse passes to the input that ``--input-gradients`` adds
INPUT_GRADIENT_OUTPUTS = (INPUT_GRADIENTS, GUIDED_GRADIENTS)
#: which of them each ``--input-gradients`` mode carries
INPUT_GRADIENT_MODES = {"plain": (INPUT_GRADIENTS,), "guided": (GUIDED_GRADIENTS,),
                        "both": (INPUT_GRADIENTS, GUIDED_GRADIENTS)}
#: names the explanation graph gives its own inputs and outputs (source tensors are renamed)
RESERVED_NAMES = frozenset({*REQUIRED_OUTPUTS, CLASS_INPUT, HEAD_INPUT, HEAD_IMAGE_INDEX, HEAD_OUTPUT, *INPUT_GRADIENT_OUTPUTS,
                            HEATMAP})


def switch_name(output: str) -> str:
    """The bool input that turns the reverse pass of an input-gradient output on or off."""
    return f"{output}_enabled"


# -- metadata keys -----------------------------------------------------------------------------
class Key:
    """The ``metadata_props`` keys (all values are strings)."""

    FORMAT = "onnxcam.format"
    SOURCE = "onnxcam.source"
    TARGET_LAYER = "onnxcam.target_layer"
    IMAGE_INPUT = "onnxcam.image_input"
    PREPROCESS = "onnxcam.preprocess"
    LABELS = "onnxcam.labels"
    HEAD_PIECEWISE_LINEAR = "onnxcam.head_piecewise_linear"
    HEAD_INPUT = "onnxcam.head_input"
    HEAD_IMAGE_INDEX = "onnxcam.head_image_index"
    TARGET_LAYOUT = "onnxcam.target_layout"
    INPUT_GRADIENTS = "onnxcam.input_gradients"
    INPUT_GRADIENT_SWITCHES = "onnxcam.input_gradient_switches"
    RAW_INPUT = "onnxcam.raw_input"
    HEATMAP_METHOD = "onnxcam.heatmap_method"
    STRAIGHT_THROUGH = "onnxcam.gradients_straight_through"


class MetadataError(ValueError):
    """Metadata that is missing, unreadable or inconsistent (one line naming the key)."""


def _flag(props: Mapping[str, str], key: str) -> bool | None:
    value = props.get(key)
    if value is None:
        return None
    if value.lower() not in ("true", "false"):
        raise MetadataError(f"{key} must be 'true' or 'false', not {value!r}")
    return value.lower() == "true"


def _json(props: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(props[key])
    except (ValueError, RecursionError):
        raise MetadataError(f"{key} is not valid JSON") from None


def _labels(props: Mapping[str, str]) -> tuple[str, ...] | None:
    if Key.LABELS not in props:
        return None
    labels = _json(props, Key.LABELS)
    if not isinstance(labels, list) or not all(isinstance(n, str) for n in labels):
        raise MetadataError(f"{Key.LABELS} must be a JSON list of class names")
    return tuple(labels) or None


def _switches(props: Mapping[str, str]) -> dict[str, str]:
    if Key.INPUT_GRADIENT_SWITCHES not in props:
        return {}
    switches = _json(props, Key.INPUT_GRADIENT_SWITCHES)
    if not isinstance(switches, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in switches.items()):
        raise MetadataError(f"{Key.INPUT_GRADIENT_SWITCHES} must map output names to input names")
    return dict(switches)


TARGET_LAYOUTS = ("NCHW", "NHWC", "tokens")


@dataclass(frozen=True)
class TargetLayout:
    """How the target tensor is laid out in the source model (``activations`` are always NCHW).

    ``layout``: "NCHW", "NHWC" (transposed) or "tokens" [N, T, D]: ``prefix`` tokens (class,
    distillation, register) then a row-major ``grid`` (h, w) of patches, T = prefix + h·w."""

    layout: str = "NCHW"
    prefix: int = 0
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.layout not in TARGET_LAYOUTS:
            raise MetadataError(f"{Key.TARGET_LAYOUT}: layout must be one of {', '.join(TARGET_LAYOUTS)}, "
                                f"not {self.layout!r}")
        tokens = self.layout == "tokens"
        grid_ok = self.grid is not None and len(self.grid) == 2 and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in self.grid)
        if tokens != grid_ok or (self.grid is not None and not tokens):
            raise MetadataError(f"{Key.TARGET_LAYOUT}: a grid [h, w] of positive integers goes with tokens only")
        if not isinstance(self.prefix, int) or isinstance(self.prefix, bool) or self.prefix < 0 \
                or (self.prefix and not tokens):
            raise MetadataError(f"{Key.TARGET_LAYOUT}: prefix must be a count ≥ 0 of tokens")

    def to_nchw(self, target: np.ndarray) -> np.ndarray:
        """The target's values [N, K, h, w] as ``activations`` lays them out (prefix tokens dropped)."""
        if self.layout == "NCHW":
            return target
        if self.layout == "tokens":
            target = target[:, self.prefix:, :].reshape(len(target), *self.grid, target.shape[-1])
        return target.transpose(0, 3, 1, 2)

    def from_nchw(self, grid: np.ndarray, like: np.ndarray) -> np.ndarray:
        """``grid`` [N, K, h, w] back in the target's layout; tokens take their prefix from ``like``."""
        if self.layout == "NCHW":
            return grid
        channels_last = grid.transpose(0, 2, 3, 1)
        if self.layout == "NHWC":
            return channels_last
        patches = channels_last.reshape(len(grid), -1, grid.shape[1])
        return np.concatenate([like[:, :self.prefix, :].astype(grid.dtype), patches], axis=1)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"layout": self.layout}
        if self.layout == "tokens":
            body.update(prefix=self.prefix, grid=list(self.grid))
        return body

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> TargetLayout:
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):
            raise MetadataError(f"{Key.TARGET_LAYOUT} is not valid JSON") from None
        if not isinstance(body, dict) or set(body) - {"layout", "prefix", "grid"}:
            raise MetadataError(f"{Key.TARGET_LAYOUT} must be an object with layout, prefix, grid")
        grid = body.get("grid")
        return cls(body.get("layout", "NCHW"), body.get("prefix", 0),
                   tuple(grid) if isinstance(grid, list) else grid)


@dataclass(frozen=True)
class GraphMetadata:
    """The ``onnxcam.*`` metadata of one explanation graph, typed (see docs/contract.md §1).

    ``head_piecewise_linear`` says whether g², g³ are exact (None: not recorded);
    ``input_gradients`` is the ``--input-gradients`` mode (None: no input gradients);
    ``input_gradient_switches`` maps each input-gradient output to its switch input;
    ``heatmap_method`` is the CAM baked into the ``heatmap`` output (None: none);
    ``head_image_index`` names the head path's image-row input when it has one;
    ``target_layout`` is how the target is laid out in the source (NCHW when not recorded);
    ``straight_through``: the head quantizes, and its gradients follow the straight-through rule."""

    source: str = ""
    target_layer: str = ""
    image_input: str | None = None
    preprocess: Preprocess | None = None
    labels: tuple[str, ...] | None = None
    head_piecewise_linear: bool | None = None
    head_input: str | None = None
    head_image_index: str | None = None
    target_layout: TargetLayout = TargetLayout()
    input_gradients: str | None = None
    input_gradient_switches: dict[str, str] = field(default_factory=dict)
    raw_input: bool = False
    heatmap_method: str | None = None
    straight_through: bool = False
    format: str = FORMAT_VERSION

    def replace(self, **changes: Any) -> GraphMetadata:
        return replace(self, **changes)

    def to_props(self) -> dict[str, str]:
        """The metadata as ``metadata_props`` strings (keys whose value is unset are left out)."""
        props = {Key.FORMAT: self.format, Key.SOURCE: self.source, Key.TARGET_LAYER: self.target_layer}
        optional = {
            Key.IMAGE_INPUT: self.image_input,
            Key.PREPROCESS: None if self.preprocess is None else self.preprocess.to_json(),
            Key.HEAD_PIECEWISE_LINEAR: None if self.head_piecewise_linear is None
            else str(self.head_piecewise_linear).lower(),
            Key.LABELS: None if not self.labels else json.dumps(list(self.labels)),
            Key.HEAD_INPUT: self.head_input,
            Key.HEAD_IMAGE_INDEX: self.head_image_index,
            Key.TARGET_LAYOUT: None if self.target_layout == TargetLayout() else self.target_layout.to_json(),
            Key.INPUT_GRADIENTS: self.input_gradients,
            Key.INPUT_GRADIENT_SWITCHES: json.dumps(self.input_gradient_switches) if self.input_gradient_switches
            else None,
            Key.RAW_INPUT: "true" if self.raw_input else None,
            Key.HEATMAP_METHOD: self.heatmap_method,
            Key.STRAIGHT_THROUGH: "true" if self.straight_through else None,
        }
        props.update({k: v for k, v in optional.items() if v is not None})
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> GraphMetadata:
        """Read and validate ``metadata_props``; unknown ``onnxcam.*`` keys are ignored.

        Raises:
            MetadataError: no ``onnxcam.format`` key, or a value that is not what the contract says.
        """
        if Key.FORMAT not in props:
            raise MetadataError(f"no {Key.FORMAT} metadata")
        try:
            preprocess = Preprocess.from_json(props[Key.PREPROCESS]) if Key.PREPROCESS in props else None
        except ValueError as exc:
            raise MetadataError(str(exc)) from None
        mode = props.get(Key.INPUT_GRADIENTS)
        if mode is not None and mode not in INPUT_GRADIENT_MODES:
            raise MetadataError(f"{Key.INPUT_GRADIENTS} must be one of {', '.join(INPUT_GRADIENT_MODES)}, "
                                f"not {mode!r}")
        return cls(
            source=props.get(Key.SOURCE, ""), target_layer=props.get(Key.TARGET_LAYER, ""),
            image_input=props.get(Key.IMAGE_INPUT) or None, preprocess=preprocess, labels=_labels(props),
            head_piecewise_linear=_flag(props, Key.HEAD_PIECEWISE_LINEAR), head_input=props.get(Key.HEAD_INPUT) or None,
            head_image_index=props.get(Key.HEAD_IMAGE_INDEX) or None,
            target_layout=TargetLayout.from_json(props[Key.TARGET_LAYOUT]) if Key.TARGET_LAYOUT in props
            else TargetLayout(),
            input_gradients=mode, input_gradient_switches=_switches(props),
            raw_input=bool(_flag(props, Key.RAW_INPUT)), heatmap_method=props.get(Key.HEATMAP_METHOD) or None,
            straight_through=bool(_flag(props, Key.STRAIGHT_THROUGH)), format=props[Key.FORMAT])
