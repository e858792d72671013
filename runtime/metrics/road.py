"""ROAD: RemOve And Debias (Rong et al. 2022), with noisy linear imputation in numpy.

Removed pixels are filled by *noisy linear imputation*: every removed pixel equals the weighted
mean of its 8 neighbours (weight 1/6 for the 4 edge neighbours, 1/12 for the 4 diagonals; only
neighbours inside the image count), which couples all removed pixels in one sparse linear system
per channel,

    (Σ_{j ∈ N(i)} w_ij) u_i − Σ_{j ∈ N(i) removed} w_ij u_j = Σ_{j ∈ N(i) kept} w_ij x_j ,

then N(0, noise²) noise is added to the filled values (``noise=0.01`` as the reference code).
The matrix is symmetric positive definite whenever the image keeps a pixel; it is solved in numpy
(no scipy) by multigrid-preconditioned conjugate gradients on the bounding box of the removed
pixels, see :mod:`onnxcam.runtime.metrics.imputation` (an image keeping no pixel is set to 0).

Thresholds follow pytorch-grad-cam (``RemoveMostRelevantFirst`` / ``RemoveLeastRelevantFirst``):
for percentile p, MoRF keeps the pixels with M < percentile_p(M) (so p = 80 removes the top
20 %), LeRF keeps those with 1 − M < percentile_p(1 − M). The score change s(x̃) − s(x) is averaged
over the percentiles (default 10, 20, …, 90); Combined = (LeRF − MoRF) / 2 (higher is better).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxcam.runtime.metrics._model import Model, Scorer, check_inputs, chunks, class_score, resolve_classes
from onnxcam.runtime.metrics.imputation import DEFAULT_TOL, linear_impute

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def noisy_linear_impute(images: np.ndarray, keep: np.ndarray, noise: float = 0.01,
                        rng: np.random.Generator | None = None, layout: str = "NCHW",
                        tol: float = DEFAULT_TOL, initial: np.ndarray | None = None) -> np.ndarray:
    """ROAD's noisy linear imputation of a batch (NCHW or NHWC) at the pixels where ``keep``
    [B, H, W] is False: :func:`~onnxcam.runtime.metrics.imputation.linear_impute` (stopping
    rule ``tol``; ``initial``: optional starting guess, NCHW) plus N(0, ``noise``²) on the filled
    values (float32 draws from ``rng``)."""
    x = np.asarray(images, np.float32)
    if layout == "NHWC":
        x = np.moveaxis(x, -1, 1)
    return _add_noise(linear_impute(x, keep, tol=tol, initial=initial), keep, noise, rng, layout)


def _add_noise(clean: np.ndarray, keep: np.ndarray, noise: float, rng: np.random.Generator | None,
               layout: str) -> np.ndarray:
    """NCHW ``clean`` + N(0, noise²) at the removed pixels, returned in ``layout``."""
    out = clean.copy()
    if noise:
        rng = rng if rng is not None else np.random.default_rng()
        removed = (~np.asarray(keep, bool))[:, None].astype(np.float32)
        out += (np.float32(noise) * removed) * rng.standard_normal(out.shape, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(out, 1, -1)) if layout == "NHWC" else out


def road_keep_mask(maps: np.ndarray, percentile: float, order: str = "morf") -> np.ndarray:
    """Pixels kept at ``percentile`` (pytorch-grad-cam's rule): MoRF M < P_p(M); LeRF
    (1 − M) < P_p(1 − M); P_p = ``np.percentile`` per map. Boolean [N, H, W]."""
    m = np.asarray(maps, np.float32)
    if order == "lerf":
        m = 1 - m
    elif order != "morf":
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    thr = np.array([np.percentile(mi, percentile) for mi in m], np.float32)
    return m < thr[:, None, None]


def road_scores(model: Model, x: np.ndarray, maps: np.ndarray, order: str = "morf",
                percentiles: Sequence[float] = PERCENTILES, class_index=None, noise: float = 0.01,
                seed: int | None = 0, score: str = "probability", batch_size: int | None = None,
                layout: str | None = None, tol: float = DEFAULT_TOL) -> np.ndarray:
    """ROAD score changes ``s(x̃_p) − s(x)`` per image and percentile, float32 [N, P], where x̃_p
    is x with the pixels removed at percentile p (``order`` 'morf' or 'lerf', see the module
    docstring) filled by :func:`noisy_linear_impute` (``noise``; ``seed`` for its generator; ``tol`` the
    imputation's stopping rule, see :mod:`onnxcam.runtime.metrics.imputation`; each percentile's
    solve starts from the previous percentile's noise-free imputation)."""
    scorer = Scorer(model, batch_size, layout)
    x, maps = check_inputs(scorer, x, maps)
    logits, classes = resolve_classes(scorer, x, class_index)
    y = class_score(logits, classes, score)
    rng = np.random.default_rng(seed)
    out = np.zeros((len(x), len(percentiles)), np.float32)
    nchw = np.moveaxis(x, -1, 1) if scorer.layout == "NHWC" else x
    previous = {}  # chunk → its noise-free imputation at the previous percentile: the next solve's start
    for k, p in enumerate(percentiles):
        keep = road_keep_mask(maps, p, order)
        for s, e in chunks(len(x), scorer.batch_size):
            previous[s] = linear_impute(nchw[s:e], keep[s:e], tol=tol, initial=previous.get(s))
            imputed = _add_noise(previous[s], keep[s:e], noise, rng, scorer.layout)
            out[s:e, k] = scorer.scores(imputed, classes[s:e], score) - y[s:e]
    return out


def road_morf(model: Model, x: np.ndarray, maps: np.ndarray, **kwargs) -> np.ndarray:
    """ROAD most-relevant-first: mean over percentiles of s(x̃_p) − s(x), float32 [N] (lower is
    better); keyword arguments as :func:`road_scores`. pytorch-grad-cam's
    ``ROADMostRelevantFirstAverage``."""
    return road_scores(model, x, maps, "morf", **kwargs).mean(axis=1)


def road_lerf(model: Model, x: np.ndarray, maps: np.ndarray, **kwargs) -> np.ndarray:
    """ROAD least-relevant-first: mean over percentiles, float32 [N] (higher is better);
    pytorch-grad-cam's ``ROADLeastRelevantFirstAverage``."""
    return road_scores(model, x, maps, "lerf", **kwargs).mean(axis=1)


def road_combined(model: Model, x: np.ndarray, maps: np.ndarray, **kwargs) -> np.ndarray:
    """ROAD combined: (LeRF − MoRF) / 2 per image, float32 [N] (higher is better);
    pytorch-grad-cam's ``ROADCombined``."""
    return ((road_lerf(model, x, maps, **kwargs) - road_morf(model, x, maps, **kwargs)) / 2).astype(np.float32)
