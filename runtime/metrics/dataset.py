"""Evaluation of whole datasets on the dataset engine (``runtime.datasets.engine``): images and
their ground truth read on threads ahead of the session, one :class:`Item` per image whose
``results`` are ``{method: ImageScores}`` — or its one-line error — and, with pyarrow, the
per-image rows as a sharded, resumable Parquet table (``scores/``) whose summary is the exact
mean over every image of every shard, the ones a resumed run skipped included."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from onnxcam.models.errors import OnnxcamError
from onnxcam.runtime.datasets.engine import Batch, Decoded, Item, iter_batches
from onnxcam.runtime.datasets.sources import Source, relative_names
from onnxcam.runtime.errors import ClassIndexError, ModelError
from onnxcam.runtime.metrics.evaluate import (
    Aggregate,
    EvaluationOptions,
    ImageScores,
    evaluate_batch,
)

#: reads one source: (x, geometry, ground truth or None); raises OnnxcamError / ValueError
Loader = Callable[[Source], tuple[np.ndarray, Any, Any]]


def read_source(load: Loader, source: Source) -> Decoded:
    """One source read by ``load`` (its image, geometry and ground truth), or why it cannot be."""
    try:
        x, geometry, truth = load(source)
        return Decoded(x, geometry, None, None, truth)
    except (OnnxcamError, ValueError) as exc:
        message = str(exc)
        return Decoded(None, None, None, message if message.startswith(source.path) else f"{source.path}: {message}")
    except Exception as exc:  # noqa: BLE001  (a decoder failure still gets one line)
        return Decoded(None, None, None, f"{source.path}: cannot read ({type(exc).__name__}: {exc})")


def _scores(explainer, batch: Batch, methods: Sequence[str], metrics: Sequence[str], class_index: int | None,
            options: EvaluationOptions) -> list[dict[str, ImageScores] | str]:
    """Per image of ``batch`` (all read): its scores, or why they failed (the batch is retried
    image by image when it fails)."""
    x = np.stack([d.x for _, _, d in batch])
    try:
        result = evaluate_batch(explainer, x, [d.geometry for _, _, d in batch], [d.extra for _, _, d in batch],
                                methods, metrics, class_index, options)
        return [result.image(j) for j in range(len(batch))]
    except (ClassIndexError, ModelError):
        raise
    except Exception as exc:  # noqa: BLE001
        if len(batch) == 1:
            return [f"{batch[0][1].path}: evaluation failed ({type(exc).__name__}: {exc})"]
    return [_scores(explainer, [one], methods, metrics, class_index, options)[0] for one in batch]


def iter_evaluate(explainer, sources: Iterable[Source | str], methods: Sequence[str], metrics: Sequence[str],
                  load: Loader, class_index: int | None = None, options: EvaluationOptions = EvaluationOptions(), *,
                  batch_size: int | None = None, workers: int = 2) -> Iterator[Item]:
    """Evaluate ``metrics`` of ``methods`` on ``sources`` (read by ``load``), one Item per source
    in order (see the module docstring)."""
    def run(batch: Batch) -> list[Item]:
        good = [b for b in batch if b[2].error is None]
        items = {i: Item(i, s, error=d.error) for i, s, d in batch if d.error is not None}
        outcomes = _scores(explainer, good, methods, metrics, class_index, options) if good else []
        for (i, s, d), outcome in zip(good, outcomes):
            items[i] = Item(i, s, error=outcome) if isinstance(outcome, str) else \
                Item(i, s, results=outcome, geometry=d.geometry)
        return [items[i] for i, _, _ in batch]

    return iter_batches(sources, lambda source: read_source(load, source), run, batch_size or options.batch_size,
                        workers=workers)


SCORES = "scores"


def scores_table(items: Iterable[Item], metrics: Sequence[str]):
    """The per-image rows of ``items`` (those with scores): ``index``, ``path``, ``method``,
    ``class_index``, one float64 column per metric, ``drop`` (relative confidence drop, for Win %;
    null with one method) and ``curve_<kind>`` (the deletion / insertion curves, when computed)."""
    import pyarrow as pa

    rows = [{"index": item.index, "path": item.source.path, "method": method, "class_index": s.class_index,
             **s.values, "drop": s.drop, **{f"curve_{k}": np.asarray(c, np.float64).tolist() for k, c in s.curves.items()}}
            for item in items if item.results is not None for method, s in item.results.items()]
    fields = [("index", pa.int64()), ("path", pa.string()), ("method", pa.string()), ("class_index", pa.int64())]
    fields += [(m, pa.float64()) for m in metrics] + [("drop", pa.float64())]
    fields += [(f"curve_{k}", pa.list_(pa.float64())) for k in ("deletion", "insertion") if k in metrics]
    schema = pa.schema(fields)
    return pa.Table.from_pylist(rows, schema=schema)


def aggregate_table(table, methods: Sequence[str], metrics: Sequence[str], names: Sequence[str]) -> Aggregate:
    """The exact aggregate of a scores table (every shard of a run), images in input order;
    ``names[index]`` names the run's input ``index`` (``relative_names`` of the inputs' paths)."""
    total = Aggregate(methods, metrics)
    by_image: dict[int, dict[str, ImageScores]] = {}
    for row in table.sort_by("index").to_pylist():
        curves = {k: np.asarray(row[f"curve_{k}"]) for k in ("deletion", "insertion") if row.get(f"curve_{k}")}
        by_image.setdefault(row["index"], {})[row["method"]] = ImageScores(
            {m: np.nan if row[m] is None else row[m] for m in metrics}, row["class_index"], curves, row["drop"])
    for index, scores in by_image.items():
        total.add_image(names[index], scores)
    return total


def evaluate_to_parquet(explainer, sources: list[Source], out, methods: Sequence[str], metrics: Sequence[str],
                        load: Callable[[Any, Source], tuple[np.ndarray, Any, Any]], class_index: int | None = None,
                        options: EvaluationOptions = EvaluationOptions(), *, shard_size: int = 256,
                        overwrite: bool = False, parameters: dict | None = None, progress=None,
                        ray=None) -> tuple[Any, Aggregate]:
    """Evaluate ``sources`` into the sharded Parquet dataset ``out`` (``scores/`` and ``errors/``,
    resumable as ``explain_to_parquet``), then aggregate every shard exactly. ``load(explainer,
    source)`` reads one image and its ground truth (picklable for ``ray``, a ``RayOptions``: read
    in a CPU stage, scored by the actors; the loader then gets a stand-in with ``prepare_image``). Returns (the run's summary, the aggregate)."""
    from onnxcam.runtime.datasets.parquet import ShardedRun

    record = {"evaluate": list(methods), "metrics": list(metrics), "class_index": class_index,
              "options": repr(options), **(parameters or {})}
    run = ShardedRun.open(out, record, sources, shard_size, overwrite, table=SCORES)

    def scored(chosen: list[Source]) -> Iterator[Item]:
        if ray is None:
            return iter_evaluate(explainer, chosen, methods, metrics, lambda s: load(explainer, s), class_index, options)
        from onnxcam.runtime.datasets.ray_engine import ray_evaluate

        return ray_evaluate(explainer.info.path, chosen, methods, metrics, load, class_index, options,
                            batch_size=options.batch_size, options=ray)

    summary = run.fill(sources, scored, lambda chunk: scores_table(chunk, metrics), progress)
    names = relative_names([s.path for s in sources])
    return summary, aggregate_table(run.read_table(), methods, metrics, names)
