"""Pictures of pixel-level (input-space) attributions, numpy + Pillow only.

- Signed maps (saliency, SmoothGrad, Integrated Gradients): Σ_c attributions shown with a
  diverging colormap (blue < 0 < red, white at 0), symmetric around 0 and clipped at the
  ``percentile``-th percentile of abs(map): v = clip(m / q, −1, 1).
- Guided Backpropagation / Guided Grad-CAM: the deprocessed gradient image of the Grad-CAM
  paper (as pytorch-grad-cam's ``deprocess_image``): per image, a ← (a − mean a)/(std a + 1e-5)
  · 0.1 + 0.5, clipped to [0, 1], shown as RGB (channels flipped back for BGR models).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

# RdBu reversed (ColorBrewer, as matplotlib's "RdBu_r"): knots at t = 0, 0.25, 0.5, 0.75, 1
_DIVERGING_KNOTS = (0.0, 0.25, 0.5, 0.75, 1.0)
_DIVERGING_RGB = ((5, 48, 97), (67, 147, 195), (247, 247, 247), (214, 96, 77), (103, 0, 31))

def diverging_lut() -> np.ndarray:
    """uint8 [256, 3]: entry i is the colour of t = i/255 (t = 0.5 ↔ value 0, white)."""
    t = np.linspace(0.0, 1.0, 256)
    rgb = np.stack([np.interp(t, _DIVERGING_KNOTS, [c[k] for c in _DIVERGING_RGB]) for k in range(3)], axis=1)
    return np.rint(rgb).astype(np.uint8)


def _hwc(attributions: np.ndarray, layout: str) -> np.ndarray:
    a = np.asarray(attributions, np.float32)
    if a.ndim != 3:
        raise ValueError(f"attributions of one image must be 3-D, got shape {a.shape}")
    return np.moveaxis(a, 0, 2) if layout == "NCHW" else a


def signed_picture(attributions: np.ndarray, layout: str = "NCHW", percentile: float = 99.0) -> Image.Image:
    """Σ_c attributions as a diverging-colormap RGB image, clipped at the percentile of abs."""
    m = _hwc(attributions, layout).sum(axis=2)
    q = float(np.percentile(np.abs(m), percentile))
    v = np.clip(m / q, -1, 1) if q > 0 else np.zeros_like(m)
    idx = np.rint((v + 1) * 127.5).astype(np.intp)
    return Image.fromarray(diverging_lut()[idx], "RGB")


def deprocess_guided(attributions: np.ndarray, layout: str = "NCHW", color: str = "RGB") -> Image.Image:
    """The paper's guided image: (a − mean)/(std + 1e-5)·0.1 + 0.5, clipped, as 8-bit RGB."""
    a = _hwc(attributions, layout).astype(np.float64)
    a = (a - a.mean()) / (a.std() + 1e-5) * 0.1 + 0.5
    a = np.clip(a, 0, 1)
    if color == "BGR":
        a = a[..., ::-1]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return Image.fromarray(np.rint(a[..., :3] * 255).astype(np.uint8), "RGB")


def input_space_picture(method: str, attributions: np.ndarray, layout: str = "NCHW", color: str = "RGB",
                        percentile: float = 99.0) -> Image.Image:
    """The picture ``onnxcam explain`` writes for an input-space method (model input resolution):
    the deprocessed guided image or the signed map, as the method registry says."""
    from onnxcam.runtime.registry import get_method

    if get_method(method).picture == "guided":
        return deprocess_guided(attributions, layout, color)
    return signed_picture(attributions, layout, percentile)
