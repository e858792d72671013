"""Input-space (pixel-level) methods from a graph exported with ``--input-gradients``.

numpy only. The graph's optional outputs are g_x = ``input_gradients`` = ∂S/∂x and
G = ``guided_gradients`` (Guided Backpropagation), both in the image input's layout; S is the
explained class's pre-softmax score. Every method returns
``attributions`` (float32, the input's shape and layout, signed) and the per-pixel ``raw`` map
[N, H, W]; the displayed ``heatmaps`` come from :func:`pixel_heatmaps`.

| method | attributions | raw map |
|---|---|---|
| ``saliency`` (Simonyan et al. 2014) | g_x (signed; Captum's ``Saliency(abs=True)`` is abs(g_x)) | max_c abs(g_x) |
| ``guided-backprop`` (Springenberg et al. 2015) | G | Σ_c G |
| ``guided-gradcam`` (Selvaraju et al. 2017) | G ⊙ up(ReLU(Σ_k w_k A_k)), w_k = mean_ij g_kij | Σ_c |
| ``smoothgrad`` (Smilkov et al. 2017) | (1/n) Σ_s g_x(x + ε_s), ε_s ~ N(0, σ²) | max_c abs(·) |
| ``integrated-gradients`` (Sundararajan et al. 2017) | (x − x')·Σ_k w_k g_x(x' + α_k(x − x')) | Σ_c |

The method registry (``runtime.registry``) says which graph outputs each method reads.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from collections.abc import Callable

import numpy as np

from onnxcam.runtime.postprocess import finite
from onnxcam.runtime.resize import resize_bilinear

Array = np.ndarray

#: Integration rules of ``integrated-gradients``, as Captum's ``approximation_methods``.
INTEGRATION_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


@dataclass(frozen=True)
class InputMethodOptions:
    """Options of the sampling methods (``Explainer.explain(..., **options)``).

    ``n_samples``/``noise_level``/``seed``: SmoothGrad draws n_samples noisy copies with
    σ = noise_level·(max x − min x) per image (the paper's 10–20 %), from ``seed``.
    ``n_steps``/``integration``/``baseline``: Integrated Gradients' number of points, rule
    (Captum's default ``gausslegendre``) and baseline x' (None = zeros in the model's
    normalised input space; else an array broadcastable to the batch, or a float).
    ``cam_upsample``: how ``guided-gradcam`` upsamples Grad-CAM to the input: ``bilinear``
    (half-pixel centres, as the paper and Captum's ``interpolate_mode="bilinear"``) or
    ``nearest`` (Captum's default).
    """

    n_samples: int = 25
    noise_level: float = 0.15
    seed: int = 0
    n_steps: int = 50
    integration: str = "gausslegendre"
    baseline: object = None
    cam_upsample: str = "bilinear"

    @classmethod
    def from_kwargs(cls, **kwargs) -> InputMethodOptions:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown method option(s) {unknown}; known: {', '.join(sorted(names))}")
        opts = cls(**kwargs)
        if opts.n_samples < 1 or opts.n_steps < 1:
            raise ValueError("n_samples and n_steps must be ≥ 1")
        if opts.integration not in INTEGRATION_METHODS:
            raise ValueError(f"unknown integration {opts.integration!r}; choose from {', '.join(INTEGRATION_METHODS)}")
        if opts.integration.startswith("riemann") and opts.n_steps < 2:
            raise ValueError("Riemann rules need n_steps ≥ 2")
        if opts.cam_upsample not in ("bilinear", "nearest"):
            raise ValueError(f"cam_upsample must be 'bilinear' or 'nearest', got {opts.cam_upsample!r}")
        return opts


# -- helpers ----------------------------------------------------------------------------------
def channel_axis(layout: str) -> int:
    return 1 if layout == "NCHW" else 3


def abs_max_channels(attr: Array, layout: str) -> Array:
    """max_c abs(attr) → [N, H, W] (Simonyan et al.'s saliency map)."""
    return np.abs(np.asarray(attr, np.float32)).max(axis=channel_axis(layout))


def sum_channels(attr: Array, layout: str) -> Array:
    """Σ_c attr → [N, H, W] (signed)."""
    return np.asarray(attr, np.float32).sum(axis=channel_axis(layout))


def pixel_heatmaps(raw: Array, percentile: float = 99.0) -> Array:
    """Displayable [0, 1] maps from per-pixel maps [N, H, W]: h = min(abs(raw) / q, 1) with q the
    image's ``percentile``-th percentile of abs(raw) (percentile clipping; q = 0 gives zeros)."""
    mag = np.abs(finite(raw))
    q = np.percentile(mag.reshape(len(mag), -1), percentile, axis=1).astype(np.float32)[:, None, None]
    return np.where(q > 0, np.minimum(mag / np.where(q > 0, q, 1), 1), 0).astype(np.float32)


# -- methods on the graph's outputs -----------------------------------------------------------
def saliency(input_gradients: Array, layout: str = "NCHW") -> tuple[Array, Array]:
    """Saliency: attributions = g_x (signed);  raw = max_c abs(g_x)."""
    g = np.asarray(input_gradients, np.float32)
    return g, abs_max_channels(g, layout)


def guided_backprop(guided_gradients: Array, layout: str = "NCHW") -> tuple[Array, Array]:
    """Guided Backpropagation: attributions = G (every ReLU passed back dy·[x > 0]·[dy > 0]);
    raw = Σ_c G."""
    G = np.asarray(guided_gradients, np.float32)
    return G, sum_channels(G, layout)


def gradcam_map(A: Array, g: Array) -> Array:
    """ReLU(Σ_k w_k A_k), w_k = mean_ij g_kij → [N, h, w] (Captum's LayerGradCam, relu_attributions=True)."""
    A, g = np.asarray(A, np.float32), np.asarray(g, np.float32)
    return np.maximum(np.einsum("nk,nkij->nij", g.mean(axis=(2, 3)), A), 0)


def upsample(maps: Array, size: tuple[int, int], mode: str = "bilinear") -> Array:
    """[N, h, w] → [N, H, W]: bilinear with half-pixel centres, or nearest (index ⌊i·h/H⌋, as
    torch's ``interpolate(mode="nearest")``)."""
    if mode == "bilinear":
        return resize_bilinear(np.asarray(maps, np.float32), size)
    h, w = maps.shape[1:]
    rows = np.minimum((np.arange(size[0]) * h) // size[0], h - 1)
    cols = np.minimum((np.arange(size[1]) * w) // size[1], w - 1)
    return np.asarray(maps, np.float32)[:, rows][:, :, cols]


def guided_gradcam(guided_gradients: Array, A: Array, g: Array, layout: str = "NCHW",
                   upsample_mode: str = "bilinear") -> tuple[Array, Array]:
    """Guided Grad-CAM: attributions = G ⊙ up(ReLU(Σ_k w_k A_k)), w_k = mean_ij g_kij, the
    Grad-CAM map upsampled to the input (not normalised: Captum's ``GuidedGradCam``);
    raw = Σ_c attributions."""
    G = np.asarray(guided_gradients, np.float32)
    size = G.shape[2:4] if layout == "NCHW" else G.shape[1:3]
    cam = upsample(gradcam_map(A, g), size, upsample_mode)
    attr = G * np.expand_dims(cam, channel_axis(layout))
    return attr, sum_channels(attr, layout)


# -- sampling methods: many graph runs, memory-bounded ----------------------------------------
GradientFn = Callable[[Array, Array], Array]  # (inputs [M, ...], classes [M]) -> ∂S/∂inputs


def integration_rule(n_steps: int, method: str = "gausslegendre") -> tuple[Array, Array]:
    """(weights, alphas) of Captum's ``approximation_parameters``: ``gausslegendre``: the
    n-point Gauss-Legendre rule mapped from [−1, 1] to [0, 1] (α = (1 + t)/2, w = w_t/2);
    Riemann rules: w = 1/n with α on the left/right/middle points, or ``riemann_trapezoid``:
    α = linspace(0, 1, n), w = 1/n with the first and last halved (Captum's weights, whose sum
    is 1 − 1/n)."""
    if method == "gausslegendre":
        t, w = np.polynomial.legendre.leggauss(n_steps)
        return 0.5 * w, 0.5 * (1 + t)
    w = np.full(n_steps, 1.0 / n_steps)
    if method == "riemann_trapezoid":
        w[0] /= 2
        w[-1] /= 2
        alphas = np.linspace(0, 1, n_steps)
    elif method == "riemann_left":
        alphas = np.linspace(0, 1 - 1 / n_steps, n_steps)
    elif method == "riemann_right":
        alphas = np.linspace(1 / n_steps, 1, n_steps)
    elif method == "riemann_middle":
        alphas = np.linspace(1 / (2 * n_steps), 1 - 1 / (2 * n_steps), n_steps)
    else:
        raise ValueError(f"unknown integration {method!r}; choose from {', '.join(INTEGRATION_METHODS)}")
    return w, alphas.astype(np.float32).astype(np.float64)  # Captum's float32 torch.linspace


def _accumulate(grad_fn: GradientFn, n_images: int, n_points: int, make_input: Callable[[Array, Array], Array],
                weights: Array, classes: Array, shape: tuple, batch_size: int) -> Array:
    """Σ_p weights[p]·grad_fn(make_input(i, p)) per image i, over the n_images·n_points pairs
    taken ``batch_size`` at a time (at most batch_size inputs exist at once)."""
    total = np.zeros((n_images, *shape), np.float64)
    pairs = n_images * n_points
    for start in range(0, pairs, batch_size):
        idx = np.arange(start, min(start + batch_size, pairs))
        img, point = idx // n_points, idx % n_points
        grads = grad_fn(make_input(img, point), classes[img]).astype(np.float64)
        np.add.at(total, img, grads * weights[point].reshape(-1, *([1] * len(shape))))
    return total


def smoothgrad(grad_fn: GradientFn, x: Array, classes: Array, layout: str = "NCHW", n_samples: int = 25,
               noise_level: float = 0.15, seed: int = 0, batch_size: int = 16) -> tuple[Array, Array]:
    """SmoothGrad: attributions = (1/n) Σ_s ∂S/∂x(x + ε_s), ε_s ~ N(0, σ²), σ = noise_level·
    (max x − min x) per image, for the class explained on the clean image; raw = max_c abs(·).
    Noise is drawn per batch from ``seed`` (reproducible for a given batch_size)."""
    x = np.asarray(x)
    sigma = noise_level * (x.reshape(len(x), -1).max(1) - x.reshape(len(x), -1).min(1))
    rng = np.random.default_rng(seed)

    def make(img: Array, point: Array) -> Array:
        noise = rng.standard_normal((len(img), *x.shape[1:])).astype(np.float32)
        return (x[img] + noise * sigma[img].reshape(-1, 1, 1, 1).astype(np.float32)).astype(x.dtype)

    weights = np.full(n_samples, 1.0 / n_samples)
    attr = _accumulate(grad_fn, len(x), n_samples, make, weights, classes, x.shape[1:], batch_size).astype(np.float32)
    return attr, abs_max_channels(attr, layout)


def integrated_gradients(grad_fn: GradientFn, x: Array, classes: Array, layout: str = "NCHW",
                         baseline: object = None, n_steps: int = 50, integration: str = "gausslegendre",
                         batch_size: int = 16) -> tuple[Array, Array]:
    """Integrated Gradients: attributions = (x − x')·Σ_k w_k ∂S/∂x(x' + α_k(x − x')) with the
    rule's (w_k, α_k) (:func:`integration_rule`), x' = ``baseline`` (None: zeros in the
    normalised input space), for the class explained on x; raw = Σ_c attributions.
    Completeness: Σ attributions ≈ S(x) − S(x')."""
    x = np.asarray(x)
    base = np.zeros_like(x) if baseline is None else np.broadcast_to(np.asarray(baseline, x.dtype), x.shape)
    weights, alphas = integration_rule(n_steps, integration)
    delta = (x.astype(np.float64) - base)

    def make(img: Array, point: Array) -> Array:
        a = alphas[point].reshape(-1, 1, 1, 1)
        return (base[img] + a * delta[img]).astype(x.dtype)

    summed = _accumulate(grad_fn, len(x), n_steps, make, weights, classes, x.shape[1:], batch_size)
    attr = (delta * summed).astype(np.float32)
    return attr, sum_channels(attr, layout)
