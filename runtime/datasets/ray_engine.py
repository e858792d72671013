"""The same dataset run on Ray Data, for more images than one machine explains in time.

Stages: the sources (index, path, class) → decoding and preprocessing with onnxcam's own loader
(and for an evaluation the ground truth) as a CPU stage (EXIF orientation, RGBA, the decompression-bomb guard: what the local engine
does) → explaining in an actor pool, one ``Explainer`` per actor (``cpus_per_actor`` may be a
fraction, so a 2-core node runs the reader and the actors without deadlock; ``gpus_per_actor``
on GPU nodes) → the rows back on the driver in input order, as the local engine's
:class:`~onnxcam.runtime.datasets.engine.Item`, so the Parquet writer and the summaries are the
same. ``address`` joins a running cluster; without it a local Ray starts (``num_cpus`` cores).
"""
from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnxcam.runtime.datasets.engine import Decoded, Item, decode, explain_batch, with_pictures
from onnxcam.runtime.datasets.sources import Source
from onnxcam.runtime.explainer import Explainer, Explanation
from onnxcam.runtime.images import Geometry, image_pixels, preprocess_image

_GEOMETRY = ("original_size", "resized_size", "crop_offset", "input_size")


@dataclass
class RayOptions:
    """Where and how wide the Ray run is."""

    actors: int = 1
    cpus_per_actor: float = 0.5
    gpus_per_actor: float = 0.0
    address: str | None = None
    num_cpus: int | None = None


@dataclass
class _Preparer:
    """What reading an image needs of an ``Explainer`` (its ``prepare_image``), without a session:
    a decoding stage runs on any worker."""

    spec: Any
    raw: bool

    def prepare_image(self, image) -> tuple[np.ndarray, Geometry]:
        return (image_pixels if self.raw else preprocess_image)(image, self.spec)


def _put_decoded(batch: dict, decoded: list[Decoded]) -> dict:
    """The decoded rows into the batch: x (zeros where an image failed), error ('' when none), geometry."""
    shape = next((d.x.shape for d in decoded if d.error is None), None)
    dtype = next((d.x.dtype for d in decoded if d.error is None), np.float32)
    batch["x"] = np.stack([d.x if d.error is None else np.zeros(shape or (1,), dtype) for d in decoded])
    batch["error"] = np.array([d.error or "" for d in decoded], dtype=object)
    for field in _GEOMETRY:
        batch[field] = np.array([getattr(d.geometry, field) if d.geometry else (0, 0) for d in decoded], np.int64)
    return batch


def _row(index: int, source: Source) -> dict:
    """A source as a row of Ray's dataset (its ground truth as JSON, '' when none)."""
    return {"index": index, "path": source.path, "class_index": -1 if source.class_index is None else source.class_index,
            "source_truth": "" if source.boxes is None and source.mask is None else json.dumps([source.boxes, source.mask])}


def _source(batch: dict, j: int) -> Source:
    """Row ``j`` of a batch as the Source it came from."""
    c, truth = int(batch["class_index"][j]), str(batch["source_truth"][j])
    boxes, mask = json.loads(truth) if truth else (None, None)
    return Source(str(batch["path"][j]), None if c < 0 else c,
                  None if boxes is None else tuple(tuple(b) for b in boxes), mask)


def _geometry(batch: dict, j: int) -> Geometry:
    return Geometry(*(tuple(int(v) for v in batch[f][j]) for f in _GEOMETRY))


def _decode_batch(batch: dict, preparer: _Preparer) -> dict:
    """Decode rows {index, path, class_index} → + x, the geometry and error ('' when none)."""
    return _put_decoded(batch, [decode(preparer.prepare_image, Source(str(p))) for p in batch["path"]])


def _read_batch(batch: dict, preparer: _Preparer, load) -> dict:
    """``_decode_batch`` for an evaluation: each image and its ground truth read by ``load``
    (pickled into ``ground_truth``)."""
    from onnxcam.runtime.metrics.dataset import read_source

    decoded = [read_source(lambda s: load(preparer, s), _source(batch, j)) for j in range(len(batch["path"]))]
    batch["ground_truth"] = np.array([pickle.dumps(d.extra) for d in decoded], dtype=object)
    return _put_decoded(batch, decoded)


