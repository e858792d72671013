"""Ablation-CAM channel weights through the graph's head-only path.

pytorch-grad-cam 1.5.7 (``AblationCAM.get_cam_weights``) semantics, for image n, class c:
  y   = S_c(A)                     (the image's own score),
  y_k = S_c(A with channel k = 0)  (only the head, target tensor → scores, runs again),
  w_k = (y − y_k) / y,   map = Σ_k w_k A_k   (ReLU comes with post-processing).
The K ablated copies of each image are fed to the graph's ``head_activations`` input
([M, K, h, w], NCHW) in chunks of ``batch_size`` and read back from ``head_logits`` [M, C].

Deviation, documented: pytorch-grad-cam's AblationLayer zeroes the channel only when the
activations' minimum is exactly 0 (the usual case after a ReLU, where both agree); otherwise
it writes ``min − 1e7`` (growing by 1e7 per position inside its batch). onnxcam always
zeroes, as the Ablation-CAM paper does. When y = 0 the weights are set to 0 (no division).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxcam.runtime.methods import weighted_activations

#: (activations [M, K, h, w], the image n they come from) → head logits [M, C]
HeadFn = Callable[[np.ndarray, int], np.ndarray]


def ablated_copies(A_n: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """Copies [len(channels), K, h, w] of A_n [K, h, w]; copy i has channel channels[i] zeroed."""
    copies = np.repeat(np.asarray(A_n, np.float32)[None], len(channels), axis=0)
    copies[np.arange(len(channels)), channels] = 0
    return copies


def ablation_weights(head: HeadFn, A: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                     batch_size: int = 128) -> np.ndarray:
    """Weights w [N, K] = (y − y_k)/y with y = ``scores`` [N] (the explained class's logit)
    and y_k = head(A_n with channel k zeroed)[classes[n]]."""
    n_img, k_chan = A.shape[:2]
    ablated = np.empty((n_img, k_chan), np.float32)
    for n in range(n_img):
        for k0 in range(0, k_chan, batch_size):
            channels = np.arange(k0, min(k0 + batch_size, k_chan))
            ablated[n, channels] = head(ablated_copies(A[n], channels), n)[:, int(classes[n])]
    y = np.asarray(scores, np.float32)[:, None]
    return np.divide(y - ablated, y, out=np.zeros_like(ablated), where=y != 0)


def ablationcam(head: HeadFn, A: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                batch_size: int = 128) -> np.ndarray:
    """Raw Ablation-CAM maps [N, h, w] = Σ_k w_k A_k with w from ``ablation_weights``."""
    return weighted_activations(ablation_weights(head, A, scores, classes, batch_size), A)
