"""``Explainer``: heatmaps from an explanation graph with numpy + onnxruntime only (CONTRACT §3)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from onnxcam.runtime.ablation import ablationcam
from onnxcam.runtime.errors import ClassIndexError, ModelError
from onnxcam.runtime.images import (Geometry, ImageLike, heatmap_to_original, image_pixels, load_image, load_pixels,
                                     preprocess, preprocess_image)
from onnxcam.runtime.input_methods import (INPUT_METHODS, INPUT_OUTPUTS, NEEDS_INPUT_GRADIENTS, InputMethodOptions,
                                           gradcam_counterfactual, missing_outputs_message, pixel_heatmaps,
                                           run_input_method)
from onnxcam.models.contract import CLASS_INPUT, HEAD_OUTPUT
from onnxcam.runtime.metadata import ModelInfo, read_model_info
from onnxcam.runtime.methods import METHODS, REQUIRED_OUTPUTS
from onnxcam.runtime.postprocess import postprocess
from onnxcam.runtime.providers import ProviderSpec, Runner
from onnxcam.runtime.scorecam import scorecam

CAM_METHODS = {**METHODS, "gradcam-counterfactual": gradcam_counterfactual}
#: The CAM family (what ``--method all`` means).
ALL_METHODS = tuple(METHODS) + ("scorecam", "ablationcam")
#: Counterfactual Grad-CAM and the input-space methods (these need ``--input-gradients``).
EXTRA_METHODS = ("gradcam-counterfactual",) + tuple(INPUT_METHODS)
EVERY_METHOD = ALL_METHODS + EXTRA_METHODS
_REQUIRED = {**REQUIRED_OUTPUTS, "gradcam-counterfactual": ("activations", "gradients"), **INPUT_METHODS}
Inputs = Union[np.ndarray, str, Path, Image.Image, Sequence[Union[str, Path, Image.Image]]]
ClassIndex = Union[None, int, Sequence[int], np.ndarray]
log = logging.getLogger(__name__)


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
    geometry: Optional[list[Geometry]] = field(default=None)
    attributions: Optional[np.ndarray] = field(default=None)

    def heatmaps_on_original(self) -> list[np.ndarray]:
        """Each heatmap mapped onto its original photo ([H0, W0], outside the crop = 0)."""
        if self.geometry is None:
            raise ValueError("inputs were a preprocessed batch: there is no original photo")
        return [heatmap_to_original(h, g) for h, g in zip(self.heatmaps, self.geometry)]


class Explainer:
    """One onnxruntime session on an explanation graph (``onnxcam export`` output).

    ``providers=None`` picks CUDA when it really initialises, else CPU; ``intra_op_threads``
    sets ORT's intra-op thread count; the graph runs on at most ``batch_size`` images at a time
    (also the Score-CAM masked-input batch); Ablation-CAM feeds ``head_batch_size`` ablated
    copies at a time to the head-only path.
    """

    def __init__(self, model_path: Union[str, Path], providers: Optional[Sequence[ProviderSpec]] = None,
                 intra_op_threads: Optional[int] = None, batch_size: int = 16,
                 head_batch_size: int = 128, io_binding: Optional[bool] = None) -> None:
        path = str(model_path)
        if not Path(path).is_file():
            raise ModelError(f"{path}: no such model file")
        if batch_size < 1 or head_batch_size < 1:
            raise ValueError("batch_size and head_batch_size must be ≥ 1")
        try:
            self.runner = Runner(path, providers, intra_op_threads, io_binding)
        except Exception as exc:  # noqa: BLE001  (ORT raises several types for bad files)
            first = (str(exc) or type(exc).__name__).splitlines()[0]
            raise ModelError(f"{path}: cannot load as an ONNX model ({first})") from None
        self.info: ModelInfo = read_model_info(self.runner.session, path)
        self.batch_size = int(batch_size if self.info.static_batch is None else self.info.static_batch)
        self.head_batch_size = int(head_batch_size)
        self._head_batch: Optional[int] = None  # image batch fed alongside head_activations

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, in priority order."""
        return self.runner.providers

    @property
    def labels(self) -> Optional[list[str]]:
        return self.info.labels

    def prepare(self, images: Sequence[Union[str, Path, Image.Image]]) -> tuple[np.ndarray, list[Geometry]]:
        """Load and preprocess images from the graph's ``onnxcam.preprocess`` metadata: a float
        batch in the model's layout, or for a raw-input graph the resized / cropped uint8 NHWC
        RGB pixels (the graph normalises them itself)."""
        if self.info.preprocess is None:
            raise ModelError(f"{self.info.path} has no onnxcam.preprocess metadata; "
                             "pass a preprocessed float32 batch instead of images")
        if self.info.raw_input:
            return load_pixels(list(images), self.info.preprocess)
        return preprocess(list(images), self.info.preprocess)

    def prepare_one(self, image: ImageLike) -> tuple[np.ndarray, Geometry]:
        """One image (path or PIL image) as ``prepare`` would: [C, H, W] / [H, W, C] float32, or
        uint8 [H, W, 3] pixels for a raw-input graph."""
        if self.info.preprocess is None:
            raise ModelError(f"{self.info.path} has no onnxcam.preprocess metadata; "
                             "pass a preprocessed float32 batch instead of images")
        img = load_image(image)
        if self.info.raw_input:
            return image_pixels(img, self.info.preprocess)
        return preprocess_image(img, self.info.preprocess)

    def explain(self, x: Inputs, method: str = "gradcam", class_index: ClassIndex = None,
                **options) -> Explanation:
        """Explain a batch with one method (see ``explain_many``)."""
        return self.explain_many(x, methods=[method], class_index=class_index, **options)[method]

    @property
    def available_methods(self) -> tuple[str, ...]:
        """The methods this graph can run (input-space ones need ``--input-gradients``)."""
        return tuple(m for m in EVERY_METHOD if self.unavailable_reason(m) is None)

    def unavailable_reason(self, method: str) -> Optional[str]:
        """Why this graph cannot run ``method`` (one line), or None when it can."""
        need = NEEDS_INPUT_GRADIENTS.get(method)
        if need is not None and need not in self.info.outputs:
            return missing_outputs_message(self.info.path, method, need)
        if method == "ablationcam" and self.info.head_input is None:
            return (f"{self.info.path} has no head-only path (onnxcam.head_input / {HEAD_OUTPUT}) "
                    "needed by ablationcam; re-export it with `onnxcam export`")
        if method == "scorecam" and self.info.raw_input:
            return (f"{self.info.path} takes raw uint8 pixels (exported with --raw-input) and scorecam "
                    "needs to mask the normalised float input; use a graph exported without --raw-input")
        return None

    def explain_many(self, x: Inputs, methods: Sequence[str] = ("gradcam",),
                     class_index: ClassIndex = None, **options) -> dict[str, Explanation]:
        """Explain a batch with several methods from ONE run of the graph (per batch chunk).

        ``x``: a float32 batch preprocessed for the model (its layout), or paths / PIL images;
        for a graph exported with ``--raw-input``, uint8 RGB pixels [N, H, W, 3] instead of floats.
        ``class_index``: None (top-1 everywhere), an int, or one int per image (negative =
        top-1). Score-CAM and Ablation-CAM run the model / its head again as they need, SmoothGrad
        and Integrated Gradients the whole graph on their samples (``batch_size`` at a time).
        ``options``: SmoothGrad / Integrated Gradients / Guided Grad-CAM settings, see
        ``input_methods.InputMethodOptions`` (e.g. ``n_steps=50, integration="gausslegendre"``).
        The method baked into the graph (``export --heatmap``) takes its heatmaps from the graph's
        ``heatmap`` output (equal to the numpy post-processing within 1e-4; ``raw`` is still computed).
        """
        methods = list(dict.fromkeys([methods] if isinstance(methods, str) else methods))
        unknown = [m for m in methods if m not in EVERY_METHOD]
        if unknown or not methods:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(EVERY_METHOD)}")
        for m in methods:
            reason = self.unavailable_reason(m)
            if reason is not None:
                raise ModelError(reason)
        opts = InputMethodOptions.from_kwargs(**options)
        x, geometry = self._as_batch(x)
        classes = self._classes(class_index, len(x))
        names = ["logits", "target"] + sorted({o for m in methods for o in _REQUIRED[m]})
        baked = self.info.heatmap_method if self.info.heatmap_method in methods else None
        if baked:  # the graph already computes this method's heatmap (export --heatmap)
            names.append("heatmap")
        out = dict(zip(names, self._run_graph(names, x, classes)))
        logits, target = out["logits"].astype(np.float32), out["target"].astype(np.int64)
        self._check_range(classes, logits.shape[1])
        size = x.shape[2:4] if self.info.layout == "NCHW" else x.shape[1:3]
        results = {}
        for m in methods:
            if m in INPUT_METHODS:
                attr, raw = run_input_method(m, out, x, target, self.info.layout, self._input_gradients, opts,
                                             self.batch_size)
                results[m] = Explanation(m, pixel_heatmaps(raw), logits, target, raw, geometry, attr)
                continue
            raw = self._raw(m, x, out, logits, target)
            use_baked = m == baked and out["heatmap"].shape == (len(x), *size)
            heatmaps = out["heatmap"].astype(np.float32) if use_baked else postprocess(raw, size)
            results[m] = Explanation(m, heatmaps, logits, target, raw, geometry)
        return results

    # -- internals -----------------------------------------------------------------------------
    def _raw(self, method: str, x: np.ndarray, out: dict, logits: np.ndarray, target: np.ndarray) -> np.ndarray:
        A = out["activations"]
        if method == "scorecam":
            carried = [name for name in INPUT_OUTPUTS
                       if name in self.info.outputs and name not in self.info.input_gradient_switches]
            if carried:  # onnxruntime runs every node, fetched or not
                log.warning("%s carries reverse passes to the input (%s): Score-CAM pays them on every masked "
                            "batch; re-export it with this version's `onnxcam export` (its input-gradient passes "
                            "run only when fetched) or without --input-gradients",
                            self.info.path, ", ".join(carried))
            return scorecam(self._scores, x, A, target, self.info.layout, self.batch_size)
        if method == "ablationcam":
            y = logits[np.arange(len(target)), target]
            return ablationcam(self._head, A, y, target, self.head_batch_size)
        return CAM_METHODS[method](A, out.get("gradients"), out.get("gradients_pow2"), out.get("gradients_pow3"))

    def _as_batch(self, x: Inputs) -> tuple[np.ndarray, Optional[list[Geometry]]]:
        if isinstance(x, (str, Path, Image.Image)):
            x = [x]
        if not isinstance(x, np.ndarray):
            if len(x) == 0:
                raise ValueError("no images given")
            x, geometry = self.prepare(x)
        else:
            geometry = None
        if self.info.raw_input:
            return self._as_pixels(x), geometry
        if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating) or len(x) == 0:
            raise ValueError(f"x must be a non-empty float batch [N, ...] of rank 4 in the model's "
                             f"layout ({self.info.layout}), got {x.dtype} {x.shape}")
        want = self.info.image_shape
        bad = [i for i in range(1, 4) if isinstance(want[i], int) and want[i] > 0 and want[i] != x.shape[i]]
        if bad:
            raise ValueError(f"x has shape {x.shape}, the model's input '{self.info.image_input}' "
                             f"expects {list(want)}")
        return x.astype(self.info.image_dtype, copy=False), geometry

    def _as_pixels(self, x: np.ndarray) -> np.ndarray:
        """Check a batch for a raw-input graph: uint8 RGB pixels [N, H, W, 3] at the input size."""
        H, W = self.info.input_size
        if x.dtype != np.uint8:
            raise ValueError(f"{self.info.path} takes raw uint8 RGB pixels [N, {H}, {W}, 3] (exported with "
                             f"--raw-input), got a {x.dtype} batch; pass uint8 pixels or image files, "
                             "not a preprocessed float batch")
        if x.ndim != 4 or len(x) == 0 or x.shape[1:] != (H, W, 3):
            raise ValueError(f"x has shape {x.shape}; {self.info.path} takes uint8 RGB pixels [N, {H}, {W}, 3]")
        return x

    def _classes(self, class_index: ClassIndex, n: int) -> np.ndarray:
        if class_index is None:
            return np.full(n, -1, np.int64)
        if isinstance(class_index, (bool, np.bool_)):
            raise ClassIndexError(f"class_index must be an int or a list of ints, got {class_index!r}")
        if np.ndim(class_index) == 0:
            classes = np.full(n, int(class_index), np.int64)
        else:
            classes = np.asarray(list(class_index), dtype=np.int64).reshape(-1)
            if len(classes) != n:
                raise ClassIndexError(f"got {len(classes)} class indices for {n} images")
        if self.info.num_classes is not None:
            self._check_range(classes, self.info.num_classes)
        return classes

    @staticmethod
    def _check_range(classes: np.ndarray, num_classes: int) -> None:
        bad = classes[classes >= num_classes]
        if len(bad):
            raise ClassIndexError(f"class index {int(bad[0])} is out of range: the model has "
                                  f"{num_classes} classes (0..{num_classes - 1}; negative = top-1)")

    def _chunks(self, n: int, size: int):
        for start in range(0, n, size):
            yield start, min(start + size, n)

    def _run_graph(self, names: list[str], x: np.ndarray, classes: np.ndarray) -> list[np.ndarray]:
        """Run the graph over ``x`` in chunks; a static batch axis gets its last chunk padded."""
        parts: list[list[np.ndarray]] = [[] for _ in names]
        static = self.info.static_batch
        for s, e in self._chunks(len(x), self.batch_size):
            xb, cb = x[s:e], classes[s:e]
            if static is not None and e - s < static:  # pad by repeating the last image
                pad = static - (e - s)
                xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
                cb = np.concatenate([cb, np.repeat(cb[-1:], pad)])
            feeds = {self.info.image_input: xb, CLASS_INPUT: cb, **self._switch(names)}
            for part, arr in zip(parts, self.runner.run(names, feeds)):
                part.append(arr[: e - s])
        return [np.concatenate(p) for p in parts]

    def _switch(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Turns off (feeds ``false`` to the switch of) each reverse pass to the input whose output
        is not among ``names``. On is the switches' default and is not fed: an overridden
        initializer cannot be IO-bound, so only the runs that skip a pass leave IO binding (CUDA)
        for a plain ``session.run``."""
        return {switch: np.array(False) for output, switch in self.info.input_gradient_switches.items()
                if output not in names}

    def _input_gradients(self, xb: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """∂S/∂x for a batch of (SmoothGrad / IG) inputs and their explicit classes."""
        return self._run_graph(["input_gradients"], xb, classes)[0]

    def _scores(self, xb: np.ndarray) -> np.ndarray:
        """Logits of a batch (Score-CAM's masked inputs); the class input is all −1."""
        return self._run_graph(["logits"], xb, np.full(len(xb), -1, np.int64))[0]

    def _head(self, acts: np.ndarray) -> np.ndarray:
        """Head-only path: ``head_logits`` for activations [M, K, h, w]. The image input is
        required but unused there: it gets an empty batch (zeros of one batch when the graph
        rejects that or its batch axis is static)."""
        feeds = {self.info.head_input: acts.astype(np.float32)}
        if self._head_batch is None:
            self._head_batch = self.info.static_batch or 0
            try:
                return self.runner.run([HEAD_OUTPUT], {**feeds, **self._dummy(self._head_batch)})[0]
            except Exception:  # noqa: BLE001  (an op that cannot take an empty batch)
                self._head_batch = self.info.static_batch or 1
        return self.runner.run([HEAD_OUTPUT], {**feeds, **self._dummy(self._head_batch)})[0]

    def _dummy(self, batch: int) -> dict[str, np.ndarray]:
        dims = list(self.info.image_shape[1:])
        hw = self.info.input_size or (1, 1)
        spatial = [1, 2] if self.info.layout == "NCHW" else [0, 1]
        for i, d in enumerate(dims):
            if not (isinstance(d, int) and d > 0):
                dims[i] = hw[spatial.index(i)] if i in spatial else 3
        return {self.info.image_input: np.zeros([batch] + dims, self.info.image_dtype),
                CLASS_INPUT: np.full(batch, -1, np.int64), **self._switch([HEAD_OUTPUT])}
