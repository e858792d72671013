"""Bilinear resizing of stacks of 2-D maps in pure numpy, separable.

Each output row (then column) is a weighted mix of at most two source rows: ``out = (1 − f)·x[i0]
+ f·x[i1]``, with the taps (i0, i1, f) of the resizing rule. Along an axis whose interpolation
matrix [dst, src] is small (the usual case: a 7 × 7 map to 224 × 224) the taps are applied as that
matrix product, which is fastest; along one where it would be large (a map put back onto a photo
of thousands of pixels) as two gathers, whose memory is proportional to the output.
"""
from __future__ import annotations

import numpy as np

Taps = tuple[np.ndarray, np.ndarray, np.ndarray]   # i0, i1 (int), f (float32)


def half_pixel_taps(src: int, dst: int) -> Taps:
    """Taps of cv2.resize INTER_LINEAR (half-pixel centres).

    For output index d: s = (d + 0.5)·src/dst − 0.5, s0 = floor(s), f = s − s0;
    if s0 < 0: s0 = 0, f = 0; if s0 ≥ src − 1: s0 = src − 1, f = 0 (border replicate);
    weights (1 − f) at s0 and f at s0 + 1. No anti-aliasing when shrinking (as cv2).
    """
    s = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    s0 = np.floor(s)
    f = s - s0
    s0 = s0.astype(np.int64)
    low = s0 < 0
    f[low], s0[low] = 0.0, 0
    high = s0 >= src - 1
    f[high], s0[high] = 0.0, src - 1
    return s0, np.minimum(s0 + 1, src - 1), f.astype(np.float32)


def align_corners_taps(src: int, dst: int) -> Taps:
    """Taps of bilinear resizing with align_corners=True: s = d·(src − 1)/(dst − 1) (s = 0 when
    dst = 1), s0 = floor(s), f = s − s0, as torch.nn.UpsamplingBilinear2d — including its float32
    arithmetic for s and f."""
    scale = np.float32(src - 1) / np.float32(dst - 1) if dst > 1 else np.float32(0)
    s = (np.arange(dst, dtype=np.float32) * scale).astype(np.float64)
    s0 = np.minimum(np.floor(s).astype(np.int64), src - 1)
    return s0, np.minimum(s0 + 1, src - 1), (s - s0).astype(np.float32)


#: interpolation matrices up to this many entries are applied as products
DENSE_ENTRIES = 1 << 20


def _along(maps: np.ndarray, taps: Taps, axis: int) -> np.ndarray:
    i0, i1, f = taps
    src = maps.shape[axis]
    if len(i0) * src <= DENSE_ENTRIES:
        matrix = np.zeros((len(i0), src), np.float32)
        rows = np.arange(len(i0))
        np.add.at(matrix, (rows, i0), np.float32(1) - f)
        np.add.at(matrix, (rows, i1), f)
        if axis == maps.ndim - 2:
            return matrix @ maps
        return maps @ matrix.T
    shape = [1] * maps.ndim
    shape[axis] = -1
    f = f.reshape(shape)
    return np.take(maps, i0, axis=axis) * (np.float32(1) - f) + np.take(maps, i1, axis=axis) * f


def _resize(maps: np.ndarray, size: tuple[int, int], taps) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float32)
    h, w = maps.shape[-2:]
    H, W = int(size[0]), int(size[1])
    out = maps if H == h else _along(maps, taps(h, H), maps.ndim - 2)
    out = out if W == w else _along(out, taps(w, W), maps.ndim - 1)
    return out.astype(np.float32, copy=out is maps)


def resize_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``maps`` [..., h, w] to ``size`` = (H, W) like cv2.resize(INTER_LINEAR).

    Returns float32 [..., H, W]; equals cv2's result on float32 input within ~1e-6.
    """
    return _resize(maps, size, half_pixel_taps)


def resize_bilinear_align_corners(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``maps`` [..., h, w] to ``size`` = (H, W) with align_corners=True bilinear.

    Matches torch.nn.UpsamplingBilinear2d (used by pytorch-grad-cam's ScoreCAM).
    """
    return _resize(maps, size, align_corners_taps)
