"""``onnxcam explain``: pictures (and heatmaps) for image files from an explanation graph."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from onnxcam.cli.dataset_cmd import engine_options
from onnxcam.cli.common import (
    EXIT_PARTIAL,
    EXIT_USAGE,
    LazyHelp,
    Reporter,
    expand_inputs,
    fail,
    format_table,
    label_of,
    make_explainer,
    message_of,
    method_help,
    parse_class,
    parse_methods,
    prepare_output_dir,
    provider_options,
    save_npy,
    save_png,
    setup_logging,
)

DEFAULT_OUT = "onnxcam-out"
TABLE_HEADERS = ("file", "top1", "label", "score", "explained", "files written")


def output_stems(files: list[Path]) -> list[str]:
    """Output name stems: the file's stem, with ``-2``, ``-3``, ... for later files whose stem
    was already taken (e.g. ``a/cat.jpg`` and ``b/cat.png``), compared case-insensitively."""
    taken: set[str] = set()
    stems = []
    for f in files:
        stem, n = f.stem or "image", 1
        while (stem if n == 1 else f"{stem}-{n}").casefold() in taken:
            n += 1
        stem = stem if n == 1 else f"{stem}-{n}"
        taken.add(stem.casefold())
        stems.append(stem)
    return stems


def target_paths(out: Path, stem: str, methods: list[str], save_npy: bool) -> list[tuple[str, str, Path]]:
    """(method, kind 'png'|'npy', path) for every file one image produces."""
    paths = []
    for m in methods:
        paths.append((m, "png", out / f"{stem}.{m}.png"))
        if save_npy:
            paths.append((m, "npy", out / f"{stem}.{m}.npy"))
    return paths


@dataclass
class ImageResult:
    """What ``explain`` did for one image."""

    file: str
    top1: int
    label: str
    score: float
    explained: int
    explained_label: str
    written: list[Path] = field(default_factory=list)

    def row(self, out: Path) -> list[str]:
        explained = str(self.explained) if self.explained == self.top1 \
            else f"{self.explained} ({self.explained_label})"
        names = ", ".join(os.path.relpath(p, out) if p.parent == out else str(p) for p in self.written)
        return [self.file, str(self.top1), self.label, f"{self.score:.3f}", explained, names]


def write_image_outputs(results: dict, i: int, original: Any, geometry: Any, targets, overwrite: bool,
                        layout: str = "NCHW", color: str = "RGB") -> list[Path]:
    """Write one image's pictures (``runtime.pictures.method_picture``: an overlay on the photo,
    or an input-space picture at model input resolution) and .npy heatmaps (model input
    resolution). Returns the paths written; raises on the first failure."""
    from onnxcam.runtime.pictures import method_picture

    written: list[Path] = []
    for method, kind, path in targets:
        if kind == "png":
            save_png(method_picture(results[method], i, original, geometry, layout, color), path, overwrite)
        else:
            save_npy(results[method].heatmaps[i], path, overwrite)
        written.append(path)
    return written


def _write_item(explainer: Any, item: Any, targets, methods: list[str], overwrite: bool,
                report: Reporter) -> ImageResult | None:
    """Write one explained image's files; a failure (or the image's own error) is one error line."""
    from onnxcam.models.files import OutputError
    from onnxcam.runtime.postprocess import softmax

    if item.error is not None:
        report.error(item.error)
        return None
    f, first = item.source.path, item.results[methods[0]]
    try:
        written = write_image_outputs(item.results, 0, item.image, item.geometry, targets, overwrite,
                                      layout=explainer.info.layout, color=explainer.info.preprocess.color)
    except OutputError as exc:
        report.error(exc)
        return None
    except OSError as exc:
        report.error(f"{f}: cannot write {exc.filename or 'output'} ({exc.strerror or exc})")
        return None
    except Exception as exc:  # noqa: BLE001  (out of memory on a huge photo, ...)
        report.error(f"{f}: cannot make its pictures ({type(exc).__name__}: {exc})")
        return None
    finally:
        item.image = None  # free the decoded photo early
    probs = softmax(first.logits)[0]
    top1, explained_class = int(probs.argmax()), int(first.class_index[0])
    labels = explainer.labels
    return ImageResult(str(f), top1, label_of(labels, top1), float(probs[top1]), explained_class,
                       label_of(labels, explained_class), written)


def _todo(files: list[Path], out_dir: Path, methods: list[str], save_npy: bool, overwrite: bool,
          report: Reporter) -> list[tuple[Path, list]]:
    """Each image with the files it will write; images whose outputs exist are refused before any
    work (never overwritten without --overwrite)."""
    from onnxcam.models.files import OutputError, check_target

    todo = []
    for f, stem in zip(files, output_stems(files)):
        targets = target_paths(out_dir, stem, methods, save_npy)
        try:
            for _, _, path in targets:
                check_target(path, overwrite)
        except OutputError as exc:
            report.error(f"{f}: {message_of(exc)}")
            continue
        todo.append((f, targets))
    return todo


@click.command("explain", short_help="Heatmap overlays for image files or directories.")
@click.argument("model", metavar="MODEL.cam.onnx")
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE_OR_DIR...")
@click.option("-m", "--method", "--methods", "methods", multiple=True, metavar="NAME", cls=LazyHelp,
              help_text=method_help)
@click.option("-c", "--class", "class_", default="top1", show_default=True, metavar="top1|INDEX",
              help="Class to explain: each image's top-1 class, or one class index for all images.")
@click.option("-o", "--out", default=DEFAULT_OUT, show_default=True,
              help="Output directory (created if missing).")
@click.option("--save-npy", is_flag=True, help="Also write each heatmap at model input resolution as float32 .npy.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files (never replaced otherwise).")
@click.option("-b", "--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Images per graph run (also Score-CAM's masked-input batch).")
@click.option("--parquet", "parquet", metavar="DIR", default=None,
              help="Write a sharded Parquet dataset to DIR instead of pictures (one row per image and method; "
                   "inputs may also be glob patterns, .txt lists and .csv/.parquet manifests). A rerun resumes.")
@engine_options
@click.option("--shard-size", type=click.IntRange(1), default=256, show_default=True,
              help="With --parquet: images per Parquet file.")
@click.option("--recursive", is_flag=True, help="With --parquet: also the images in sub-directories.")
@click.option("--pictures", is_flag=True,
              help="With --parquet: also keep each row's picture (the heatmap over the photo) as PNG bytes in a "
                   "'picture' column.")
@provider_options
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def explain_command(model: str, inputs: tuple[str, ...], methods: tuple[str, ...], class_: str, out: str,
                    save_npy: bool, overwrite: bool, batch_size: int, parquet: str | None, engine: str,
                    ray_address: str | None, actors: int, cpus_per_actor: float, gpus_per_actor: float,
                    shard_size: int, recursive: bool, pictures: bool, providers: Any, threads: int | None,
                    debug: bool) -> None:
    """Explain images with an explanation graph (made by `onnxcam export`).

    For each image and method, writes OUT/<stem>.<method>.png (the heatmap over the original
    photo) and, with --save-npy, OUT/<stem>.<method>.npy; prints a summary table. Images whose
    stems repeat get -2, -3, ... appended. Exit status: 0 all done, 1 some inputs failed,
    2 usage or model errors.
    """
    setup_logging(debug)
    from onnxcam.runtime import ClassIndexError, ModelError
    from onnxcam.runtime.datasets import iter_explain
    from onnxcam.runtime.explainer import class_indices
    from tqdm import tqdm

    method_list = parse_methods(methods)
    class_index = parse_class(class_)
    explainer = make_explainer(model, providers, threads, batch_size, debug, spinning=False)  # decoders run beside it
    try:
        explainer.preprocessing()
        explainer.method_specs(method_list)
        class_indices(class_index, 1, explainer.info.num_classes)
    except (ClassIndexError, ModelError) as exc:
        fail(exc, EXIT_USAGE, debug)
    if parquet is not None:
        from onnxcam.cli.dataset_cmd import explain_dataset, ray_options

        ray = ray_options(engine, ray_address, actors, cpus_per_actor, gpus_per_actor, debug)
        options = dict(shard_size=shard_size, batch_size=batch_size, overwrite=overwrite, pictures=pictures)
        explain_dataset(explainer, model, inputs, method_list, class_index, parquet, options, recursive, debug, ray)
        return
    out_dir = prepare_output_dir(out, debug)
    report = Reporter(debug)
    files, input_errors = expand_inputs(inputs, exclude=out_dir)
    for message in input_errors:
        report.error(message)
    todo = _todo(files, out_dir, method_list, save_npy, overwrite, report)
    results: list[ImageResult] = []
    with tqdm(total=len(todo), desc="explaining", unit="img", file=sys.stderr, leave=False,
              dynamic_ncols=True, disable=None if todo else True) as bar:
        try:
            for item in iter_explain(explainer, [str(f) for f, _ in todo], method_list, class_index,
                                     batch_size=batch_size, keep_images=True):
                done = _write_item(explainer, item, todo[item.index][1], method_list, overwrite, report)
                results.extend([done] if done else [])
                bar.update(1)
        except (ClassIndexError, ModelError) as exc:
            bar.close()
            fail(exc, EXIT_USAGE, debug)
    _summary(results, report, method_list, out_dir)


def _summary(results: list[ImageResult], report: Reporter, methods: list[str], out_dir: Path) -> None:
    if results:
        click.echo(format_table(TABLE_HEADERS, [r.row(out_dir) for r in results]))
    n_files = sum(len(r.written) for r in results)
    total = len(results) + report.failed
    line = (f"explained {len(results)} of {total} input{'s' if total != 1 else ''} with "
            f"{', '.join(methods)}: {n_files} file{'s' if n_files != 1 else ''} in {out_dir}")
    if report.failed:
        line += f"; {report.failed} failed (see the error lines)"
    click.echo(line)
    if report.failed:
        sys.exit(EXIT_PARTIAL)
