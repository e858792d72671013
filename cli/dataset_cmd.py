"""``onnxcam explain --parquet``: a whole dataset into sharded Parquet files (the runtime's
``datasets`` engine does the work; this module parses, reports and prints)."""
from __future__ import annotations

import hashlib
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from onnxcam.cli.common import EXIT_PARTIAL, EXIT_USAGE, Reporter, fail
from onnxcam.models.files import OutputError


def engine_options(command):
    """``--engine local|ray`` and the Ray engine's options, as ``explain`` and ``evaluate`` take them."""
    for option in reversed([
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="With --parquet: the dataset engine (local: decoding threads ahead of one session; ray: "
                          "Ray Data, one explainer per actor, pip install 'onnxcam[ray]')."),
        click.option("--ray-address", default=None, metavar="ADDRESS",
                     help="With --engine ray: join this Ray cluster (default: start a local one)."),
        click.option("--actors", type=click.IntRange(1), default=1, show_default=True,
                     help="With --engine ray: explaining actors."),
        click.option("--cpus-per-actor", type=click.FloatRange(0.05), default=0.5, show_default=True,
                     help="With --engine ray: CPUs each actor reserves (a fraction leaves room for the decoders)."),
        click.option("--gpus-per-actor", type=click.FloatRange(0), default=0.0, show_default=True,
                     help="With --engine ray: GPUs each actor reserves."),
    ]):
        command = option(command)
    return command


def ray_options(engine: str, address: str | None, actors: int, cpus_per_actor: float, gpus_per_actor: float,
                debug: bool) -> Any:
    """The Ray engine's options (None for the local engine); one error line when Ray is missing."""
    if engine != "ray":
        return None
    try:
        import ray  # noqa: F401
    except ImportError:
        fail("--engine ray needs Ray: pip install 'onnxcam[ray]'", EXIT_USAGE, debug)
    from onnxcam.runtime.datasets.ray_engine import RayOptions

    return RayOptions(actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor, address=address)


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def parquet_run(desc: str, total: int, out: str, report: Reporter, debug: bool) -> Iterator[Callable[[Any], None]]:
    """The frame of a Parquet run: a progress bar (images/s, failures) and the ``progress(item)``
    callback that feeds it and reports each failed image; Ctrl-C or SIGTERM finish or drop the
    shard being written whole, say how to resume and exit 130; an ``OutputError`` is one line, exit 2."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False, dynamic_ncols=True,
              disable=None if total else True) as bar:
        def progress(item: Any) -> None:
            if item.error is not None:
                report.error(item.error)
                bar.set_postfix(failed=report.failed, refresh=False)
            bar.update(1)

        previous = signal.signal(signal.SIGTERM, _interrupted)
        try:
            yield progress
        except OutputError as exc:
            bar.close()
            fail(exc, EXIT_USAGE, debug)
        except KeyboardInterrupt:
            bar.close()
            click.echo(f"interrupted: the shards written so far are in {out}; run the same command again to "
                       "finish the others", err=True)
            sys.exit(130)
        finally:
            signal.signal(signal.SIGTERM, previous)


def count_earlier_failures(summary: Any, out: str, report: Reporter) -> None:
    """A resumed run's finished shards may hold images that failed before: one line, and they
    count as failed (exit 1), so that a rerun does not report a dataset with holes as complete."""
    if summary.earlier_failed:
        report.error(f"{summary.earlier_failed} image(s) of the shards already done had failed in an earlier run "
                     f"(listed in {out}/errors/)", count=False)
        report.failed += summary.earlier_failed


def file_digest(path: str) -> str:
    """The SHA-256 of a file (a run is resumed only with the very same model)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def explain_dataset(explainer: Any, model: str, inputs: tuple[str, ...], methods: list[str],
                    class_index: int | None, out: str, options: dict, recursive: bool, debug: bool,
                    ray: Any = None) -> None:
    """Explain ``inputs`` into ``out`` with a progress bar (images/s, failures) and a summary line;
    exit 1 when some images failed. ``ray``: the Ray engine's options (None: the local engine)."""
    try:
        from onnxcam.runtime.datasets.parquet import explain_to_parquet
    except ImportError:
        fail("--parquet needs pyarrow: pip install 'onnxcam[parquet]'", EXIT_USAGE, debug)
    options = {**options, "ray": ray}
    from onnxcam.runtime.datasets import expand_sources

    report = Reporter(debug)
    sources, errors = expand_sources(inputs, recursive)
    for message in errors:
        report.error(message)
    with parquet_run("explaining", len(sources), out, report, debug) as progress:
        summary = explain_to_parquet(explainer, sources, out, methods, class_index, progress=progress,
                                     parameters={"model_sha256": file_digest(model)}, **options)
    count_earlier_failures(summary, out, report)
    skipped = f"; {summary.skipped_shards} shard(s) already done" if summary.skipped_shards else ""
    line = (f"explained {summary.explained} of {len(sources)} images with {', '.join(methods)} into {out}"
            f"{skipped}")
    if report.failed:
        line += f"; {report.failed} failed (error rows in the dataset, and the lines above)"
    click.echo(line)
    if report.failed:
        sys.exit(EXIT_PARTIAL)
