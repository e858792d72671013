"""CAM methods as pure numpy functions of the explanation graph's outputs.

Every function takes A = ``activations``, g = ``gradients``, g2 = ``gradients_pow2`` and
g3 = ``gradients_pow3`` (each float32 [N, K, h, w]; unused ones may be None) and returns the
raw map float32 [N, h, w] *before* post-processing (see ``postprocess``). The formulas follow
pytorch-grad-cam 1.5.7 exactly, including its epsilons; sums over i, j run over space,
Σ_k over channels.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

Array = np.ndarray
Method = Callable[[Array, Optional[Array], Optional[Array], Optional[Array]], Array]


def _f32(x: Array) -> Array:
    return np.asarray(x, dtype=np.float32)


def _weighted_sum(weights: Array, A: Array) -> Array:
    """Σ_k w_k A_k for weights [N, K] and A [N, K, h, w]."""
    return np.einsum("nk,nkij->nij", _f32(weights), _f32(A))


def gradcam(A: Array, g: Array, g2: Array = None, g3: Array = None) -> Array:
    """Grad-CAM: w_k = mean_ij g_kij;  map = Σ_k w_k A_k."""
    return _weighted_sum(_f32(g).mean(axis=(2, 3)), A)


def gradcam_plusplus(A: Array, g: Array, g2: Array, g3: Array) -> Array:
    """Grad-CAM++ (Chattopadhay et al. 2018, Eq. 19), as pytorch-grad-cam:

    α_kij = g2 / (2·g2 + (Σ_ab A_kab)·g3 + 1e-6), α = 0 where g = 0;
    w_k = Σ_ij α_kij · ReLU(g_kij);  map = Σ_k w_k A_k.
    g2, g3 are the graph's exponential-score terms (= g², g³ for piecewise-linear heads).
    """
    A, g, g2, g3 = _f32(A), _f32(g), _f32(g2), _f32(g3)
    sum_a = A.sum(axis=(2, 3), keepdims=True)
    alpha = g2 / (2 * g2 + sum_a * g3 + np.float32(1e-6))
    alpha = np.where(g != 0, alpha, np.float32(0))
    weights = (np.maximum(g, 0) * alpha).sum(axis=(2, 3))
    return _weighted_sum(weights, A)


def xgradcam(A: Array, g: Array, g2: Array = None, g3: Array = None) -> Array:
    """XGrad-CAM: w_k = Σ_ij (g·A)_kij / (Σ_ij A_kij + 1e-7);  map = Σ_k w_k A_k."""
    A, g = _f32(A), _f32(g)
    sum_a = A.sum(axis=(2, 3), keepdims=True)
    weights = (g * A / (sum_a + np.float32(1e-7))).sum(axis=(2, 3))
    return _weighted_sum(weights, A)


def hirescam(A: Array, g: Array, g2: Array = None, g3: Array = None) -> Array:
    """HiResCAM: map = Σ_k g_k ⊙ A_k (element-wise, no pooling)."""
    return (_f32(g) * _f32(A)).sum(axis=1)


def gradcam_elementwise(A: Array, g: Array, g2: Array = None, g3: Array = None) -> Array:
    """Grad-CAM element-wise: map = Σ_k ReLU(g_k ⊙ A_k)."""
    return np.maximum(_f32(g) * _f32(A), 0).sum(axis=1)


def layercam(A: Array, g: Array, g2: Array = None, g3: Array = None) -> Array:
    """LayerCAM: map = Σ_k ReLU(g_k) ⊙ A_k."""
    return (np.maximum(_f32(g), 0) * _f32(A)).sum(axis=1)


def first_component_projection(M: Array) -> Array:
    """Project M [N, K, h, w] on its first principal direction, per image, sign fixed.

    As pytorch-grad-cam's ``get_2d_projection``: NaN → 0; X = M reshaped to
    positions × channels [h·w, K]; X ← X − mean over positions (each channel centred);
    X = U S Vᵀ (reduced SVD; same first right singular vector v₁ as the full SVD);
    p = X v₁, reshaped to [h, w].
    Sign: v₁ is only defined up to sign and pytorch-grad-cam leaves it arbitrary (its map
    can come out inverted). Here p is negated when Σ_ij p_ij·(s_ij − mean s) < 0 with
    s = Σ_k M_k, i.e. the projection is made to correlate positively with the channel sum
    of M (Σ_k A for Eigen-CAM, Σ_k g·A for Eigen-Grad-CAM). Parity with pytorch-grad-cam
    therefore holds up to a per-image sign.
    """
    M = _f32(M)
    M = np.where(np.isnan(M), np.float32(0), M)
    n, k, h, w = M.shape
    X = M.reshape(n, k, h * w).transpose(0, 2, 1)
    X = X - X.mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    p = np.einsum("npk,nk->np", X, vt[:, 0, :])
    s = M.sum(axis=1).reshape(n, h * w)
    corr = (p * (s - s.mean(axis=1, keepdims=True))).sum(axis=1)
    p = p * np.where(corr < 0, np.float32(-1), np.float32(1))[:, None]
    return p.reshape(n, h, w).astype(np.float32)


def eigencam(A: Array, g: Array = None, g2: Array = None, g3: Array = None) -> Array:
    """Eigen-CAM: map = first-principal-component projection of A (see
    ``first_component_projection`` for the centring and the sign convention)."""
    return first_component_projection(A)


def eigengradcam(A: Array, g: Array, g2: Array = None, g3: Array = None) -> Array:
    """Eigen-Grad-CAM: map = first-principal-component projection of g ⊙ A."""
    return first_component_projection(_f32(g) * _f32(A))


def weighted_activations(weights: Array, A: Array) -> Array:
    """Map of channel-weight methods (Score-CAM, Ablation-CAM): Σ_k w_k A_k."""
    return _weighted_sum(weights, A)


METHODS: dict[str, Method] = {
    "gradcam": gradcam,
    "gradcam++": gradcam_plusplus,
    "xgradcam": xgradcam,
    "hirescam": hirescam,
    "layercam": layercam,
    "gradcam-elementwise": gradcam_elementwise,
    "eigencam": eigencam,
    "eigengradcam": eigengradcam,
}

#: Graph outputs each method reads (besides ``logits`` and ``target``).
REQUIRED_OUTPUTS: dict[str, tuple[str, ...]] = {
    name: ("activations", "gradients") for name in METHODS
}
REQUIRED_OUTPUTS["gradcam++"] = ("activations", "gradients", "gradients_pow2", "gradients_pow3")
REQUIRED_OUTPUTS["eigencam"] = ("activations",)
REQUIRED_OUTPUTS["scorecam"] = ("activations",)
REQUIRED_OUTPUTS["ablationcam"] = ("activations",)
