"""Reading images robustly, preprocessing from the graph metadata, and mapping back.

Loading (``load_image``) always yields an 8-bit RGB PIL image:
EXIF orientation applied (``ImageOps.exif_transpose``); grey ('L', '1') replicated to RGB;
palette images expanded; anything with transparency ('RGBA', 'LA', 'PA', palette with
``transparency``) is alpha-composited on WHITE (a cut-out object on white is what a
classifier is used to; black would add a dark silhouette); CMYK/YCbCr/LAB/HSV converted by
Pillow; 16-bit ('I;16*') and 32-bit integer ('I') greys scaled by 255/65535; float ('F')
greys taken as 0..1 when max ≤ 1, else 0..255, then clipped.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from onnxcam.models.preprocess import Preprocess
from onnxcam.runtime.colormap import overlay  # noqa: F401  (re-exported: images → overlays)
from onnxcam.runtime.errors import ImageError
from onnxcam.runtime.resize import resize_bilinear


#: File name endings taken for images when a directory is listed (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pbm", ".pnm")

#: Refuse images above this many pixels (Pillow's own bomb threshold, ≈ 89.5 Mpx).
MAX_PIXELS = 89_478_485
#: Refuse images whose long side is more than this many times their short side: resizing the
#: short side to the model's size would make the long one explode.
MAX_ASPECT = 50


@dataclass(frozen=True)
class Geometry:
    """Where the model input sits in the original photo.

    original_size (H0, W0) → resized to resized_size (Hr, Wr) → the crop of size
    input_size (H, W) whose top-left corner is crop_offset (top, left) in the resized
    frame (negative when the crop is larger than the resized image: zero padding).
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_offset: tuple[int, int]
    input_size: tuple[int, int]


@dataclass(frozen=True)
class EncodedImage:
    """An image file's bytes (read from elsewhere, e.g. object storage) and the name to report."""

    data: bytes
    name: str


ImageLike = str | Path | Image.Image | EncodedImage


def _name(source: ImageLike) -> str:
    if isinstance(source, EncodedImage):
        return source.name
    return str(source) if not isinstance(source, Image.Image) else "<PIL image>"


def _open(path: Path, max_pixels: int) -> Image.Image:
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    try:
        empty = path.stat().st_size == 0
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if empty:
        raise ImageError(f"{path}: empty file")
    return _decode(path, str(path), max_pixels)


def _decode(file: Path | IO[bytes], name: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(file)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file (unrecognised format)") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: refused, too many pixels (decompression-bomb guard)") from None
    except Exception as exc:  # Pillow plugins raise many types on malformed headers  # noqa: BLE001
        raise ImageError(f"{name}: cannot read ({_reason(exc)})") from None
    _check_pixels(img, name, max_pixels)
    try:
        img.load()
    except Exception as exc:  # truncated data, bad compression stream, ...  # noqa: BLE001
        raise ImageError(f"{name}: corrupt or truncated image ({_reason(exc)})") from None
    return img


def _reason(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]


