"""How raw 0..255 pixels become a model's input tensor: the ``onnxcam.preprocess`` metadata entry
(docs/contract.md §1) as one validated value, shared by the exporter, the metadata and the runtime.

The runtime applies it (``onnxcam.runtime.images``: Pillow resize and centre crop as torchvision's
``Resize`` → ``CenterCrop`` on PIL images, then x = (pixels·scale − mean)/std). No torch, no numpy.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any
from collections.abc import Sequence

__all__ = ["IMAGENET", "IMAGENET_MEAN", "IMAGENET_STD", "MAX_SIDE", "Preprocess", "imagenet"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the largest model input side and resize target accepted (a bound on what an image may become)
MAX_SIDE = 8192
_KEYS = ("layout", "color", "size", "resize", "scale", "mean", "std")


def _side(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or not 1 <= int(value) <= MAX_SIDE:
        raise ValueError(f"{what} must be an integer from 1 to {MAX_SIDE}, not {value!r}")
    return int(value)


def _finite(values: Any, what: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{what} must be a list of numbers, not {values!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        raise ValueError(f"{what} must hold finite numbers, not {list(values)!r}")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class Preprocess:
    """x = (pixels·``scale`` − ``mean``)/``std`` after resizing, in ``layout`` and ``color`` order.

    Attributes:
        layout: ``"NCHW"`` or ``"NHWC"``: the model input's layout.
        color: ``"RGB"`` or ``"BGR"``: channel order the model expects.
        size: ``(H, W)`` of the model input.
        resize: resize the image's short side to this many pixels (keeping the aspect ratio),
            then centre-crop ``size``; ``None`` resizes the whole image straight to ``size``.
        scale: multiplier applied to 0..255 pixels (``1/255`` gives 0..1).
        mean: subtracted per channel after scaling, in the model's channel order.
        std: divisor per channel after subtracting ``mean``, in the model's channel order.

    The defaults are what the metadata means when a key is absent (no normalisation beyond
    0..1); ``IMAGENET`` is the usual torchvision preprocessing. Every field is validated:
    sides and ``resize`` 1..``MAX_SIDE``, finite ``scale`` ≠ 0, 1 or 3 finite ``mean`` / ``std``
    values, no zero in ``std``.
    """

    layout: str = "NCHW"
    color: str = "RGB"
    size: tuple[int, int] = (224, 224)
    resize: int | None = None
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be NCHW or NHWC, not {self.layout!r}")
        if self.color not in ("RGB", "BGR"):
            raise ValueError(f"color must be RGB or BGR, not {self.color!r}")
        if isinstance(self.size, (str, bytes)) or not isinstance(self.size, Sequence) or len(self.size) != 2:
            raise ValueError(f"size must be two positive integers [H, W], not {self.size!r}")
        size = (_side(self.size[0], "size"), _side(self.size[1], "size"))
        resize = None if self.resize is None else _side(self.resize, "resize")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) \
                or not math.isfinite(self.scale) or self.scale == 0:
            raise ValueError(f"scale must be a finite non-zero number, not {self.scale!r}")
        scale = float(self.scale)
        mean, std = _finite(self.mean, "mean"), _finite(self.std, "std")
        if len(mean) != len(std) or len(mean) not in (1, 3):
            raise ValueError(f"mean and std need 1 or 3 values each, got {list(mean)} and {list(std)}")
        if any(s == 0.0 for s in std):
            raise ValueError(f"std must not contain zeros: {list(std)}")
        for name, value in (("size", size), ("resize", resize), ("scale", scale), ("mean", mean), ("std", std)):
            object.__setattr__(self, name, value)

    @property
    def channels(self) -> int:
        """Number of input channels (the length of ``mean``)."""
        return len(self.mean)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one preprocessed image."""
        return (self.channels, self.size[0], self.size[1])

    def to_dict(self) -> dict[str, Any]:
        """The contract's ``onnxcam.preprocess`` object as plain JSON-able Python values."""
        d = asdict(self)
        return {k: list(d[k]) if isinstance(d[k], tuple) else d[k] for k in _KEYS}

    def to_json(self) -> str:
        """Serialise to the contract's ``onnxcam.preprocess`` JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> Preprocess:
        """Parse an ``onnxcam.preprocess`` JSON string (or decoded dict). ``size``, ``mean`` and
        ``std`` are required; absent other keys take the defaults above.

        Raises:
            ValueError: "bad onnxcam.preprocess metadata: ..." for anything else (not JSON, not an
            object, unknown keys, invalid values), in one line.
        """
        try:
            data = json.loads(text) if isinstance(text, str) else text
            if not isinstance(data, dict):
                raise ValueError(f"a JSON object is needed, not {type(data).__name__}")
            unknown = sorted(set(data) - set(_KEYS))
            missing = [k for k in ("size", "mean", "std") if k not in data]
            if unknown or missing:
                raise ValueError(f"unknown keys {unknown}, missing keys {missing}")
            return cls(**data)
        except (ValueError, TypeError, RecursionError) as exc:
            raise ValueError(f"bad onnxcam.preprocess metadata: {exc}".splitlines()[0]) from None


def imagenet(size: int | Sequence[int] = 224, resize: int | None = 256) -> Preprocess:
    """Standard ImageNet preprocessing (RGB, NCHW, 0..1, ImageNet mean/std) at ``size``.

    Args:
        size: crop size, an int for a square crop or ``(H, W)``.
        resize: short side before the centre crop, or ``None`` to resize straight to ``size``.
    """
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    return Preprocess(size=hw, resize=resize, mean=IMAGENET_MEAN, std=IMAGENET_STD)  # type: ignore[arg-type]


IMAGENET: Preprocess = imagenet(224, 256)
"""Resize 256 → centre crop 224, RGB, NCHW, scale 1/255, ImageNet mean and std."""
