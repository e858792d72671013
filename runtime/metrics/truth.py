"""The images of an evaluation and their ground truth: a folder, or a manifest.

- a folder: its images; boxes from a boxes file (JSON, CSV or COCO), else a Pascal VOC
  ``<stem>.xml`` or a ``<stem>_mask.*`` beside each image (``metrics.ground_truth``);
- a manifest (``.csv`` / ``.parquet``, a local path or a ``pyarrow.fs`` URI): one row per image
  with ``path`` and optionally ``class``, ``boxes`` (JSON ``[[x_min, y_min, x_max, y_max], ...]`` in
  the photo's pixels) and ``mask`` (a mask image), read by ``datasets.sources``; a row without
  them falls back to the folder rules for a local image.

:meth:`EvaluationData.load` reads one image and its ground truth for the dataset engine (and is
picklable, for Ray's workers).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from onnxcam.runtime.datasets.engine import readable
from onnxcam.runtime.datasets.sources import Source, read_manifest
from onnxcam.runtime.datasets.storage import is_uri, read_bytes
from onnxcam.runtime.images import load_image
from onnxcam.runtime.metrics.ground_truth import find_mask, load_ground_truth, mask_ground_truth
from onnxcam.runtime.metrics.localisation import as_boxes

NO_TRUTH = ("no ground truth (no entry in the boxes file or manifest, no <stem>_mask.png, no <stem>.xml), needed "
            "by the localisation metrics (leave them out with --metrics faithfulness,complexity)")


@dataclass
class EvaluationData:
    """The sources of an evaluation and where their ground truth comes from."""

    sources: list[Source]
    boxes: dict[str, list[list[float]]] = field(default_factory=dict)  # a folder's boxes file, by file name
    mask_value: int | None = None  # object pixels in masks (None: any non-zero)
    per_stem: dict[str, int] = field(default_factory=dict)  # mask values of single images

    @classmethod
    def from_manifest(cls, location: str, mask_value: int | None = None,
                      per_stem: dict[str, int] | None = None) -> EvaluationData:
        """The rows of a manifest (``SourceError`` for a bad one)."""
        return cls(read_manifest(location), {}, mask_value, per_stem or {})

    def has_ground_truth(self) -> bool:
        """Whether any image has ground truth (then the localisation metrics are on by default)."""
        def local_truth(s: Source) -> bool:
            if is_uri(s.path):
                return False
            p = Path(s.path)
            return p.name in self.boxes or p.stem in self.boxes or p.with_suffix(".xml").is_file() \
                or find_mask(p) is not None
        return any(s.boxes is not None or s.mask is not None or local_truth(s) for s in self.sources)

    def truth(self, source: Source, size: tuple[int, int]) -> np.ndarray | None:
        """The ground truth of ``source`` in the photo's pixels (boxes [K, 4] or a mask), or None."""
        stem = Path(source.path.rpartition("/")[2] if is_uri(source.path) else source.path).stem
        value = self.per_stem.get(stem, self.mask_value)
        if source.boxes is not None:
            return as_boxes(np.asarray(source.boxes, np.float64), size)
        if source.mask is not None:
            with Image.open(io.BytesIO(read_bytes(source.mask))) as mask:
                return mask_ground_truth(mask, source.mask.rpartition("/")[2], size, value)
        if is_uri(source.path):
            return None
        return load_ground_truth(Path(source.path), size, self.boxes, value)

    def load(self, explainer: Any, source: Source, need_ground_truth: bool) -> tuple[np.ndarray, Any, Any]:
        """(x, geometry, ground truth or None) of one image; raises OnnxcamError / ValueError."""
        image = load_image(readable(source.path))
        truth = None
        if need_ground_truth:
            try:
                truth = self.truth(source, (image.height, image.width))
            except OSError as exc:
                raise ValueError(f"cannot read its mask {source.mask} ({type(exc).__name__}: {exc})") from None
            if truth is None:
                raise ValueError(NO_TRUTH)
        x, geometry = explainer.prepare_image(image)
        return x, geometry, truth


@dataclass
class Loader:
    """``load(explainer, source)`` of an evaluation (picklable, for Ray's workers)."""

    data: EvaluationData
    need_ground_truth: bool

    def __call__(self, explainer: Any, source: Source) -> tuple[np.ndarray, Any, Any]:
        return self.data.load(explainer, source, self.need_ground_truth)
