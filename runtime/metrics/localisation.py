"""Localisation metrics (need ground truth) and complexity metrics of maps, in numpy.

Boxes are ``(x_min, y_min, x_max, y_max)`` in pixel-edge coordinates of the map (model input
resolution): the box covers columns x_min .. x_max − 1 and rows y_min .. y_max − 1, so its area
is (x_max − x_min)·(y_max − y_min). Ground truth for one image is either a boolean mask [H, W]
or one or more boxes ([4] or [K, 4]); where a metric needs a region, boxes become the union of
their pixels, and where it needs boxes, a mask becomes its bounding box.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxcam.runtime.metrics._model import top_fraction_mask

GroundTruth = np.ndarray | Sequence[float] | Sequence[Sequence[float]]


# -- boxes, masks and connected components -----------------------------------------------------
def _is_mask(gt) -> bool:
    a = np.asarray(gt)
    return a.ndim == 2 and (a.dtype == bool or a.shape[1] != 4)


def as_boxes(gt: GroundTruth, shape: tuple[int, int]) -> np.ndarray:
    """Ground truth → float64 boxes [K, 4] (a mask → its bounding box). Raises ValueError for
    boxes outside the H×W image, empty boxes, or a mask of another size / without pixels."""
    h, w = shape
    if _is_mask(gt):
        return mask_to_box(as_mask(gt, shape))[None].astype(np.float64)
    boxes = np.asarray(gt, np.float64).reshape(-1, 4) if np.size(gt) else np.zeros((0, 4))
    if len(boxes) == 0:
        raise ValueError("no ground-truth box")
    for b in boxes:
        x0, y0, x1, y1 = b
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ValueError(f"box {tuple(float(v) for v in b)} is empty or outside the {w}x{h} image "
                             "(expected 0 ≤ x_min < x_max ≤ W, 0 ≤ y_min < y_max ≤ H)")
    return boxes


def as_mask(gt: GroundTruth, shape: tuple[int, int]) -> np.ndarray:
    """Ground truth → boolean mask [H, W] (boxes → union of the pixels whose centres they hold)."""
    if _is_mask(gt):
        m = np.asarray(gt)
        if m.shape != tuple(shape):
            raise ValueError(f"mask has size {m.shape[1]}x{m.shape[0]}, the map is {shape[1]}x{shape[0]}")
        m = m.astype(bool)
        if not m.any():
            raise ValueError("ground-truth mask has no pixels")
        return m
    return boxes_to_mask(as_boxes(gt, shape), shape)


def boxes_to_mask(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Union of boxes as a boolean mask: pixel (r, c) is inside when its centre (c + ½, r + ½) is."""
    h, w = shape
    ys, xs = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
    mask = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        mask |= (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    return mask


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """Bounding box (x_min, y_min, x_max, y_max) of a mask's True pixels (int64 [4])."""
    rows, cols = np.nonzero(np.asarray(mask))
    if len(rows) == 0:
        raise ValueError("empty mask has no bounding box")
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.int64)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes: |a ∩ b| / (|a| + |b| − |a ∩ b|)."""
    ax0, ay0, ax1, ay1 = map(float, a)
    bx0, by0, bx1, by1 = map(float, b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def label_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask [H, W] (4- or 8-connectivity).

    Returns (labels int64 [H, W] with 0 = background and 1..n numbered in raster order of each
    component's first pixel, n). Vectorised label propagation: every pixel takes the minimum
    label of its connected neighbours, then pointer jumping (label ← label[label]), until stable.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    fg = np.asarray(mask, bool)
    h, w = fg.shape
    big = h * w
    lab = np.where(fg, np.arange(big).reshape(h, w), big)
    shifts = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    if connectivity == 8:
        shifts += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    while True:
        pad = np.pad(lab, 1, constant_values=big)
        new = lab.copy()
        for dy, dx in shifts:
            new = np.minimum(new, pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w])
        new = np.where(fg, new, big)
        flat = np.append(new.ravel(), big)
        for _ in range(4):  # pointer jumping: labels are pixel indices of the same component
            flat[:-1] = flat[flat[:-1]]
        new = flat[:-1].reshape(h, w)
        if np.array_equal(new, lab):
            break
        lab = new
    roots, labels = np.unique(lab[fg], return_inverse=True)
    out = np.zeros((h, w), np.int64)
    out[fg] = labels.reshape(-1) + 1
    return out, len(roots)


# -- localisation metrics ----------------------------------------------------------------------
def _per_image(maps: np.ndarray, gts) -> tuple[np.ndarray, list]:
    maps = np.asarray(maps, np.float32)
    if maps.ndim == 2:
        maps, gts = maps[None], [gts]
    if maps.ndim != 3:
        raise ValueError(f"maps must be [N, H, W], got shape {maps.shape}")
    gts = list(gts)
    if len(gts) != len(maps):
        raise ValueError(f"got {len(gts)} ground truths for {len(maps)} maps")
    return maps, gts


def top_percent_box(map_: np.ndarray, percent: float = 25.0) -> np.ndarray:
    """Bounding box of the round(percent/100·H·W) most salient pixels of one map [H, W]."""
    return mask_to_box(top_fraction_mask(np.asarray(map_, np.float32)[None], percent)[0])


def topk_box_iou(maps: np.ndarray, gts, percent: float = 25.0) -> np.ndarray:
    """Seed method 3: IoU between the bounding box of the top ``percent`` % pixels of each map
    and its ground-truth box (the best over several boxes). Returns float32 [N]."""
    maps, gts = _per_image(maps, gts)
    out = []
    for m, gt in zip(maps, gts):
        box = top_percent_box(m, percent)
        out.append(max(box_iou(box, b) for b in as_boxes(gt, m.shape)))
    return np.asarray(out, np.float32)


def pointing_game(maps: np.ndarray, gts, tolerance: float = 0.0) -> np.ndarray:
    """Pointing game (Zhang et al. 2016): a hit when a maximum of the map lies in the ground-truth
    region, or within Euclidean distance ``tolerance`` pixels of it (the original protocol uses
    15). With several equal maxima, any of them may hit (as Quantus). Returns bool [N]."""
    maps, gts = _per_image(maps, gts)
    hits = []
    for m, gt in zip(maps, gts):
        region = as_mask(gt, m.shape)
        peak = m == m.max()
        if tolerance > 0:
            region = _dilate(region, tolerance)
        hits.append(bool(np.any(region & peak)))
    return np.asarray(hits, bool)


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within Euclidean distance ``radius`` of a True pixel."""
    r = int(np.floor(radius))
    h, w = mask.shape
    pad = np.pad(mask, r)
    out = np.zeros_like(mask)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= radius * radius:
                out |= pad[r + dy:r + dy + h, r + dx:r + dx + w]
    return out