class _ExplainStage:
    """One Explainer per actor; explains the decoded rows of each batch (``explain_batch``)."""

    def __init__(self, model: str, methods: Sequence[str], class_index: int | None, providers,
                 pictures: bool = False) -> None:
        self.explainer = Explainer(model, providers=providers, spinning=False)  # decoding tasks share the node
        self.methods, self.class_index, self.pictures = list(methods), class_index, pictures

    def _pictures(self, batch: dict, j: int, outcome: dict) -> str:
        """Row ``j``'s PNGs into ``picture:<method>`` (the photo read again here, on the worker);
        '' or why they could not be made."""
        info = self.explainer.info
        geometry = _geometry(batch, j)
        decoded = decode(lambda image: (None, geometry), Source(str(batch["path"][j])), keep_image=True)
        if decoded.error is not None:
            return decoded.error
        item = with_pictures(Item(j, Source(str(batch["path"][j])), outcome, geometry=geometry, image=decoded.image),
                             info.layout, info.preprocess.color)
        for m in self.methods:
            batch[f"picture:{m}"][j] = b"" if item.pictures is None else item.pictures[m]
        return item.error or ""

    def __call__(self, batch: dict) -> dict:
        good = [j for j, e in enumerate(batch["error"]) if not e]
        n, info = len(batch["path"]), self.explainer.info
        h, w = info.input_size
        for m in self.methods:
            batch[f"heatmap:{m}"] = np.zeros((n, h, w), np.float32)
        batch["logits"] = np.zeros((n, info.num_classes or 1), np.float32)
        batch["explained"] = np.full(n, -1, np.int64)
        raws: dict[str, list] = {m: [np.zeros((1, 1), np.float32)] * n for m in self.methods}
        for m in self.methods if self.pictures else []:
            batch[f"picture:{m}"] = np.full(n, b"", dtype=object)
        if good:
            wanted = np.where(batch["class_index"][good] >= 0, batch["class_index"][good],
                              -1 if self.class_index is None else self.class_index)
            outcomes = explain_batch(self.explainer, batch["x"][good], self.methods, wanted.astype(np.int64),
                                     [str(batch["path"][j]) for j in good])
            errors = list(batch["error"])
            for j, outcome in zip(good, outcomes):
                if isinstance(outcome, str):
                    errors[j] = outcome
                    continue
                for m, e in outcome.items():
                    batch[f"heatmap:{m}"][j], raws[m][j] = e.heatmaps[0], e.raw[0]
                batch["logits"][j], batch["explained"][j] = e.logits[0], e.class_index[0]
                errors[j] = self._pictures(batch, j, outcome) if self.pictures else ""
            batch["error"] = np.array(errors, dtype=object)
        for m in self.methods:  # raw maps: one shape per method, as the graph gives them
            shape = next((r.shape for r in raws[m] if r.shape != (1, 1)), (1, 1))
            batch[f"raw:{m}"] = np.stack([r if r.shape == shape else np.zeros(shape, np.float32) for r in raws[m]])
        del batch["x"]
        return batch


def _item(row: dict, methods: Sequence[str], source: Source) -> Item:
    if row["error"]:
        return Item(int(row["index"]), source, error=str(row["error"]))
    geometry = Geometry(*(tuple(int(v) for v in row[f]) for f in _GEOMETRY))
    results = {m: Explanation(m, np.asarray(row[f"heatmap:{m}"])[None], np.asarray(row["logits"])[None],
                              np.array([row["explained"]], np.int64), np.asarray(row[f"raw:{m}"])[None], [geometry])
               for m in methods}
    pictures = {m: row[f"picture:{m}"] for m in methods} if f"picture:{methods[0]}" in row else None
    return Item(int(row["index"]), source, results=results, geometry=geometry, pictures=pictures)


def ray_explain(model: str, sources: Sequence[Source], methods: Sequence[str], class_index: int | None = None, *,
                batch_size: int = 8, options: RayOptions | None = None, providers=None,
                pictures: bool = False) -> Iterator[Item]:
    """Explain ``sources`` on Ray Data (see the module docstring), yielding one Item per source in
    order, exactly as ``iter_explain`` would; with ``pictures`` the actors also make each
    item's PNGs."""
    options = options or RayOptions()
    ray = _start(options)
    driver = Explainer(model)
    info, spec = driver.info, driver.preprocessing()
    rows = [_row(i, s) for i, s in enumerate(sources)]
    if not rows:
        return
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch_size, 64)))
    dataset = dataset.map_batches(_decode_batch, batch_size=batch_size,
                                  fn_kwargs={"preparer": _Preparer(spec, info.raw_input)}, num_cpus=_decoder_cpus(options))
    dataset = dataset.map_batches(_ExplainStage, fn_constructor_args=(model, list(methods), class_index, providers, pictures),
                                  batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=options.actors),
                                  num_cpus=options.cpus_per_actor, num_gpus=options.gpus_per_actor or None)
    for row in dataset.iter_rows():
        yield _item(row, methods, sources[int(row["index"])])


