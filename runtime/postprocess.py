"""The contract's default post-processing, step for step as pytorch-grad-cam 1.5.7.

pytorch-grad-cam (``BaseCAM.compute_cam_per_layer`` then ``aggregate_multi_layers``) does,
for one target layer::

    cam = max(cam, 0)                              # ReLU of the raw map
    cam = scale_cam_image(cam, (W, H))             # min-max, then cv2.resize INTER_LINEAR
    cam = max(cam, 0); cam = mean over 1 layer     # ReLU (identity after min-max)
    cam = scale_cam_image(cam)                     # min-max again at input resolution

with ``scale_cam_image``'s min-max being  x ← x − min(x);  x ← x / (1e-7 + max(x)),
per image, in float32.
"""
from __future__ import annotations

import numpy as np

from onnxcam.runtime.resize import resize_bilinear

EPS = 1e-7


def minmax_per_image(maps: np.ndarray) -> np.ndarray:
    """Per-image min-max of ``maps`` [N, h, w]: x ← x − min x, then x ← x / (1e-7 + max x)."""
    maps = np.asarray(maps, dtype=np.float32)
    shifted = maps - maps.min(axis=(-2, -1), keepdims=True)
    return shifted / (np.float32(EPS) + shifted.max(axis=(-2, -1), keepdims=True))


def finite(maps: np.ndarray) -> np.ndarray:
    """``maps`` as float32 with NaN → 0 and ±inf → ±float32 max (an overflow in a map must not
    make a heatmap NaN: heatmaps are always in [0, 1])."""
    top = np.finfo(np.float32).max
    return np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=top, neginf=-top)


def postprocess(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Turn raw CAMs [N, h, w] into heatmaps float32 [N, H, W] in [0, 1].

    ReLU → per-image min-max (eps 1e-7) at feature resolution → bilinear resize to
    ``size`` = (H, W) with half-pixel centres (cv2 INTER_LINEAR) → ReLU → per-image min-max
    (non-finite values of ``raw`` are made finite first, see ``finite``).
    """
    raw = finite(raw)
    if raw.ndim != 3:
        raise ValueError(f"raw maps must be [N, h, w], got shape {raw.shape}")
    cam = minmax_per_image(np.maximum(raw, 0))
    cam = resize_bilinear(cam, size)
    return minmax_per_image(np.maximum(cam, 0))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, C] logits: the class probabilities (float32, computed in float64)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)
