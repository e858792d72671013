"""Explanations as a Parquet dataset: sharded, written atomically, resumable.

Two tables in the output directory: ``explanations/`` with one row per (image, method) —
every heatmap present, so pandas, pyarrow and Ray Data read the column as tensors — and
``errors/`` with one row per image that failed. Columns of ``explanations`` (:func:`schema`):

| column | type | meaning |
|---|---|---|
| ``index`` | int64 | the image's position in the run's input order |
| ``path`` | string | the image file |
| ``height``, ``width`` | int32 | the original image's size |
| ``method`` | string | the CAM / input-space method |
| ``class_index``, ``label`` | int64, string | the class explained |
| ``top_classes``, ``top_scores`` | list<int64>, list<float32> | the top-k classes and their softmax scores |
| ``heatmap`` | ``arrow.fixed_shape_tensor`` float32 [H, W] | the heatmap at the model input size, in [0, 1] |
| ``picture`` | binary (only with ``pictures``) | PNG: the heatmap over the photo, as ``onnxcam explain`` draws it |

and of ``errors``: ``index``, ``path``, ``error`` (one line: why it failed).

Input ``i`` belongs to shard ``i // shard_size``: ``errors/part-NNNNN.parquet`` (when some of
its images failed) and then ``explanations/part-NNNNN.parquet``, which marks the shard done.
Each file goes through a temporary file renamed in one step, so a killed run leaves whole
shards only. The run's parameters are kept in ``_onnxcam_run.json``; a rerun with the same
parameters and inputs skips the shards already written, another one is refused (``overwrite``
starts afresh).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from onnxcam.models.files import OutputError
from onnxcam.runtime.datasets.engine import Item
from onnxcam.runtime.datasets.sources import Source
from onnxcam.runtime.datasets.storage import ArrowDir, LocalDir, output_dir
from onnxcam.runtime.postprocess import softmax

RUN_FILE = "_onnxcam_run.json"


def schema(input_size: tuple[int, int], pictures: bool = False) -> pa.Schema:
    """The rows' schema for heatmaps of the model input size (H, W); ``pictures`` adds the PNG column."""
    return pa.schema([
        ("index", pa.int64()), ("path", pa.string()), ("height", pa.int32()), ("width", pa.int32()),
        ("method", pa.string()), ("class_index", pa.int64()), ("label", pa.string()),
        ("top_classes", pa.list_(pa.int64())), ("top_scores", pa.list_(pa.float32())),
        ("heatmap", pa.fixed_shape_tensor(pa.float32(), list(input_size))),
        *([("picture", pa.binary())] if pictures else []),
    ])


ERROR_SCHEMA = pa.schema([("index", pa.int64()), ("path", pa.string()), ("error", pa.string())])
EXPLANATIONS, ERRORS = "explanations", "errors"


def shard_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def _label(labels: list[str] | None, index: int) -> str | None:
    return labels[index] if labels and 0 <= index < len(labels) else None