def _decoder_cpus(options: RayOptions) -> float:
    """CPUs a decoding task reserves: what the actors leave of a core, halved (never a deadlock)."""
    return max(0.1, 1 - options.cpus_per_actor) / 2


def _start(options: RayOptions):
    """Ray, initialised once (joined at ``options.address``, else started locally), with its
    Data context set to keep the input order and show no progress bars of its own."""
    import ray

    if not ray.is_initialized():
        kwargs = {"address": options.address} if options.address else {"num_cpus": options.num_cpus}
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, **kwargs)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray


class _EvaluateStage:
    """One Explainer per actor; evaluates each batch of decoded rows (``_read_batch``) with the
    local engine (``iter_evaluate``), one row per image: its scores as JSON (exact floats) or its error."""

    def __init__(self, model: str, methods, metrics, class_index, options, providers) -> None:
        self.explainer = Explainer(model, providers=providers, spinning=False)
        self.args = (list(methods), list(metrics), class_index, options)

    def __call__(self, batch: dict) -> dict:
        from onnxcam.runtime.metrics.dataset import iter_evaluate

        methods, metrics, class_index, options = self.args
        sources = [_source(batch, j) for j in range(len(batch["path"]))]
        row = {s.path: j for j, s in enumerate(sources)}

        def decoded(source: Source):
            j = row[source.path]
            if batch["error"][j]:
                raise ValueError(batch["error"][j])
            return batch["x"][j], _geometry(batch, j), pickle.loads(batch["ground_truth"][j])

        items = iter_evaluate(self.explainer, sources, methods, metrics, decoded, class_index, options,
                              batch_size=len(sources), workers=1)
        scores, errors = [], []
        for item in items:
            errors.append(item.error or "")
            scores.append("" if item.results is None else json.dumps(
                {m: {"values": s.values, "class_index": s.class_index, "drop": s.drop,
                     "curves": {k: np.asarray(c, np.float64).tolist() for k, c in s.curves.items()}}
                 for m, s in item.results.items()}))
        return {"index": batch["index"], "error": np.array(errors, dtype=object), "scores": np.array(scores, dtype=object)}


def _scored_item(row: dict, source: Source) -> Item:
    from onnxcam.runtime.metrics.evaluate import ImageScores

    if row["error"]:
        return Item(int(row["index"]), source, error=str(row["error"]))
    results = {m: ImageScores(s["values"], s["class_index"], {k: np.asarray(c) for k, c in s["curves"].items()},
                              s["drop"]) for m, s in json.loads(row["scores"]).items()}
    return Item(int(row["index"]), source, results=results)


def ray_evaluate(model: str, sources: Sequence[Source], methods: Sequence[str], metrics: Sequence[str], load,
                 class_index: int | None = None, evaluation=None, *, batch_size: int = 8,
                 options: RayOptions | None = None, providers=None) -> Iterator[Item]:
    """``iter_evaluate`` on Ray Data: images and their ground truth read by ``load(preparer,
    source)`` (a picklable callable) in a CPU stage, scored by actors (one Explainer each); one
    Item per source in order, as the local engine gives them."""
    from onnxcam.runtime.metrics.evaluate import EvaluationOptions

    options = options or RayOptions()
    ray = _start(options)
    driver = Explainer(model)
    preparer = _Preparer(driver.preprocessing(), driver.info.raw_input)
    rows = [_row(i, s) for i, s in enumerate(sources)]
    if not rows:
        return
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch_size, 64)))
    dataset = dataset.map_batches(_read_batch, batch_size=batch_size,
                                  fn_kwargs={"preparer": preparer, "load": load}, num_cpus=_decoder_cpus(options))
    dataset = dataset.map_batches(
        _EvaluateStage, fn_constructor_args=(model, list(methods), list(metrics), class_index,
                                             evaluation or EvaluationOptions(), providers),
        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_cpus=options.cpus_per_actor, num_gpus=options.gpus_per_actor or None)
    for row in dataset.iter_rows():
        yield _scored_item(row, sources[int(row["index"])])
