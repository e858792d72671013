"""Sanity check: cascading model parameter randomisation (Adebayo et al. 2018).

The explanation graph's weights are re-drawn layer by layer from the top (the logits side) down,
the maps are re-computed with the SAME method after each step, and each randomised map is
compared with the original one by Spearman rank correlation and SSIM. A method that depends on
the model must see both fall as more layers are randomised.

A *layer* is a Conv / ConvTranspose / Gemm / MatMul node with a weight initializer of rank ≥ 2,
together with its other initializer inputs (the bias); layers are ordered by where their node
first appears in the graph (forward order), and an initializer shared with the graph's own
gradient nodes is randomised everywhere at once (so gradients stay exact for the new weights).
Randomising an initializer w draws w' ~ N(0, std(w)²) (std 0.01 when w is constant), seeded.

Needs ``onnx`` to rewrite the weights (imported here only, on use).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np


LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# -- similarity of maps ------------------------------------------------------------------------
def rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties given their average rank (``scipy.stats.rankdata``)."""
    a = np.asarray(a).ravel()
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    starts = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    ends = np.r_[first[1:], len(a)]
    avg = (first + ends + 1) / 2.0  # mean of ranks first+1 .. end
    ranks = np.empty(len(a), np.float64)
    ranks[order] = avg[group]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps: Pearson correlation of their average-tie ranks
    (nan when either map is constant)."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def _uniform7(a: np.ndarray, size: int) -> np.ndarray:
    """Mean over size×size windows of the valid region (what skimage keeps after cropping)."""
    c = np.cumsum(np.cumsum(np.pad(a, ((1, 0), (1, 0))), 0), 1)
    return (c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]) / (size * size)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, win_size: int = 7) -> float:
    """Structural similarity of two maps as ``skimage.metrics.structural_similarity`` with its
    defaults (uniform win_size×win_size window, K1 = 0.01, K2 = 0.03, sample covariances, mean
    over the windows fully inside the map):
    SSIM = mean[(2μ_aμ_b + C1)(2σ_ab + C2) / ((μ_a² + μ_b² + C1)(σ_a² + σ_b² + C2))], C_i = (K_i·L)²."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or min(a.shape) < win_size:
        raise ValueError(f"ssim needs two maps of the same shape, at least {win_size}×{win_size}")
    n = win_size * win_size
    cov = n / (n - 1)
    ua, ub = _uniform7(a, win_size), _uniform7(b, win_size)
    vaa = cov * (_uniform7(a * a, win_size) - ua * ua)
    vbb = cov * (_uniform7(b * b, win_size) - ub * ub)
    vab = cov * (_uniform7(a * b, win_size) - ua * ub)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua ** 2 + ub ** 2 + c1) * (vaa + vbb + c2))
    return float(s.mean())


# -- randomisation -----------------------------------------------------------------------------
def parameter_layers(model) -> list[tuple[str, list[str]]]:
    """(node name, initializer names) of each randomisable layer of an ``onnx.ModelProto``, in
    forward order (see the module docstring)."""
    inits = {i.name: i for i in model.graph.initializer}
    seen: set[str] = set()
    layers = []
    for k, node in enumerate(model.graph.node):
        if node.op_type not in LAYER_OPS:
            continue
        names = [n for n in node.input if n in inits and n not in seen]
        if not any(len(inits[n].dims) >= 2 for n in names):
            continue
        seen.update(names)
        layers.append((node.name or f"{node.op_type}_{k}", names))
    return layers


@dataclass
class RandomisationResult:
    """``layers[s]``: the layers randomised at step s (cumulative, top first); ``spearman`` and
    ``ssim``: float [S, N], each image's original map vs the map at step s."""

    layers: list[list[str]]
    spearman: np.ndarray
    ssim: np.ndarray


def model_randomisation(model_path: str | Path, x: np.ndarray, method: str = "gradcam",
                        class_index=None, steps: None | int | Sequence[int] = None, seed: int = 0,
                        providers: Sequence | None = None, batch_size: int = 16) -> RandomisationResult:
    """Cascading (top-down) model parameter randomisation of an explanation graph.

    ``x``: a float32 batch or image paths (as ``Explainer.explain``); ``class_index``: the classes
    explained, fixed from the ORIGINAL model (None = its top-1) so that every step explains the
    same class. ``steps``: an int = how many checkpoints to evaluate along the cascade, evenly
    spaced and ending with every layer randomised; a list = the numbers of top layers randomised
    at each checkpoint (e.g. ``[1, 2, 4, 8]``); None = after every layer. Returns per step the
    Spearman rank correlation and SSIM between the original and the randomised maps."""
    import onnx
    from onnx import numpy_helper

    from onnxcam.runtime.explainer import Explainer

    base = Explainer(model_path, providers=providers, batch_size=batch_size)
    if not isinstance(x, np.ndarray):
        x, _ = base.prepare(x if isinstance(x, (list, tuple)) else [x])
    ref = base.explain(x, method, class_index)
    classes = ref.class_index
    model = onnx.load(str(model_path))
    layers = parameter_layers(model)[::-1]  # top-down
    if not layers:
        raise ValueError(f"{model_path}: no Conv/Gemm/MatMul weights to randomise")
    if steps is None or np.ndim(steps) == 0:
        count = len(layers) if steps is None else max(1, min(int(steps), len(layers)))
        checkpoints = sorted({int(round(v)) for v in np.linspace(len(layers) / count, len(layers), count)})
    else:
        checkpoints = sorted({min(max(int(v), 1), len(layers)) for v in steps})
    inits = {i.name: i for i in model.graph.initializer}
    rng = np.random.default_rng(seed)
    done_layers: list[str] = []
    names_per_step, rho, sim = [], [], []
    with tempfile.TemporaryDirectory(prefix="onnxcam-mprt-") as tmp:
        path = os.path.join(tmp, "randomised.cam.onnx")
        for k, (node, names) in enumerate(layers, start=1):
            for name in names:
                w = numpy_helper.to_array(inits[name])
                std = float(w.std()) or 0.01
                new = numpy_helper.from_array(rng.normal(0.0, std, w.shape).astype(w.dtype), name)
                inits[name].CopyFrom(new)
            done_layers.append(node)
            if k not in checkpoints:
                continue
            onnx.save(model, path)
            maps = Explainer(path, providers=providers, batch_size=batch_size).explain(x, method, classes).heatmaps
            names_per_step.append(list(done_layers))
            rho.append([spearman(a, b) for a, b in zip(ref.heatmaps, maps)])
            sim.append([ssim(a, b) for a, b in zip(ref.heatmaps, maps)])
    return RandomisationResult(names_per_step, np.asarray(rho, np.float64), np.asarray(sim, np.float64))
