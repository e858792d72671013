"""Image preprocessing description shared by the exporter, the metadata and the runtime.

A :class:`Preprocess` is the ``onnxcam.preprocess`` metadata entry of the contract (§1) as a
value: it serialises to exactly that JSON and can apply itself to a PIL image with numpy and
Pillow only (no torch), matching torchvision's ``Resize`` → ``CenterCrop`` → ``ToTensor`` →
``Normalize`` chain on PIL images.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["Preprocess", "IMAGENET", "imagenet"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_KEYS = ("layout", "color", "size", "resize", "scale", "mean", "std")


@dataclass(frozen=True)
class Preprocess:
    """How raw 0..255 pixels become the model's input tensor.

    Attributes:
        layout: ``"NCHW"`` or ``"NHWC"``: the model input's layout.
        color: ``"RGB"`` or ``"BGR"``: channel order the model expects.
        size: ``(H, W)`` of the model input.
        resize: resize the image's short side to this many pixels (keeping the aspect ratio),
            then centre-crop ``size``; ``None`` resizes the whole image straight to ``size``.
        scale: multiplier applied to 0..255 pixels (``1/255`` gives 0..1).
        mean: subtracted per channel after scaling, in the model's channel order.
        std: divisor per channel after subtracting ``mean``, in the model's channel order.
    """

    layout: str = "NCHW"
    color: str = "RGB"
    size: tuple[int, int] = (224, 224)
    resize: int | None = 256
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = _IMAGENET_MEAN
    std: tuple[float, ...] = _IMAGENET_STD

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be NCHW or NHWC, not {self.layout!r}")
        if self.color not in ("RGB", "BGR"):
            raise ValueError(f"color must be RGB or BGR, not {self.color!r}")
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be two positive integers [H, W], not {list(self.size)}")
        if self.resize is not None and int(self.resize) < 1:
            raise ValueError(f"resize must be a positive integer or None, not {self.resize!r}")
        if len(mean) != len(std) or len(mean) not in (1, 3):
            raise ValueError(f"mean and std need 1 or 3 values each, got {list(mean)} and {list(std)}")
        if any(s == 0.0 for s in std):
            raise ValueError(f"std must not contain zeros: {list(std)}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "resize", None if self.resize is None else int(self.resize))

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
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return {k: d[k] for k in _KEYS}

    def to_json(self) -> str:
        """Serialise to the contract's ``onnxcam.preprocess`` JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> "Preprocess":
        """Parse an ``onnxcam.preprocess`` JSON string (or an already-decoded dict).

        Raises:
            ValueError: not a JSON object, unknown or missing keys, or invalid values.
        """
        data = json.loads(text) if isinstance(text, str) else dict(text)
        if not isinstance(data, dict):
            raise ValueError(f"onnxcam.preprocess must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_KEYS))
        missing = [k for k in _KEYS if k not in data]
        if unknown or missing:
            raise ValueError(f"onnxcam.preprocess: unknown keys {unknown}, missing keys {missing}")
        return cls(**{k: data[k] for k in _KEYS})

    def apply(self, image: Any) -> np.ndarray:
        """Preprocess one PIL image into a float32 array ``[C, H, W]`` (or ``[H, W, C]`` for NHWC).

        Resizing uses Pillow's bilinear filter (as torchvision's ``Resize`` does on PIL images,
        short side to ``resize`` and long side truncated like torchvision), then a centre crop
        with torchvision's rounding, zero-padding if the image is smaller than ``size``.
        """
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
        image = image.convert("RGB" if self.channels == 3 else "L")
        h, w = self.size
        if self.resize is None:
            image = image.resize((w, h), Image.BILINEAR)
        else:
            iw, ih = image.size
            short, long = (iw, ih) if iw <= ih else (ih, iw)
            new_short, new_long = self.resize, int(self.resize * long / short)
            new_w, new_h = (new_short, new_long) if iw <= ih else (new_long, new_short)
            if (new_w, new_h) != (iw, ih):
                image = image.resize((new_w, new_h), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        pixels = _center_crop(pixels, h, w)
        if self.color == "BGR":
            pixels = pixels[:, :, ::-1]
        out = (pixels * np.float32(self.scale) - np.asarray(self.mean, np.float32)) / np.asarray(
            self.std, np.float32
        )
        if self.layout == "NCHW":
            out = out.transpose(2, 0, 1)
        return np.ascontiguousarray(out, dtype=np.float32)


def _center_crop(pixels: np.ndarray, h: int, w: int) -> np.ndarray:
    """Centre-crop an ``[H, W, C]`` array like torchvision's ``CenterCrop`` (zero pad if small)."""
    ih, iw = pixels.shape[:2]
    if ih < h or iw < w:
        pad_h, pad_w = max(h - ih, 0), max(w - iw, 0)
        pixels = np.pad(
            pixels,
            ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)),
        )
        ih, iw = pixels.shape[:2]
    top = int(round((ih - h) / 2.0))
    left = int(round((iw - w) / 2.0))
    return pixels[top : top + h, left : left + w]


def imagenet(size: int | Sequence[int] = 224, resize: int | None = 256) -> Preprocess:
    """Standard ImageNet preprocessing (RGB, NCHW, 0..1, ImageNet mean/std) at ``size``.

    Args:
        size: crop size, an int for a square crop or ``(H, W)``.
        resize: short side before the centre crop, or ``None`` to resize straight to ``size``.
    """
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    return Preprocess(size=hw, resize=resize)  # type: ignore[arg-type]


IMAGENET: Preprocess = imagenet(224, 256)
"""Resize 256 → centre crop 224, RGB, NCHW, scale 1/255, ImageNet mean and std."""