def _fixed_lists(values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """The rows of a 2-D array as an Arrow fixed-size list array."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), value_type), values.shape[1])


def to_table(items: Iterable[Item], labels: list[str] | None, input_size: tuple[int, int], top_k: int = 5,
             pictures: bool = False) -> pa.Table:
    """The explanations of ``items`` (those that have results) as one table of :func:`schema`:
    one row per (image, method), in the items' order and then the methods'; with ``pictures``
    each row's PNG (the items carry them)."""
    done = [item for item in items if item.results is not None]
    sch = schema(input_size, pictures)
    if not done:
        return sch.empty_table()
    explanations = [e for item in done for e in item.results.values()]
    per_image = len(done[0].results)
    logits = np.concatenate([e.logits for e in explanations])
    probs = softmax(logits)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    explained = np.concatenate([e.class_index for e in explanations]).astype(np.int64)
    sizes = np.array([item.geometry.original_size if item.geometry else (0, 0) for item in done], np.int32)
    maps = np.stack([e.heatmaps[0] for e in explanations]).astype(np.float32, copy=False)
    columns = {
        "index": pa.array(np.repeat([item.index for item in done], per_image), pa.int64()),
        "path": pa.array([item.source.path for item in done for _ in range(per_image)], pa.string()),
        "height": pa.array(np.repeat(sizes[:, 0], per_image), pa.int32()),
        "width": pa.array(np.repeat(sizes[:, 1], per_image), pa.int32()),
        "method": pa.array([e.method for e in explanations], pa.string()),
        "class_index": pa.array(explained, pa.int64()),
        "label": pa.array([_label(labels, int(c)) for c in explained], pa.string()),
        "top_classes": _fixed_lists(top.astype(np.int64), pa.int64()).cast(pa.list_(pa.int64())),
        "top_scores": _fixed_lists(np.take_along_axis(probs, top, 1).astype(np.float32), pa.float32())
        .cast(pa.list_(pa.float32())),
        "heatmap": pa.ExtensionArray.from_storage(sch.field("heatmap").type,
                                                  _fixed_lists(maps.reshape(len(maps), -1), pa.float32())),
    }
    if pictures:
        columns["picture"] = pa.array([item.pictures[m] for item in done for m in item.results], pa.binary())
    return pa.table([columns[name] for name in sch.names], schema=sch)


@dataclass
class RunSummary:
    """What a dataset run did: images explained and failed in this run, shards skipped as done,
    and the images of those shards that had failed in the earlier run (their rows in ``errors/``)."""

    explained: int = 0
    failed: int = 0
    skipped_shards: int = 0
    errors: list[str] | None = None
    earlier_failed: int = 0


@dataclass
class ShardedRun:
    """The output directory of one run (see the module docstring), a local path or a
    ``pyarrow.fs`` URI; ``table`` names the rows' sub-directory (``explanations``, or ``scores``
    for an evaluation)."""

    out: LocalDir | ArrowDir
    shard_size: int
    count: int  # inputs
    table: str = EXPLANATIONS

    @classmethod
    def open(cls, out: str | Path, parameters: dict, sources: list[Source], shard_size: int,
             overwrite: bool = False, table: str = EXPLANATIONS) -> ShardedRun:
        """Create or resume the run in ``out``; OutputError when ``out`` holds another run
        (unless ``overwrite``, which removes its shards)."""
        folder = output_dir(out)
        digest = hashlib.sha256("\n".join(s.key() for s in sources).encode()).hexdigest()
        record = {**parameters, "shard_size": shard_size, "inputs": len(sources), "inputs_sha256": digest}
        folder.make()
        for sub in (table, ERRORS):
            folder.make(sub)
        run = cls(folder, shard_size, len(sources), table)
        if overwrite:
            for sub in (table, ERRORS):
                for name in folder.names(sub, "part-*.parquet"):
                    folder.remove(f"{sub}/{name}")
        elif folder.exists(RUN_FILE):
            try:
                previous = json.loads(folder.read(RUN_FILE).decode("utf-8"))
            except (OSError, ValueError):
                previous = None
            if previous != record:
                raise OutputError(f"{folder} holds another run (other model, methods or inputs: see {RUN_FILE}); "
                                  "choose another directory or pass --overwrite to start afresh")
            run.remove_leftovers()
            return run
        elif folder.names(table, "part-*.parquet"):
            raise OutputError(f"{folder} has Parquet shards but no {RUN_FILE}; choose another directory or pass "
                              "--overwrite")
        folder.write(RUN_FILE, json.dumps(record, indent=1).encode(), overwrite=True)
        return run

    def remove_leftovers(self) -> None:
        """Temporary files of a run killed while writing a shard (never a finished one)."""
        for sub in (self.table, ERRORS):
            for name in self.out.names(sub, ".part-*.tmp"):
                self.out.remove(f"{sub}/{name}")

    def read_table(self) -> pa.Table:
        """Every shard of the rows' table, read back."""
        source, filesystem = self.out.source(self.table)
        return pq.read_table(source, filesystem=filesystem)

    @property
    def shards(self) -> int:
        return -(-self.count // self.shard_size)

    def done(self, shard: int) -> bool:
        """Whether the shard's rows file is in place and whole (Parquet's closing bytes)."""
        return self.out.tail(f"{self.table}/{shard_name(shard)}", 4) == b"PAR1"

    def failures(self, shards: set[int]) -> int:
        """How many images of these (finished) shards failed: the rows of their ``errors/`` files."""
        written = set(self.out.names(ERRORS, "part-*.parquet"))
        return sum(pq.read_metadata(pa.BufferReader(self.out.read(f"{ERRORS}/{shard_name(s)}"))).num_rows
                   for s in sorted(shards) if shard_name(s) in written)

    def pending(self) -> list[int]:
        """The input indices of the shards not written yet."""
        return [i for s in range(self.shards) if not self.done(s)
                for i in range(s * self.shard_size, min((s + 1) * self.shard_size, self.count))]

    def fill(self, sources: list[Source], produce: Callable[[list[Source]], Iterator[Item]],
             to_table: Callable[[list[Item]], pa.Table], progress: Callable[[Item], None] | None = None) -> RunSummary:
        """Write the pending shards: ``produce`` their sources' items (an engine), re-indexed into
        the whole run; ``progress(item)`` sees each item as it comes."""
        todo = self.pending()
        skipped = set(range(self.shards)) - {i // self.shard_size for i in todo}
        summary = RunSummary(skipped_shards=len(skipped), errors=[], earlier_failed=self.failures(skipped))

        def items() -> Iterator[Item]:
            for item in produce([sources[i] for i in todo]):
                item = replace(item, index=todo[item.index])
                if progress is not None:
                    progress(item)
                yield item

        for shard in self.write(items(), to_table):
            failed = [item.error for item in shard if item.error is not None]
            summary.explained += len(shard) - len(failed)
            summary.failed += len(failed)
            summary.errors += failed
        return summary

    def write(self, items: Iterator[Item], to_table: Callable[[list[Item]], pa.Table]) -> Iterator[list[Item]]:
        """Write ``items`` (of the pending inputs, in order, ``index`` as in the whole run) shard by
        shard — ``to_table`` makes a shard's rows — each on a writer thread while the next is
        computed (one shard in flight at most); yields each shard's items once its files are in place."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxcam-parquet") as pool:
            writing: Future | None = None
            current, shard = [], None
            for item in items:
                if shard is not None and item.index // self.shard_size != shard:
                    if writing is not None:
                        yield writing.result()
                    writing = pool.submit(self._flush, shard, current, to_table)
                    current = []
                shard = item.index // self.shard_size
                current.append(item)
            if writing is not None:
                yield writing.result()
            if current:
                yield self._flush(shard, current, to_table)

    def _flush(self, shard: int, items: list[Item], to_table: Callable[[list[Item]], pa.Table]) -> list[Item]:
        failed = [{"index": i.index, "path": i.source.path, "error": i.error} for i in items if i.results is None]
        if failed:  # a killed run may have left this shard's errors without its rows: replaced
            errors = pa.Table.from_pylist(failed, schema=ERROR_SCHEMA)
            self.out.write(f"{ERRORS}/{shard_name(shard)}", lambda f: pq.write_table(errors, f), overwrite=True)
        table = to_table(items)
        self.out.write(f"{self.table}/{shard_name(shard)}", lambda f: pq.write_table(table, f), overwrite=False)
        return items


def read_heatmaps(table: pa.Table) -> np.ndarray:
    """The ``heatmap`` column of an explanations table as float32 [rows, H, W]."""
    return table.column("heatmap").combine_chunks().to_numpy_ndarray()


def explain_to_parquet(explainer, sources: list[Source], out: str | Path, methods: list[str],
                       class_index: int | None = None, *, shard_size: int = 256, top_k: int = 5,
                       batch_size: int | None = None, workers: int = 2, overwrite: bool = False,
                       pictures: bool = False, parameters: dict | None = None, progress=None,
                       ray=None) -> RunSummary:
    """Explain ``sources`` into the sharded Parquet dataset ``out`` (see the module docstring),
    resuming a run with the same ``parameters`` (model, methods, class, …) and inputs.
    ``pictures`` adds each row's PNG (the heatmap over the photo, as ``onnxcam explain`` draws it).
    ``progress(item)`` is called with each item as it is explained (or fails). With ``ray``
    (a ``ray_engine.RayOptions``) the images are explained on Ray Data instead of the local engine."""
    from onnxcam.runtime.datasets.engine import iter_explain, with_pictures

    record = {"methods": list(methods), "class_index": class_index, "top_k": top_k, **(parameters or {})}
    if pictures:
        record["pictures"] = True
    run = ShardedRun.open(out, record, sources, shard_size, overwrite)
    layout, color = explainer.info.layout, explainer.info.preprocess.color

    def explained(chosen: list[Source]) -> Iterator[Item]:
        if ray is not None:
            from onnxcam.runtime.datasets.ray_engine import ray_explain

            return ray_explain(explainer.info.path, chosen, methods, class_index, options=ray, pictures=pictures,
                               batch_size=batch_size or explainer.batch_size)  # each actor picks its own device
        items = iter_explain(explainer, chosen, methods, class_index, batch_size=batch_size, workers=workers,
                             keep_images=pictures)
        return (with_pictures(item, layout, color) for item in items) if pictures else items

    labels, size = explainer.labels, explainer.info.input_size
    return run.fill(sources, explained, lambda chunk: to_table(chunk, labels, size, top_k, pictures), progress)
