"""``Explainer``: heatmaps from an explanation graph with numpy + onnxruntime only (docs/contract.md §3).

The methods come from the registry (``runtime.registry``): one graph run per batch chunk gives
every output the requested methods read; each method then computes its map from them (running
the graph or its head again where it must).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from onnxcam.models.contract import (CLASS_INPUT, HEAD_OUTPUT, HEATMAP, INPUT_GRADIENT_OUTPUTS, INPUT_GRADIENTS,
                                     LOGITS, TARGET)
from onnxcam.models.errors import param
from onnxcam.models.preprocess import Preprocess
from onnxcam.runtime.errors import ModelError
from onnxcam.runtime.explanation import ClassIndex, Explanation, class_indices
from onnxcam.runtime.images import (Geometry, ImageLike, image_pixels, load_image, load_pixels,
                                    preprocess, preprocess_image)
from onnxcam.runtime.in_graph import InGraphHeatmaps, in_graph_methods
from onnxcam.runtime.input_methods import InputMethodOptions, pixel_heatmaps
from onnxcam.runtime.metadata import ModelInfo, read_model_info
from onnxcam.runtime.postprocess import postprocess
from onnxcam.runtime.providers import ProviderSpec, Runner, resolve_providers
from onnxcam.runtime.registry import METHODS, MethodContext, MethodSpec, get_method, method_names
from onnxcam.runtime.tensorrt import TENSORRT, TensorRTSettings, with_tensorrt_options

Inputs = np.ndarray | str | Path | Image.Image | Sequence[str | Path | Image.Image]
log = logging.getLogger(__name__)


def __getattr__(name: str) -> tuple[str, ...]:
    """``ALL_METHODS`` (the CAM family, what ``--method all`` means), ``EXTRA_METHODS`` (the
    others) and ``EVERY_METHOD``, read from the registry when asked for."""
    if name == "ALL_METHODS":
        return method_names(family=True)
    if name == "EXTRA_METHODS":
        return method_names(family=False)
    if name == "EVERY_METHOD":
        return method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Explainer:
    """One onnxruntime session on an explanation graph (``onnxcam export`` output).

    ``providers=None`` picks CUDA when it really initialises, else CPU; ``intra_op_threads``
    sets ORT's intra-op thread count; the graph runs on at most ``batch_size`` images at a time
    (also the Score-CAM masked-input batch); Ablation-CAM feeds ``head_batch_size`` ablated
    copies at a time to the head-only path. ``spinning=False`` lets ORT's idle threads sleep, which
    leaves the cores to image decoding threads (the dataset engine). With TensorRT among the
    providers the session gets an engine cache and a profile for batches up to ``batch_size``
    (``tensorrt``: other ``runtime.tensorrt.TensorRTSettings``; options given with the provider win).
    ``in_graph`` computes the closed-form CAM methods' heatmaps in small ONNX graphs on the
    session's device, so only heatmaps and logits are copied back (``runtime.in_graph``; default:
    on CUDA, where it pays, not on the CPU).
    """

    def __init__(self, model_path: str | Path, providers: Sequence[ProviderSpec] | None = None,
                 intra_op_threads: int | None = None, batch_size: int = 16,
                 head_batch_size: int = 128, io_binding: bool | None = None, spinning: bool = True,
                 tensorrt: TensorRTSettings | None = None, in_graph: bool | None = None) -> None:
        path = str(model_path)
        if not Path(path).is_file():
            raise ModelError(f"{path}: no such model file")
        if batch_size < 1 or head_batch_size < 1:
            raise ValueError("batch_size and head_batch_size must be ≥ 1")
        try:
            self.runner = Runner(path, providers, intra_op_threads, io_binding, spinning)
        except Exception as exc:  # noqa: BLE001  (ORT raises several types for bad files)
            first = (str(exc) or type(exc).__name__).splitlines()[0]
            raise ModelError(f"{path}: cannot load as an ONNX model ({first})") from None
        self.info: ModelInfo = read_model_info(self.runner.session, path)
        self.batch_size = int(batch_size if self.info.static_batch is None else self.info.static_batch)
        if TENSORRT in self.runner.providers:  # again, with its engine cache and a profile for our batches
            self.runner = Runner(path, self._tensorrt(providers, tensorrt), intra_op_threads, io_binding, spinning)
        self.in_graph = self.runner.device == "cuda" if in_graph is None else bool(in_graph)
        self._in_graph: InGraphHeatmaps | None = None
        self.head_batch_size = int(head_batch_size)
        self._head_batch: int | None = None  # image batch fed alongside head_activations

    def _tensorrt(self, providers: Sequence[ProviderSpec] | None, settings: TensorRTSettings | None) -> list:
        """The provider list with TensorRT's options (``runtime.tensorrt``) for this graph's batches."""
        inputs = [(i.name, i.shape) for i in self.runner.session.get_inputs()
                  if i.name in (self.info.image_input, CLASS_INPUT)]
        chosen = settings or TensorRTSettings(max_batch=self.batch_size)
        return with_tensorrt_options(resolve_providers(providers), chosen, inputs)

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, in priority order."""
        return self.runner.providers

    @property
    def labels(self) -> list[str] | None:
        return self.info.labels

    # -- images ------------------------------------------------------------------------------------
    def preprocessing(self) -> Preprocess:
        """How this graph's images are preprocessed (its ``onnxcam.preprocess`` metadata);
        ModelError when the graph has none (then it takes preprocessed batches only)."""
        if self.info.preprocess is None:
            raise ModelError(f"{self.info.path} has no onnxcam.preprocess metadata, so image files cannot be "
                             "preprocessed for it; pass a preprocessed float32 batch, or re-export it with "
                             "`onnxcam export`")
        return self.info.preprocess

    def prepare(self, images: Sequence[str | Path | Image.Image]) -> tuple[np.ndarray, list[Geometry]]:
        """Load and preprocess images from the graph's ``onnxcam.preprocess`` metadata: a float
        batch in the model's layout, or for a raw-input graph the resized / cropped uint8 NHWC
        RGB pixels (the graph normalises them itself)."""
        spec = self.preprocessing()
        return (load_pixels if self.info.raw_input else preprocess)(list(images), spec)

    def prepare_image(self, image: Image.Image) -> tuple[np.ndarray, Geometry]:
        """One RGB image as ``load_image`` returns it, preprocessed as ``prepare`` would:
        [C, H, W] / [H, W, C] float32, or uint8 [H, W, 3] pixels for a raw-input graph."""
        spec = self.preprocessing()
        return (image_pixels if self.info.raw_input else preprocess_image)(image, spec)

    def prepare_one(self, image: ImageLike) -> tuple[np.ndarray, Geometry]:
        """``prepare_image`` of one path or PIL image (read with ``load_image``)."""
        return self.prepare_image(load_image(image))

    # -- methods -----------------------------------------------------------------------------------
    @property
    def available_methods(self) -> tuple[str, ...]:
        """The methods this graph can run (input-space ones need ``--input-gradients``)."""
        return tuple(m for m in METHODS if self.unavailable_reason(m) is None)

    def unavailable_reason(self, method: str) -> str | None:
        """Why this graph cannot run ``method`` (one line), or None when it can."""
        spec, path = get_method(method), self.info.path
        for output in spec.requires:
            if output == HEAD_OUTPUT and self.info.head_input is None:
                return (f"{path} has no head-only path (onnxcam.head_input / {HEAD_OUTPUT}) needed by {method}; "
                        "re-export it with `onnxcam export`")
            if output != HEAD_OUTPUT and output not in self.info.outputs:
                mode = "plain" if output == INPUT_GRADIENTS else "guided"
                return (f"{path} has no '{output}' output, needed by {method}; re-export it with "
                        f"`onnxcam export ... --input-gradients {mode}` (or `both`)")
        if spec.float_input and self.info.raw_input:
            return (f"{path} takes raw uint8 pixels (exported with {param('raw_input', True)}) and {method} needs "
                    "the normalised float input; use a graph exported without it")
        return None

    def explain(self, x: Inputs, method: str = "gradcam", class_index: ClassIndex = None,
                **options) -> Explanation:
        """Explain a batch with one method (see ``explain_many``)."""
        return self.explain_many(x, methods=[method], class_index=class_index, **options)[method]

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
        specs = self.method_specs(methods)
        opts = InputMethodOptions.from_kwargs(**options)
        x, geometry = self._as_batch(x)
        classes = class_indices(class_index, len(x), self.info.num_classes)
        if self.in_graph and all(s.name in in_graph_methods() for s in specs):
            return self._explain_in_graph(specs, x, classes, geometry)
        names = [LOGITS, TARGET] + sorted({o for s in specs for o in s.reads})
        baked = self.info.heatmap_method if self.info.heatmap_method in [s.name for s in specs] else None
        if baked:  # the graph already computes this method's heatmap (export --heatmap)
            names.append(HEATMAP)
        out = dict(zip(names, self.run_graph(names, x, classes)))
        logits, target = out[LOGITS].astype(np.float32), out[TARGET].astype(np.int64)
        class_indices(classes, len(x), logits.shape[1])
        size = x.shape[2:4] if self.info.layout == "NCHW" else x.shape[1:3]
        context = MethodContext(out, x, target, logits, opts, self)
        results = {}
        for spec in specs:
            self._warn_if_reverse_passes_run(spec)
            raw, attributions = spec.run(context)
            if spec.kind == "input":
                heatmaps = pixel_heatmaps(raw)
            elif spec.name == baked and out[HEATMAP].shape == (len(x), *size):
                heatmaps = out[HEATMAP].astype(np.float32)
            else:
                heatmaps = postprocess(raw, size)
            results[spec.name] = Explanation(spec.name, heatmaps, logits, target, raw, geometry, attributions)
        return results

    def _explain_in_graph(self, specs: list[MethodSpec], x: np.ndarray, classes: np.ndarray,
                          geometry: list[Geometry] | None) -> dict[str, Explanation]:
        """``explain_many`` of closed-form methods with their heatmaps made on the graph's device
        (``runtime.in_graph``): only logits, classes, raw maps and heatmaps reach the host."""
        if self._in_graph is None:
            self._in_graph = InGraphHeatmaps(self.runner)
        methods = [s.name for s in specs]
        names = self._in_graph.outputs(methods)
        size = x.shape[2:4] if self.info.layout == "NCHW" else x.shape[1:3]
        logits, target, maps = self._in_graph.run(self._chunks(names, x, classes), methods, tuple(size))
        class_indices(classes, len(x), logits.shape[1])
        return {m: Explanation(m, heatmap, logits, target, raw, geometry, None) for m, (raw, heatmap) in maps.items()}

    def method_specs(self, methods: Sequence[str] | str) -> list[MethodSpec]:
        """The registry entries of ``methods``; ValueError for an unknown name, ModelError (with the
        reason) for a method this graph cannot run."""
        names = list(dict.fromkeys([methods] if isinstance(methods, str) else methods))
        unknown = [m for m in names if m not in METHODS]
        if unknown or not names:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        for name in names:
            reason = self.unavailable_reason(name)
            if reason is not None:
                raise ModelError(reason)
        return [METHODS[m] for m in names]

    def _warn_if_reverse_passes_run(self, spec: MethodSpec) -> None:
        """A method that runs the whole graph again pays, on every run, each reverse pass to the
        input that it does not read and the graph cannot switch off (graphs made before the
        switches)."""
        if not (spec.reruns and spec.float_input):
            return
        carried = [o for o in INPUT_GRADIENT_OUTPUTS if o in self.info.outputs
                   and o not in self.info.input_gradient_switches and o not in spec.requires]
        if carried:  # onnxruntime runs every node, fetched or not
            log.warning("%s carries reverse passes to the input (%s): %s pays them on every run; re-export it with "
                        "this version's `onnxcam export` (its input-gradient passes run only when fetched) or "
                        "without --input-gradients", self.info.path, ", ".join(carried), spec.name)

    # -- running the graph -------------------------------------------------------------------------
    def _as_batch(self, x: Inputs) -> tuple[np.ndarray, list[Geometry] | None]:
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
        if not np.isfinite(x).all():
            raise ValueError("x contains NaN or infinite values; explanations need finite inputs")
        return x.astype(self.info.image_dtype, copy=False), geometry

    def _as_pixels(self, x: np.ndarray) -> np.ndarray:
        """Check a batch for a raw-input graph: uint8 RGB pixels [N, H, W, 3] at the input size."""
        H, W = self.info.input_size
        if x.dtype != np.uint8:
            raise ValueError(f"{self.info.path} takes raw uint8 RGB pixels [N, {H}, {W}, 3] (exported with "
                             f"raw_input=True), got a {x.dtype} batch; pass uint8 pixels or image files, "
                             "not a preprocessed float batch")
        if x.ndim != 4 or len(x) == 0 or x.shape[1:] != (H, W, 3):
            raise ValueError(f"x has shape {x.shape}; {self.info.path} takes uint8 RGB pixels [N, {H}, {W}, 3]")
        return x

    def run_graph(self, names: Sequence[str], x: np.ndarray, classes: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs ``names`` for the batch ``x`` (in the model's input form) and the
        classes to explain, run ``batch_size`` images at a time (a static batch axis gets its last
        chunk padded); every reverse pass to the input that ``names`` does not need is switched off."""
        parts: list[list[np.ndarray]] = [[] for _ in names]
        for count, feeds in self._chunks(names, x, classes):
            for part, arr in zip(parts, self.runner.run(list(names), feeds)):
                part.append(arr[:count])
        return [np.concatenate(p) for p in parts]

    def _chunks(self, names: Sequence[str], x: np.ndarray, classes: np.ndarray):
        """(images in the chunk, the graph's feeds) per ``batch_size`` images (see ``run_graph``)."""
        static = self.info.static_batch
        for s in range(0, len(x), self.batch_size):
            e = min(s + self.batch_size, len(x))
            xb, cb = x[s:e], classes[s:e]
            if static is not None and e - s < static:  # pad by repeating the last image
                pad = static - (e - s)
                xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
                cb = np.concatenate([cb, np.repeat(cb[-1:], pad)])
            yield e - s, {self.info.image_input: xb, CLASS_INPUT: cb, **self._switch(names)}

    def _switch(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Turns off (feeds ``false`` to the switch of) each reverse pass to the input whose output
        is not among ``names``. On is the switches' default and is not fed: an overridden
        initializer cannot be IO-bound, so only the runs that skip a pass leave IO binding (CUDA)
        for a plain ``session.run``."""
        return {switch: np.array(False) for output, switch in self.info.input_gradient_switches.items()
                if output not in names}

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Logits [N, C] of a batch in the model's input form (no class to explain)."""
        return self.run_graph([LOGITS], x, np.full(len(x), -1, np.int64))[0]

    def input_gradients(self, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """∂S/∂x for a batch of inputs and their explicit classes (``--input-gradients`` graphs)."""
        return self.run_graph([INPUT_GRADIENTS], x, classes)[0]

    def head_logits(self, activations: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
        """The head alone: ``head_logits`` [M, C] for target-layer activations [M, K, h, w].

        ``image`` (one input [1, …] in the model's form) is the image the rows come from; graphs
        whose head reads that image's own tensors (``info.head_image_index``: a transformer's
        residual stream, its class token) need it. Otherwise the image input gets an empty batch
        (zeros of one batch when the graph rejects that or its batch axis is static)."""
        if self.info.head_input is None:
            raise ModelError(f"{self.info.path} has no head-only path (onnxcam.head_input / {HEAD_OUTPUT})")
        feeds = {self.info.head_input: np.ascontiguousarray(activations, np.float32)}
        if self.info.head_image_index is not None:
            if image is None or len(image) != 1:
                raise ValueError(f"{self.info.path}: its head reads the image's own tensors; pass the one image "
                                 "the activations come from")
            feeds[self.info.head_image_index] = np.zeros(len(activations), np.int64)
            batch = {self.info.image_input: image, CLASS_INPUT: np.full(1, -1, np.int64), **self._switch([HEAD_OUTPUT])}
            return self.runner.run([HEAD_OUTPUT], {**feeds, **batch})[0]
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
