"""CAM methods on the explanation graph's outputs, in numpy.

The closed-form methods are the formulas of ``onnxcam.models.formulas`` evaluated with
:data:`NUMPY` (the numpy form of their array vocabulary); Eigen-CAM and Eigen-Grad-CAM (an SVD)
are here. Every method takes A = ``activations``, g = ``gradients``, g2 = ``gradients_pow2``,
g3 = ``gradients_pow3`` (float32 [N, K, h, w]; unused ones may be None) and returns the raw map
float32 [N, h, w] *before* post-processing (``postprocess``), as pytorch-grad-cam 1.5.7.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxcam.models.formulas import FORMULAS

Array = np.ndarray
Method = Callable[[Array, "Array | None", "Array | None", "Array | None"], Array]


def _f32(x: Array) -> Array:
    return np.asarray(x, dtype=np.float32)


class NumpyArrays:
    """The formulas' array vocabulary (see ``onnxcam.models.formulas``) for float32 numpy arrays."""

    @staticmethod
    def relu(x: Array) -> Array:
        return np.maximum(x, np.float32(0))

    @staticmethod
    def nonzero_or_zero(c: Array, x: Array) -> Array:
        return np.where(c != 0, x, np.float32(0))

    @staticmethod
    def sum_hw(x: Array) -> Array:
        return x.sum(axis=(2, 3), keepdims=True)

    @staticmethod
    def mean_hw(x: Array) -> Array:
        return x.mean(axis=(2, 3), keepdims=True)

    @staticmethod
    def sum_k(x: Array) -> Array:
        return x.sum(axis=1)

    @staticmethod
    def weighted(w: Array, A: Array) -> Array:
        """Σ_k w_k A_k for weights [N, K] or [N, K, 1, 1] and A [N, K, h, w]."""
        return np.einsum("nk,nkij->nij", _f32(w).reshape(w.shape[:2]), _f32(A))


NUMPY = NumpyArrays()


def closed_form(name: str, A: Array, g: Array | None = None, g2: Array | None = None,
                g3: Array | None = None) -> Array:
    """The raw map of closed-form method ``name`` (a formula of ``onnxcam.models.formulas``)."""
    as32 = [None if t is None else _f32(t) for t in (A, g, g2, g3)]
    return _f32(FORMULAS[name](NUMPY, *as32))


def weighted_activations(weights: Array, A: Array) -> Array:
    """Map of channel-weight methods (Score-CAM, Ablation-CAM): Σ_k w_k A_k."""
    return NUMPY.weighted(_f32(weights), A)


def first_component_projection(M: Array) -> Array:
    """Project M [N, K, h, w] on its first principal direction, per image, sign fixed.

    As pytorch-grad-cam's ``get_2d_projection``: NaN → 0 (and ±inf → ±float32 max, an image
    whose values exceed 1e18 scaled by its largest value: the map is the same); X = M reshaped to
    positions × channels [h·w, K]; X ← X − mean over positions (each channel centred);
    X = U S Vᵀ (reduced SVD; same first right singular vector v₁ as the full SVD);
    p = X v₁, reshaped to [h, w].
    Sign: v₁ is only defined up to sign and pytorch-grad-cam leaves it arbitrary (its map
    can come out inverted). Here p is negated when Σ_ij p_ij·(s_ij − mean s) < 0 with
    s = Σ_k M_k, i.e. the projection is made to correlate positively with the channel sum
    of M (Σ_k A for Eigen-CAM, Σ_k g·A for Eigen-Grad-CAM). Parity with pytorch-grad-cam
    therefore holds up to a per-image sign.
    """
    M = np.nan_to_num(_f32(M), nan=0.0, posinf=np.finfo(np.float32).max, neginf=-np.finfo(np.float32).max)
    peak = np.abs(M).max(axis=(1, 2, 3), keepdims=True)
    M = np.where(peak > 1e18, M / np.maximum(peak, 1), M)  # the SVD of overflowing values fails: same map
    n, k, h, w = M.shape
    X = M.reshape(n, k, h * w).transpose(0, 2, 1)
    X = X - X.mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    p = np.einsum("npk,nk->np", X, vt[:, 0, :])
    s = M.sum(axis=1).reshape(n, h * w)
    corr = (p * (s - s.mean(axis=1, keepdims=True))).sum(axis=1)
    p = p * np.where(corr < 0, np.float32(-1), np.float32(1))[:, None]
    return p.reshape(n, h, w).astype(np.float32)


def eigencam(A: Array, g: Array | None = None, g2: Array | None = None, g3: Array | None = None) -> Array:
    """Eigen-CAM: map = first-principal-component projection of A (see
    ``first_component_projection`` for the centring and the sign convention)."""
    return first_component_projection(A)


def eigengradcam(A: Array, g: Array, g2: Array | None = None, g3: Array | None = None) -> Array:
    """Eigen-Grad-CAM: map = first-principal-component projection of g ⊙ A."""
    return first_component_projection(_f32(g) * _f32(A))
