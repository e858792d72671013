"""Bilinear resizing of stacks of 2-D maps in pure numpy.

Both resizers are separable: with interpolation matrices R_h [H, h] and R_w [W, w],
``out[n] = R_h @ img[n] @ R_w.T``. Rows of R hold at most two non-zero weights.
"""
from __future__ import annotations

import numpy as np


def _half_pixel_matrix(src: int, dst: int) -> np.ndarray:
    """Interpolation matrix [dst, src] of cv2.resize INTER_LINEAR (half-pixel centres).

    For output index d: s = (d + 0.5)·src/dst − 0.5, s0 = floor(s), f = s − s0;
    if s0 < 0: s0 = 0, f = 0; if s0 ≥ src − 1: s0 = src − 1, f = 0 (border replicate);
    weights (1 − f) at s0 and f at s0 + 1. No anti-aliasing when shrinking (as cv2).
    """
    d = np.arange(dst, dtype=np.float64)
    s = (d + 0.5) * (src / dst) - 0.5
    s0 = np.floor(s)
    f = s - s0
    s0 = s0.astype(np.int64)
    low = s0 < 0
    f[low], s0[low] = 0.0, 0
    high = s0 >= src - 1
    f[high], s0[high] = 0.0, src - 1
    m = np.zeros((dst, src), dtype=np.float64)
    rows = np.arange(dst)
    m[rows, s0] += 1.0 - f
    m[rows, np.minimum(s0 + 1, src - 1)] += f
    return m



def _align_corners_matrix(src: int, dst: int) -> np.ndarray:
    """Interpolation matrix [dst, src] of bilinear resizing with align_corners=True.

    For output index d: s = d·(src − 1)/(dst − 1) (s = 0 when dst = 1), s0 = floor(s),
    f = s − s0, weights (1 − f) at s0 and f at min(s0 + 1, src − 1), as
    torch.nn.UpsamplingBilinear2d — including its float32 arithmetic for s and f.
    """
    d = np.arange(dst, dtype=np.float32)
    scale = np.float32(src - 1) / np.float32(dst - 1) if dst > 1 else np.float32(0)
    s = (d * scale).astype(np.float64)
    s0 = np.minimum(np.floor(s).astype(np.int64), src - 1)
    f = s - s0
    m = np.zeros((dst, src), dtype=np.float64)
    rows = np.arange(dst)
    m[rows, s0] += 1.0 - f
    m[rows, np.minimum(s0 + 1, src - 1)] += f
    return m


def _apply(maps: np.ndarray, rh: np.ndarray, rw: np.ndarray) -> np.ndarray:
    """R_h @ maps @ R_w.T in float32 (each output mixes at most 4 inputs: no precision issue)."""
    maps = np.asarray(maps, dtype=np.float32)
    return (rh.astype(np.float32) @ maps @ rw.T.astype(np.float32)).astype(np.float32, copy=False)


def resize_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``maps`` [..., h, w] to ``size`` = (H, W) like cv2.resize(INTER_LINEAR).

    Returns float32 [..., H, W]; equals cv2's result on float32 input within ~1e-6.
    """
    h, w = maps.shape[-2:]
    H, W = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return maps.astype(np.float32, copy=True)
    return _apply(maps, _half_pixel_matrix(h, H), _half_pixel_matrix(w, W))


def resize_bilinear_align_corners(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``maps`` [..., h, w] to ``size`` = (H, W) with align_corners=True bilinear.

    Matches torch.nn.UpsamplingBilinear2d (used by pytorch-grad-cam's ScoreCAM).
    """
    h, w = maps.shape[-2:]
    return _apply(maps, _align_corners_matrix(h, int(size[0])), _align_corners_matrix(w, int(size[1])))