def energy_pointing_game(maps: np.ndarray, gts) -> np.ndarray:
    """Energy-based pointing game (Score-CAM, Wang et al. 2020): the share of the map's mass in
    the ground-truth region, ``Σ_{p ∈ G} M_p / Σ_p M_p`` (0 for an all-zero map). float32 [N]."""
    maps, gts = _per_image(maps, gts)
    out = []
    for m, gt in zip(maps, gts):
        total = float(m.sum(dtype=np.float64))
        out.append(float(m[as_mask(gt, m.shape)].sum(dtype=np.float64)) / total if total > 0 else 0.0)
    return np.asarray(out, np.float32)


def box_localisation(maps: np.ndarray, gts, threshold: float = 0.15, iou_threshold: float = 0.5,
                     connectivity: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grad-CAM weakly-supervised localisation (Selvaraju et al. 2017): keep pixels with
    M ≥ ``threshold``·max M, take the largest connected segment (``connectivity`` 8 or 4; ties →
    the first in raster order), its bounding box B; IoU = max over ground-truth boxes of IoU(B, G);
    correct when IoU ≥ ``iou_threshold``. Returns (iou float32 [N], correct bool [N], boxes [N, 4])."""
    maps, gts = _per_image(maps, gts)
    ious, boxes = [], []
    for m, gt in zip(maps, gts):
        gt_boxes = as_boxes(gt, m.shape)
        labels, n = label_components(m >= threshold * m.max(), connectivity)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        box = mask_to_box(labels == 1 + int(np.argmax(sizes)))
        boxes.append(box)
        ious.append(max(box_iou(box, b) for b in gt_boxes))
    ious = np.asarray(ious, np.float32)
    return ious, ious >= iou_threshold, np.asarray(boxes, np.int64)


# -- complexity --------------------------------------------------------------------------------
def sparsity(maps: np.ndarray) -> np.ndarray:
    """Sparsity ratio ``max M / mean M`` per map (higher = more concentrated; inf for a zero map)."""
    m = np.asarray(maps, np.float64)
    m = m[None] if m.ndim == 2 else m
    flat = m.reshape(len(m), -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = flat.max(1) / flat.mean(1)
    return np.where(flat.max(1) == 0, np.inf, r).astype(np.float32)


def gini(maps: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Gini index of each map (Chalasani et al. 2020; Quantus ``Sparseness``): with a = sort(|M|
    + eps) ascending over the d pixels, ``G = Σ_k (2k − d − 1)·a_k / (d · Σ_k a_k)``, k = 1..d.
    0 for a uniform map, → 1 when all mass is on one pixel."""
    m = np.asarray(maps, np.float64)
    m = m[None] if m.ndim == 2 else m
    a = np.sort(np.abs(m.reshape(len(m), -1)) + eps, axis=1)
    d = a.shape[1]
    k = np.arange(1, d + 1)
    return ((2 * k - d - 1) * a).sum(1) / (d * a.sum(1))
