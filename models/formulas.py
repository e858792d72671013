"""The closed-form CAM formulas, written once for every backend.

Each formula maps the graph's outputs A = ``activations``, g = ``gradients``, g2 =
``gradients_pow2``, g3 = ``gradients_pow3`` ([N, K, h, w]) to the raw map [N, h, w] before
post-processing, as pytorch-grad-cam 1.5.7 computes it (its epsilons included). It is written
against an array vocabulary ``xp``: arithmetic operators on its arrays and scalars, plus

- ``xp.relu(x)``;  ``xp.nonzero_or_zero(c, x)`` = x where c ≠ 0, else 0;
- ``xp.sum_hw(x)``, ``xp.mean_hw(x)``: Σ_ij / mean_ij over space, keeping [N, K, 1, 1];
- ``xp.sum_k(x)``: Σ_k over channels → [N, h, w];  ``xp.weighted(w, A)`` = Σ_k w_k A_k.

The runtime evaluates a formula with numpy (``runtime.methods.NUMPY``); the exporter writes the
same formula as ONNX nodes to bake a heatmap into a graph (``exporter.bake_heatmap``), so a method
is defined once for both. Adding a closed-form method: a function here registered with
``@formula(name)``, and its entry in the runtime's method registry.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

Formula = Callable[[Any, Any, Any, Any, Any], Any]   # (xp, A, g, g2, g3) → raw map

#: name → formula, in registration order
FORMULAS: dict[str, Formula] = {}


def formula(name: str) -> Callable[[Formula], Formula]:
    """Register ``fn`` as the closed-form formula of method ``name``."""
    def register(fn: Formula) -> Formula:
        if name in FORMULAS:
            raise ValueError(f"formula {name!r} is already registered")
        FORMULAS[name] = fn
        return fn

    return register


@formula("gradcam")
def gradcam(xp, A, g, g2, g3):
    """Grad-CAM: w_k = mean_ij g_kij;  map = Σ_k w_k A_k."""
    return xp.weighted(xp.mean_hw(g), A)


@formula("gradcam++")
def gradcam_plusplus(xp, A, g, g2, g3):
    """Grad-CAM++ (Chattopadhay et al. 2018, Eq. 19): α = g2 / (2·g2 + (Σ_ab A_kab)·g3 + 1e-6),
    α = 0 where g = 0;  w_k = Σ_ij α_kij·ReLU(g_kij);  map = Σ_k w_k A_k. (g2, g3 are the graph's
    exponential-score terms, = g², g³ for piecewise-linear heads.)"""
    alpha = xp.nonzero_or_zero(g, g2 / (2 * g2 + xp.sum_hw(A) * g3 + 1e-6))
    return xp.weighted(xp.sum_hw(xp.relu(g) * alpha), A)


@formula("xgradcam")
def xgradcam(xp, A, g, g2, g3):
    """XGrad-CAM: w_k = Σ_ij (g·A)_kij / (Σ_ij A_kij + 1e-7);  map = Σ_k w_k A_k."""
    return xp.weighted(xp.sum_hw(g * A / (xp.sum_hw(A) + 1e-7)), A)


@formula("hirescam")
def hirescam(xp, A, g, g2, g3):
    """HiResCAM: map = Σ_k g_k ⊙ A_k (element-wise, no pooling)."""
    return xp.sum_k(g * A)


@formula("layercam")
def layercam(xp, A, g, g2, g3):
    """LayerCAM: map = Σ_k ReLU(g_k) ⊙ A_k."""
    return xp.sum_k(xp.relu(g) * A)


@formula("gradcam-elementwise")
def gradcam_elementwise(xp, A, g, g2, g3):
    """Grad-CAM element-wise: map = Σ_k ReLU(g_k ⊙ A_k)."""
    return xp.sum_k(xp.relu(g * A))


@formula("gradcam-counterfactual")
def gradcam_counterfactual(xp, A, g, g2, g3):
    """Counterfactual Grad-CAM (Selvaraju et al. §5): w_k = mean_ij(−g_kij);  map = Σ_k w_k A_k —
    the regions whose removal would raise the score."""
    return xp.weighted(xp.mean_hw(-g), A)
