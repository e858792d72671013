"""Faithfulness metrics: how the model's score of the explained class reacts when the image is
changed according to the map. Every perturbed image goes through the model in batches.

Notation: x an image (preprocessed, normalised space), M its map in [0, 1] at input resolution,
c the explained class (``class_index``; None / negative = top-1 of x), s(·) the class score:
the softmax probability (``score='probability'``, default) or the logit (``score='logit'``).
Y = s(x) and O = s(x ⊙ M) (the map multiplied into every channel).
"""
from __future__ import annotations


import numpy as np

from onnxcam.runtime.metrics._model import (Model, Scorer, check_inputs, chunks, class_score,
                                            descending_order, resolve_classes, top_fraction_mask)


# -- image ⊙ map: confidence change, Average Drop, Increase in Confidence, Win % ---------------
def cam_mult_scores(model: Model, x: np.ndarray, maps: np.ndarray, class_index=None,
                    score: str = "probability", batch_size: int | None = None,
                    layout: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Y, O, classes): Y_i = s_c(x_i), O_i = s_c(x_i ⊙ M_i), per image, float32 [N] each.

    ``x`` float32 [N, C, H, W] (or NHWC), ``maps`` [N, H, W]; ``layout`` only for a callable
    model (an Explainer knows its own)."""
    scorer = Scorer(model, batch_size, layout)
    x, maps = check_inputs(scorer, x, maps)
    logits, classes = resolve_classes(scorer, x, class_index)
    y = class_score(logits, classes, score)
    o = np.concatenate([scorer.scores(x[s:e] * scorer.spatial(maps[s:e]), classes[s:e], score)
                        for s, e in chunks(len(x), scorer.batch_size)])
    return y, o, classes


def confidence_change(model: Model, x: np.ndarray, maps: np.ndarray, class_index=None,
                      score: str = "probability", batch_size: int | None = None,
                      layout: str | None = None) -> np.ndarray:
    """Seed method 1, confidence change with the map: ``O − Y`` per image (higher is better).

    Equals ``pytorch_grad_cam.metrics.cam_mult_image.CamMultImageConfidenceChange``."""
    y, o, _ = cam_mult_scores(model, x, maps, class_index, score, batch_size, layout)
    return o - y


def drop_in_confidence(model: Model, x: np.ndarray, maps: np.ndarray, class_index=None,
                       score: str = "probability", batch_size: int | None = None,
                       layout: str | None = None) -> np.ndarray:
    """``max(0, Y − O)`` per image (pytorch-grad-cam's ``DropInConfidence``)."""
    y, o, _ = cam_mult_scores(model, x, maps, class_index, score, batch_size, layout)
    return np.maximum(y - o, 0).astype(np.float32)


def increase_in_confidence(model: Model, x: np.ndarray, maps: np.ndarray, class_index=None,
                           score: str = "probability", batch_size: int | None = None,
                           layout: str | None = None) -> np.ndarray:
    """``1[O > Y]`` per image as float32 (pytorch-grad-cam's ``IncreaseInConfidence``)."""
    y, o, _ = cam_mult_scores(model, x, maps, class_index, score, batch_size, layout)
    return (o > y).astype(np.float32)


def relative_drop(y: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Per image ``max(0, Y − O) / Y`` (the term averaged by Average Drop)."""
    y, o = np.asarray(y, np.float64), np.asarray(o, np.float64)
    return np.maximum(y - o, 0) / y


def average_drop(y: np.ndarray, o: np.ndarray) -> float:
    """Average Drop % (Grad-CAM++ paper): ``AD = 100 · mean_i max(0, Y_i − O_i) / Y_i``
    (lower is better). ``y``, ``o`` from :func:`cam_mult_scores` with probabilities."""
    return float(100.0 * np.mean(relative_drop(y, o)))


def increase_in_confidence_percent(y: np.ndarray, o: np.ndarray) -> float:
    """Increase in Confidence % (Grad-CAM++ paper): ``IC = 100 · mean_i 1[O_i > Y_i]``
    (higher is better)."""
    return float(100.0 * np.mean(np.asarray(o) > np.asarray(y)))


def win_percent(drop_a: np.ndarray, drop_b: np.ndarray) -> float:
    """Win % of method A over B (Grad-CAM++ paper): ``100 · mean_i 1[d_A,i < d_B,i]``, the share
    of images on which A's relative drop ``d = max(0, Y − O)/Y`` (:func:`relative_drop`) is lower
    than B's. Ties count for neither method."""
    a, b = np.asarray(drop_a, np.float64), np.asarray(drop_b, np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"win_percent needs two non-empty arrays of the same shape, got {a.shape}, {b.shape}")
    return float(100.0 * np.mean(a < b))


# -- removing the most salient pixels ----------------------------------------------------------
def remove_top_percent(model: Model, x: np.ndarray, maps: np.ndarray, percent: float = 25.0,
                       class_index=None, baseline: float = 0.0, score: str = "probability",
                       relative: bool = False, batch_size: int | None = None,
                       layout: str | None = None) -> np.ndarray:
    """Seed method 2, drop after removing the top-k %: the k = ``percent`` % most salient pixels
    (round(k/100·H·W) pixels by descending map value, ties in raster order) are set to
    ``baseline`` in every channel (0 = the dataset mean in normalised space); returns
    ``O_k − Y`` per image, or ``100 · (O_k − Y) / Y`` with ``relative=True`` (more negative is
    better)."""
    scorer = Scorer(model, batch_size, layout)
    x, maps = check_inputs(scorer, x, maps)
    logits, classes = resolve_classes(scorer, x, class_index)
    y = class_score(logits, classes, score)
    keep = ~top_fraction_mask(maps, percent)
    o = np.concatenate([
        scorer.scores(np.where(scorer.spatial(keep[s:e]), x[s:e], np.float32(baseline)), classes[s:e], score)
        for s, e in chunks(len(x), scorer.batch_size)])
    change = (o - y).astype(np.float32)
    return (100.0 * change / y).astype(np.float32) if relative else change


# -- deletion / insertion (RISE) ---------------------------------------------------------------
def rise_kernel(klen: int = 11, sigma: float = 5.0) -> np.ndarray:
    """RISE's blur kernel [klen, klen]: a centred unit impulse filtered like
    ``scipy.ndimage.gaussian_filter(impulse, sigma)`` (truncate 4, mode 'reflect'), which is the
    outer product of the 1-D filtered impulse with itself (sums to 1)."""
    radius = int(4.0 * sigma + 0.5)
    j = np.arange(-radius, radius + 1)
    g = np.exp(-0.5 * (j / sigma) ** 2)
    g /= g.sum()
    idx = (np.arange(klen)[:, None] + j[None, :]) % (2 * klen)  # half-sample symmetric reflection
    idx = np.where(idx >= klen, 2 * klen - 1 - idx, idx)
    k1 = (g[None, :] * (idx == klen // 2)).sum(axis=1)
    return np.outer(k1, k1)


def gaussian_blur(x: np.ndarray, klen: int = 11, sigma: float = 5.0, layout: str = "NCHW") -> np.ndarray:
    """RISE's insertion substrate: every channel convolved with :func:`rise_kernel` with zero
    padding of klen//2 (as ``torch.nn.functional.conv2d(x, kernel, padding=klen//2)``)."""
    k2 = rise_kernel(klen, sigma)
    k1 = np.sqrt(np.diag(k2))  # separable: k2 = outer(k1, k1)
    x = np.asarray(x, np.float64)
    if layout == "NHWC":
        x = np.moveaxis(x, -1, 1)
    p = klen // 2
    h, w = x.shape[-2:]
    xp = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(p, p), (p, p)])
    rows = sum(k1[i] * xp[..., i:i + h, :] for i in range(klen))
    out = sum(k1[i] * rows[..., :, i:i + w] for i in range(klen))
    if layout == "NHWC":
        out = np.moveaxis(out, 1, -1)
    return out.astype(np.float32)


def _curves(scorer: Scorer, start: np.ndarray, finish: np.ndarray, maps: np.ndarray, classes: np.ndarray,
            step: int, score: str) -> np.ndarray:
    n, (h, w) = len(start), maps.shape[1:]
    n_steps = (h * w + step - 1) // step
    rank = np.empty((n, h * w), np.int64)
    np.put_along_axis(rank, descending_order(maps), np.arange(h * w)[None].repeat(n, 0), axis=1)
    rank = rank.reshape(n, h, w)
    counts = np.arange(n_steps + 1) * step  # pixels moved before point k
    img_idx = np.repeat(np.arange(n), n_steps + 1)  # (image, point) pairs, batched across images
    pt_idx = np.tile(np.arange(n_steps + 1), n)
    scores = np.zeros(len(img_idx), np.float32)
    for s, e in chunks(len(img_idx), scorer.batch_size):
        ii, kk = img_idx[s:e], pt_idx[s:e]
        moved = rank[ii] < counts[kk][:, None, None]  # [K, H, W]
        batch = np.where(scorer.spatial(moved), finish[ii], start[ii]).astype(np.float32, copy=False)
        scores[s:e] = scorer.scores(batch, classes[ii], score)
    return scores.reshape(n, n_steps + 1)


def _explicit_classes(scorer: Scorer, x: np.ndarray, class_index) -> np.ndarray:
    """Classes per image; runs the model on x only when some must be resolved to the top-1."""
    if class_index is not None:
        classes = np.asarray(class_index if np.ndim(class_index) else [class_index] * len(x), np.int64).reshape(-1)
        if len(classes) == len(x) and np.all(classes >= 0):
            return classes
    return resolve_classes(scorer, x, class_index)[1]


def deletion_curve(model: Model, x: np.ndarray, maps: np.ndarray, class_index=None, step: int = 224,
                   baseline: float = 0.0, score: str = "probability", batch_size: int | None = None,
                   layout: str | None = None) -> np.ndarray:
    """Deletion curve (RISE, Petsiuk et al. 2018): pixels ordered by descending map value; point
    i (i = 0..n, n = ⌈H·W/step⌉) is s_c of x with its first i·step pixels (all channels) set to
    ``baseline`` (0 in normalised space). Returns float32 [N, n + 1]; lower area is better."""
    scorer = Scorer(model, batch_size, layout)
    x, maps = check_inputs(scorer, x, maps)
    classes = _explicit_classes(scorer, x, class_index)
    return _curves(scorer, x, np.full_like(x, baseline), maps, classes, step, score)


def insertion_curve(model: Model, x: np.ndarray, maps: np.ndarray, class_index=None, step: int = 224,
                    klen: int = 11, sigma: float = 5.0, score: str = "probability",
                    batch_size: int | None = None, layout: str | None = None) -> np.ndarray:
    """Insertion curve (RISE): starts from the blurred image (:func:`gaussian_blur`, kernel
    ``klen``, σ ``sigma``) and point i has the first i·step most salient pixels of x put back.
    Returns float32 [N, ⌈H·W/step⌉ + 1]; higher area is better."""
    scorer = Scorer(model, batch_size, layout)
    x, maps = check_inputs(scorer, x, maps)
    classes = _explicit_classes(scorer, x, class_index)
    return _curves(scorer, gaussian_blur(x, klen, sigma, scorer.layout), x, maps, classes, step, score)


def auc(curves: np.ndarray) -> np.ndarray:
    """RISE's normalised trapezoid area of curves [..., n]: ``(Σ_i a_i − a_0/2 − a_{n−1}/2) / (n − 1)``."""
    a = np.asarray(curves, np.float64)
    if a.shape[-1] < 2:
        raise ValueError("a curve needs at least two points")
    return ((a.sum(-1) - a[..., 0] / 2 - a[..., -1] / 2) / (a.shape[-1] - 1)).astype(np.float32)
