"""What an explanation returns (:class:`Explanation`) and how a class to explain is given
(:func:`class_indices`): the types the runtime, the dataset engines and the server share."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from onnxcam.models.errors import param
from onnxcam.runtime.errors import ClassIndexError
from onnxcam.runtime.images import Geometry, heatmap_to_original

ClassIndex = int | Sequence[int] | np.ndarray | None
_INT64 = np.iinfo(np.int64)


@dataclass
class Explanation:
    """One method's result for a batch: ``heatmaps`` float32 [N, H, W] in [0, 1] at the model
    input resolution, ``logits`` float32 [N, C], ``class_index`` int64 [N] (the class
    explained), ``raw`` float32 [N, h, w] (the map before post-processing) and, for inputs
    given as files / PIL images, each image's ``geometry`` (to map back onto the photo).

    Input-space methods (``saliency``, ``guided-backprop``, ``guided-gradcam``, ``smoothgrad``,
    ``integrated-gradients``) also fill ``attributions`` (float32, the input's shape and layout,
    signed); their ``raw`` is the per-pixel map [N, H, W] and ``heatmaps`` = abs(raw) clipped at
    its 99th percentile and scaled to [0, 1] (see ``input_methods``)."""

    method: str
    heatmaps: np.ndarray
    logits: np.ndarray
    class_index: np.ndarray
    raw: np.ndarray
    geometry: list[Geometry] | None = field(default=None)
    attributions: np.ndarray | None = field(default=None)

    def part(self, images: slice) -> Explanation:
        """This explanation of the batch's ``images`` only."""
        return Explanation(self.method, self.heatmaps[images], self.logits[images], self.class_index[images],
                           self.raw[images], None if self.geometry is None else self.geometry[images],
                           None if self.attributions is None else self.attributions[images])

    def select(self, index: int) -> Explanation:
        """This explanation of image ``index`` alone (a batch of one)."""
        return self.part(slice(index, index + 1))

    def heatmaps_on_original(self) -> list[np.ndarray]:
        """Each heatmap mapped onto its original photo ([H0, W0], outside the crop = 0)."""
        if self.geometry is None:
            raise ValueError("inputs were a preprocessed batch: there is no original photo")
        return [heatmap_to_original(h, g) for h, g in zip(self.heatmaps, self.geometry)]


def class_indices(value: ClassIndex, n: int, num_classes: int | None = None) -> np.ndarray:
    """``class_index`` as int64 [n]: None → all −1 (top-1), one integer for every image, or one per
    image (negative = top-1). Booleans, floats, strings, values outside int64 and classes the
    model does not have are refused with a :class:`ClassIndexError`."""
    if value is None:
        return np.full(n, -1, np.int64)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu":
            raise ClassIndexError(f"{param('class_index')} must hold integers, got an array of {value.dtype}")
        items = value.reshape(-1).tolist()
    else:
        items = [value] if np.ndim(value) == 0 else list(np.asarray(value, dtype=object).reshape(-1))
    for item in items:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
            raise ClassIndexError(f"{param('class_index')} must be an integer or one integer per image, "
                                  f"got {item!r}")
        if not _INT64.min <= int(item) <= _INT64.max:
            raise ClassIndexError(f"{param('class_index')} {item} is out of range")
    classes = np.array([int(i) for i in items], np.int64)
    if np.ndim(value) == 0:
        classes = np.full(n, classes[0], np.int64)
    elif len(classes) != n:
        raise ClassIndexError(f"got {len(classes)} class indices for {n} images")
    if num_classes is not None and (classes >= num_classes).any():
        bad = int(classes[classes >= num_classes][0])
        raise ClassIndexError(f"class index {bad} is out of range: the model has {num_classes} classes "
                              f"(0..{num_classes - 1}; negative = top-1)")
    return classes