def _check_pixels(img: Image.Image, name: str, max_pixels: int) -> None:
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"{name}: refused, {w}x{h} = {w * h / 1e6:.1f} megapixels is above the "
                         f"limit of {max_pixels / 1e6:.1f} (decompression-bomb guard)")
    if w == 0 or h == 0:
        raise ImageError(f"{name}: image has no pixels ({w}x{h})")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageError(f"{name}: image is {w}x{h}; an aspect ratio above {MAX_ASPECT}:1 is not supported")


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = a * 255.0 if np.nanmax(a) <= 1.0 else a
        return Image.fromarray(np.clip(np.nan_to_num(np.rint(a)), 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa") or (mode in ("L", "RGB") and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(source: ImageLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read a file path, an :class:`EncodedImage` or a PIL image into an 8-bit RGB PIL image (see module docstring).

    Raises ImageError (one line naming the file) for missing, empty, non-image, corrupt or
    truncated files and for images above ``max_pixels`` (decompression-bomb guard).
    """
    if isinstance(source, Image.Image):
        _check_pixels(source, _name(source), max_pixels)
        img = source
    elif isinstance(source, EncodedImage):
        if not source.data:
            raise ImageError(f"{source.name}: empty file")
        img = _decode(io.BytesIO(source.data), source.name, max_pixels)
    elif not isinstance(source, (str, Path)):
        raise TypeError(f"expected an image path or a PIL image (or EncodedImage bytes), got {type(source).__name__}")
    else:
        img = _open(Path(source), max_pixels)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose the picture  # noqa: BLE001
        pass
    try:
        return _to_rgb(img)
    except (OSError, ValueError) as exc:
        raise ImageError(f"{_name(source)}: cannot convert mode {img.mode} to RGB ({exc})") from None


#: The preprocessing description (the ``onnxcam.preprocess`` metadata); one class, shared with the exporter.
PreprocessSpec = Preprocess


def _geometry(w0: int, h0: int, spec: Preprocess) -> Geometry:
    H, W = spec.size
    if spec.resize is None:
        return Geometry((h0, w0), (H, W), (0, 0), (H, W))
    short, long_ = (w0, h0) if w0 <= h0 else (h0, w0)  # torchvision Resize(int) rule
    new_long = int(spec.resize * long_ / short)
    wr, hr = (spec.resize, new_long) if w0 <= h0 else (new_long, spec.resize)

    def offset(have: int, want: int) -> int:  # torchvision CenterCrop (pads when too small)
        return int(round((have - want) / 2.0)) if have >= want else -((want - have) // 2)

    return Geometry((h0, w0), (hr, wr), (offset(hr, H), offset(wr, W)), (H, W))


def image_pixels(img: Image.Image, spec: Preprocess) -> tuple[np.ndarray, Geometry]:
    """One RGB image → (pixels uint8 [H, W, 3] RGB at the model input size, Geometry).

    Resize the short side to ``spec.resize`` (bilinear, torchvision's size rule), centre-crop
    ``spec.size`` (zero padding where the crop overhangs); with ``resize`` null, resize
    straight to ``spec.size``. (What a raw-input graph takes; ``preprocess_image`` normalises.)
    """
    geo = _geometry(img.width, img.height, spec)
    (hr, wr), (top, left), (H, W) = geo.resized_size, geo.crop_offset, geo.input_size
    if (hr, wr) != (img.height, img.width):
        img = img.resize((wr, hr), Image.BILINEAR)
    if (top, left, H, W) != (0, 0, hr, wr):
        img = img.crop((left, top, left + W, top + H))  # out-of-bounds areas become 0
    return np.asarray(img, dtype=np.uint8), geo


def normalise_pixels(pixels: np.ndarray, spec: Preprocess) -> np.ndarray:
    """uint8 RGB pixels [..., H, W, 3] → float32 x = (pixels·scale − mean)/std, channels in
    ``color`` order, in ``layout`` (a leading batch axis is kept)."""
    pix = np.asarray(pixels, dtype=np.float32)
    if spec.color == "BGR":
        pix = pix[..., ::-1]
    x = (pix * np.float32(spec.scale) - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.moveaxis(x, -1, -3).astype(np.float32) if spec.layout == "NCHW" else x.astype(np.float32)


def preprocess_image(img: Image.Image, spec: Preprocess) -> tuple[np.ndarray, Geometry]:
    """One RGB image → (x [C, H, W] or [H, W, C] float32, Geometry): ``image_pixels`` then
    x = (pixels·scale − mean)/std, channels in ``color`` order. A one-channel model gets the
    image's luma (Pillow's "L": L = 0.299 R + 0.587 G + 0.114 B)."""
    if spec.channels == 1:
        pix, geo = image_pixels(img.convert("L").convert("RGB"), spec)
        return normalise_pixels(pix[..., :1], spec), geo
    pix, geo = image_pixels(img, spec)
    return normalise_pixels(pix, spec), geo


def preprocess(images: list[ImageLike], spec: Preprocess) -> tuple[np.ndarray, list[Geometry]]:
    """Load (``load_image``) and preprocess a list of paths / PIL images into one batch."""
    pairs = [preprocess_image(load_image(im), spec) for im in images]
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]


def load_pixels(images: list[ImageLike], spec: Preprocess) -> tuple[np.ndarray, list[Geometry]]:
    """Load and resize / crop like ``preprocess`` but stop at the pixels: uint8 [N, H, W, 3] RGB
    (the input of a graph exported with ``--raw-input``)."""
    pairs = [image_pixels(load_image(im), spec) for im in images]
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]


def heatmap_to_original(heatmap: np.ndarray, geometry: Geometry, size: tuple[int, int] | None = None) -> np.ndarray:
    """Map a heatmap [H, W] at model input resolution onto the original photo → [H0, W0]
    (or onto the photo shown at ``size`` = (h, w), e.g. a reduced copy of a huge one).

    The heatmap is placed at ``crop_offset`` in a zero canvas of ``resized_size`` (areas the
    crop did not see get 0), which is then resized bilinearly (half-pixel centres) to
    ``original_size`` (or ``size``).
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != tuple(geometry.input_size):
        raise ValueError(f"heatmap shape {heatmap.shape} != model input size {geometry.input_size}")
    (hr, wr), (top, left), (H, W) = geometry.resized_size, geometry.crop_offset, geometry.input_size
    canvas = np.zeros((hr, wr), np.float32)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + H, hr), min(left + W, wr)
    canvas[y0:y1, x0:x1] = heatmap[y0 - top:y1 - top, x0 - left:x1 - left]
    return resize_bilinear(canvas[None], size or geometry.original_size)[0]
