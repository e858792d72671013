"""How the metrics run a model: batched class scores from an ``Explainer`` or a callable.

Every metric takes ``model``: an :class:`onnxcam.runtime.Explainer` (its session is run for the
``logits`` output only, ``class_index`` fed as −1) or any callable ``f(x) -> logits [N, C]`` on a
float32 batch in the model's layout (handy for tests and other runtimes).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from onnxcam.runtime.postprocess import softmax

if TYPE_CHECKING:  # pragma: no cover
    from onnxcam.runtime.explainer import Explainer

Model: TypeAlias = "Explainer | Callable[[np.ndarray], np.ndarray]"
SCORES = ("probability", "logit")


class Scorer:
    """Logits / class scores of batches, ``batch_size`` images per session run."""

    def __init__(self, model: Model, batch_size: int | None = None, layout: str | None = None) -> None:
        from onnxcam.runtime.explainer import Explainer

        if isinstance(model, Explainer):
            self._fn = model.scores
            self.layout = layout or model.info.layout
            self.batch_size = int(batch_size or model.batch_size)
        elif callable(model):
            self._fn = model
            self.layout = layout or "NCHW"
            self.batch_size = int(batch_size or 32)
        else:
            raise TypeError(f"model must be an Explainer or a callable x -> logits, got {type(model).__name__}")
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be NCHW or NHWC, got {self.layout!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be ≥ 1")

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits [N, C] of ``x``, run in chunks of ``batch_size``."""
        parts = [np.asarray(self._fn(np.ascontiguousarray(x[s:s + self.batch_size], dtype=np.float32)),
                            dtype=np.float32) for s in range(0, len(x), self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def scores(self, x: np.ndarray, classes: np.ndarray, score: str = "probability") -> np.ndarray:
        """Score of ``classes[i]`` for each image ``x[i]`` (softmax probability or logit)."""
        return class_score(self.logits(x), classes, score)

    def hw(self, x: np.ndarray) -> tuple[int, int]:
        return tuple(x.shape[2:4]) if self.layout == "NCHW" else tuple(x.shape[1:3])

    def spatial(self, maps: np.ndarray) -> np.ndarray:
        """Per-pixel maps [..., H, W] → broadcastable against images [..., C, H, W] / [..., H, W, C]."""
        return maps[..., None, :, :] if self.layout == "NCHW" else maps[..., None]


def class_score(logits: np.ndarray, classes: np.ndarray, score: str = "probability") -> np.ndarray:
    """``softmax(logits)[i, c_i]`` (``score='probability'``) or ``logits[i, c_i]`` (``'logit'``)."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    values = softmax(logits) if score == "probability" else np.asarray(logits, np.float32)
    classes = np.asarray(classes, np.int64)
    if np.any(classes >= values.shape[1]) or np.any(classes < 0):
        bad = int(classes[(classes >= values.shape[1]) | (classes < 0)][0])
        raise ValueError(f"class index {bad} is out of range ({values.shape[1]} classes)")
    return values[np.arange(len(classes)), classes]


def resolve_classes(scorer: Scorer, x: np.ndarray, class_index) -> tuple[np.ndarray, np.ndarray]:
    """(logits of ``x``, class per image): ``class_index`` None / negative → top-1 of ``x``."""
    logits = scorer.logits(x)
    n = len(x)
    if class_index is None:
        classes = np.full(n, -1, np.int64)
    elif np.ndim(class_index) == 0:
        classes = np.full(n, int(class_index), np.int64)
    else:
        classes = np.asarray(list(class_index), np.int64).reshape(-1)
        if len(classes) != n:
            raise ValueError(f"got {len(classes)} class indices for {n} images")
    top = logits.argmax(axis=1)
    classes = np.where(classes < 0, top, classes)
    if np.any(classes >= logits.shape[1]):
        raise ValueError(f"class index {int(classes.max())} is out of range ({logits.shape[1]} classes)")
    return logits, classes


def check_inputs(scorer: Scorer, x: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 batch ``x`` [N, ...] and maps [N, H, W] of the same N and spatial size."""
    x = np.asarray(x, np.float32)
    maps = np.asarray(maps, np.float32)
    if x.ndim != 4:
        raise ValueError(f"x must be a batch [N, C, H, W] / [N, H, W, C], got shape {x.shape}")
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3 or len(maps) != len(x) or tuple(maps.shape[1:]) != scorer.hw(x):
        raise ValueError(f"maps must be [N, H, W] = [{len(x)}, {', '.join(map(str, scorer.hw(x)))}] "
                         f"matching x {x.shape} ({scorer.layout}), got {maps.shape}")
    return x, maps


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, size):
        yield s, min(s + size, n)


def descending_order(maps: np.ndarray) -> np.ndarray:
    """Pixel indices [N, H·W] from most to least salient (ties in raster order)."""
    flat = np.asarray(maps, np.float32).reshape(len(maps), -1)
    return np.argsort(-flat, axis=1, kind="stable")


def top_fraction_mask(maps: np.ndarray, percent: float) -> np.ndarray:
    """Boolean [N, H, W]: the round(percent/100 · H·W) most salient pixels of each map
    (ties broken in raster order)."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be in [0, 100], got {percent}")
    n, h, w = maps.shape
    k = int(round(percent / 100.0 * h * w))
    order = descending_order(maps)[:, :k]
    mask = np.zeros((n, h * w), bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask.reshape(n, h, w)


__all__: Sequence[str] = ("Scorer", "class_score", "softmax")
