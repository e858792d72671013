"""Score-CAM channel weights, as pytorch-grad-cam 1.5.7's ``ScoreCAM.get_cam_weights``.

For image n, class c and channel k:
  M_k = upsample(A_k) to the input size, bilinear with align_corners=True;
  M_k ← (M_k − min M_k) / (max M_k − min M_k + 1e-8);
  s_k = S_c(x ⊙ M_k)   (pre-softmax score; x is the *preprocessed* input, as pytorch-grad-cam);
  w = softmax_k(s)     — note: pytorch-grad-cam's softmax runs over the K channel scores of
                          the class, not over the classes;
  map = Σ_k w_k A_k    (ReLU comes with post-processing).
The K masked copies of each image run through the model in batches of ``batch_size``.
A channel that is all zeros (common after ReLU/ReLU6) has the mask 0, so its masked input is
all zeros: that score is computed once and shared (exact; often half the channels).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxcam.runtime.methods import weighted_activations
from onnxcam.runtime.resize import resize_bilinear_align_corners

ScoreFn = Callable[[np.ndarray], np.ndarray]  # preprocessed batch → logits [B, C]


def channel_masks(A_n: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Masks [B, H, W] for channels A_n [B, h, w]: align-corners upsampling, then per-channel
    min-max with eps 1e-8."""
    up = resize_bilinear_align_corners(A_n, size)
    lo = up.min(axis=(1, 2), keepdims=True)
    hi = up.max(axis=(1, 2), keepdims=True)
    return (up - lo) / (hi - lo + np.float32(1e-8))


def scorecam_weights(score: ScoreFn, x: np.ndarray, A: np.ndarray, classes: np.ndarray,
                     layout: str = "NCHW", batch_size: int = 16) -> np.ndarray:
    """Weights w [N, K] = softmax over k of S_c(x ⊙ M_k) (see module docstring)."""
    n_img, k_chan = A.shape[:2]
    size = x.shape[2:4] if layout == "NCHW" else x.shape[1:3]
    scores = np.empty((n_img, k_chan), np.float32)
    zero_logits = None  # logits of the all-zero input, shared by every all-zero channel
    for n in range(n_img):
        live = np.flatnonzero(A[n].reshape(k_chan, -1).any(axis=1))
        if len(live) < k_chan:
            if zero_logits is None:
                zero_logits = score(np.zeros_like(x[:1], dtype=np.float32))[0]
            scores[n] = zero_logits[int(classes[n])]
        for k0 in range(0, len(live), batch_size):
            channels = live[k0:k0 + batch_size]
            masks = channel_masks(A[n, channels], size)
            masks = masks[:, None] if layout == "NCHW" else masks[..., None]
            logits = score((x[n][None] * masks).astype(np.float32))
            scores[n, channels] = logits[:, int(classes[n])]
    scores = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=1, keepdims=True)


def scorecam(score: ScoreFn, x: np.ndarray, A: np.ndarray, classes: np.ndarray,
             layout: str = "NCHW", batch_size: int = 16) -> np.ndarray:
    """Raw Score-CAM maps [N, h, w] = Σ_k w_k A_k with w from ``scorecam_weights``."""
    return weighted_activations(scorecam_weights(score, x, A, classes, layout, batch_size), A)
