"""``onnxcam explain``: overlays (and heatmaps) for image files from an explanation graph.

Only numpy, onnxruntime and Pillow are needed (the runtime is imported inside the command so
``onnxcam --help`` and ``onnxcam export`` stay cheap). The helpers here are shared with
``onnxcam demo``.
"""
from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import click

from onnxcam.cli.common import EXIT_PARTIAL, EXIT_USAGE, fail, prepare_output_dir, setup_logging

#: File name endings picked up when a directory is given (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pbm", ".pnm")
PROVIDERS = {"auto": None, "cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider"]}
DEFAULT_OUT = "onnxcam-out"


# -- option parsing ----------------------------------------------------------------------------
def parse_methods(values: Sequence[str], known: Sequence[str], default: Sequence[str] = ("gradcam",),
                  all_methods: Optional[Sequence[str]] = None) -> list[str]:
    """``--method`` values (repeatable, comma-separated allowed, ``all``) → method names, in order.
    ``all`` means ``all_methods`` (default: every known method). Unknown names end the command
    with one error line (exit 2)."""
    names: list[str] = []
    for value in values:
        for name in (v.strip().lower() for v in value.split(",")):
            if name == "all":
                names.extend(known if all_methods is None else all_methods)
            elif name:
                names.append(name)
    unknown = [n for n in names if n not in known]
    if unknown:
        fail(f"unknown method {unknown[0]!r}; choose from {', '.join(known)} (or 'all')", EXIT_USAGE)
    return list(dict.fromkeys(names)) or list(default)


def parse_class(value: str) -> Optional[int]:
    """``--class``: ``top1`` → None, a non-negative integer → that class."""
    text = value.strip().lower()
    if text in ("top1", "top-1", "top"):
        return None
    try:
        index = int(text)
    except ValueError:
        fail(f"--class must be 'top1' or a class index, got {value!r}", EXIT_USAGE)
    if index < 0:
        fail(f"--class must be 'top1' or a class index ≥ 0, got {index}", EXIT_USAGE)
    return index


# -- inputs and outputs ------------------------------------------------------------------------
def expand_inputs(args: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Files to explain (directories expanded to their image files, sorted; hidden files and
    repeats skipped) and one error message per argument that yields nothing."""
    files: list[Path] = []
    errors: list[str] = []
    seen: set[str] = set()
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            try:
                found = sorted(p for p in path.iterdir() if not p.name.startswith(".")
                               and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            except OSError as exc:
                errors.append(f"{arg}: cannot list directory ({exc.strerror or exc})")
                continue
            if not found:
                errors.append(f"{arg}: directory has no images "
                              f"(looked for {', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)})")
        elif path.exists():
            found = [path]
        else:
            errors.append(f"{arg}: no such file or directory")
            continue
        for p in found:
            key = os.path.normcase(os.path.realpath(p))
            if key not in seen:
                seen.add(key)
                files.append(p)
    return files, errors


def output_stems(files: Sequence[Path]) -> list[str]:
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


def target_paths(out: Path, stem: str, methods: Sequence[str], save_npy: bool) -> list[tuple[str, str, Path]]:
    """(method, kind 'png'|'npy', path) for every file one image produces."""
    paths = []
    for m in methods:
        paths.append((m, "png", out / f"{stem}.{m}.png"))
        if save_npy:
            paths.append((m, "npy", out / f"{stem}.{m}.npy"))
    return paths


def _write(path: Path, overwrite: bool, save: Any) -> None:
    """Write through ``save(fileobj)``; without ``overwrite`` the file is created exclusively
    (an existing file is never touched). A failed write leaves no partial file."""
    try:
        with open(path, "wb" if overwrite else "xb") as fh:
            save(fh)
    except FileExistsError:
        raise
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def save_png(image: Any, path: Path, overwrite: bool, compress_level: int = 1) -> None:
    """Save a PIL image as PNG (fast compression by default: overlays are photos)."""
    _write(path, overwrite, lambda fh: image.save(fh, format="PNG", compress_level=compress_level))


def save_npy(array: Any, path: Path, overwrite: bool) -> None:
    import numpy as np

    _write(path, overwrite, lambda fh: np.save(fh, np.asarray(array, np.float32)))


# -- results -----------------------------------------------------------------------------------
def softmax(logits: Any) -> Any:
    """Row-wise softmax of [N, C] logits (float64, numerically stable)."""
    import numpy as np

    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def label_of(labels: Optional[Sequence[str]], index: int) -> str:
    return labels[index] if labels is not None and 0 <= index < len(labels) else "-"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain left-aligned text table (two spaces between columns, a dashed rule)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


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


TABLE_HEADERS = ("file", "top1", "label", "score", "explained", "files written")


class Reporter:
    """Per-image error lines on stderr that do not garble the progress bar."""

    def __init__(self, debug: bool = False) -> None:
        self.debug = debug
        self.failed = 0

    def error(self, message: str, count: bool = True) -> None:
        from tqdm import tqdm

        if self.debug and sys.exc_info()[0] is not None:
            traceback.print_exc()
        tqdm.write(f"error: {message}", file=sys.stderr)
        self.failed += int(count)


def load_batch(explainer: Any, files: Sequence[Path], report: Reporter):
    """Read and preprocess files → (kept indices, originals, x [n, ...] or None, geometries)."""
    import numpy as np

    from onnxcam.runtime import ImageError, load_image

    kept, originals, xs, geos = [], [], [], []
    for i, f in enumerate(files):
        try:
            img = load_image(f)
            x, geo = explainer.prepare_one(img)  # uint8 pixels for a --raw-input graph
        except ImageError as exc:
            report.error(str(exc))
            continue
        except MemoryError:
            report.error(f"{f}: out of memory while reading the image")
            continue
        except Exception as exc:  # noqa: BLE001  (a decoder failure still gets one line)
            report.error(f"{f}: cannot read ({type(exc).__name__}: {exc})".splitlines()[0])
            continue
        kept.append(i)
        originals.append(img)
        xs.append(x)
        geos.append(geo)
    return kept, originals, (np.stack(xs) if xs else None), geos


def write_image_outputs(results: dict, i: int, original: Any, geometry: Any, targets, overwrite: bool,
                        alpha: float = 0.5, layout: str = "NCHW", color: str = "RGB") -> list[Path]:
    """Write one image's overlay PNGs (heatmap mapped back onto the original photo) and .npy
    heatmaps (model input resolution). Input-space methods (results with ``attributions``) get
    their own picture at model input resolution instead of an overlay: the deprocessed guided
    image (guided-backprop, guided-gradcam) or a signed diverging map clipped at the 99th
    percentile (saliency, smoothgrad, integrated-gradients). Returns the paths written; raises
    on the first failure."""
    from onnxcam.runtime import heatmap_to_original, overlay
    from onnxcam.runtime.pixelmaps import input_space_picture

    written: list[Path] = []
    for method, kind, path in targets:
        heatmap = results[method].heatmaps[i]
        attributions = getattr(results[method], "attributions", None)
        if kind == "png" and attributions is not None:
            save_png(input_space_picture(method, attributions[i], layout, color), path, overwrite)
        elif kind == "png":
            save_png(overlay(original, heatmap_to_original(heatmap, geometry), alpha=alpha), path, overwrite)
        else:
            save_npy(heatmap, path, overwrite)
        written.append(path)
    return written


def make_explainer(model: str, providers: str, threads: Optional[int], batch_size: int, debug: bool) -> Any:
    """The runtime's Explainer for MODEL, or one error line and exit 2."""
    from onnxcam.runtime import Explainer, ModelError

    try:
        return Explainer(model, providers=PROVIDERS[providers], intra_op_threads=threads, batch_size=batch_size)
    except ModelError as exc:
        fail(str(exc), EXIT_USAGE, debug)
    except Exception as exc:  # noqa: BLE001
        fail(f"{model}: cannot load ({type(exc).__name__}: {exc})".splitlines()[0], EXIT_USAGE, debug)


def check_class_range(class_index: Optional[int], num_classes: Optional[int]) -> None:
    if class_index is not None and num_classes is not None and class_index >= num_classes:
        fail(f"class index {class_index} is out of range: the model has {num_classes} classes "
             f"(0..{num_classes - 1})", EXIT_USAGE)


# -- the command -------------------------------------------------------------------------------
@click.command("explain", short_help="Heatmap overlays for image files or directories.")
@click.argument("model", metavar="MODEL.cam.onnx")
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE_OR_DIR...")
@click.option("-m", "--method", "--methods", "methods", multiple=True, metavar="NAME",
              help="CAM method (repeatable or comma-separated; 'all' for every CAM method). Default: gradcam. "
                   "Methods: gradcam, gradcam++, xgradcam, hirescam, layercam, gradcam-elementwise, eigencam, "
                   "eigengradcam, scorecam, ablationcam, gradcam-counterfactual; with a graph exported with "
                   "--input-gradients also saliency, guided-backprop, guided-gradcam, smoothgrad, "
                   "integrated-gradients (pixel-level pictures at model input resolution).")
@click.option("-c", "--class", "class_", default="top1", show_default=True, metavar="top1|INDEX",
              help="Class to explain: each image's top-1 class, or one class index for all images.")
@click.option("-o", "--out", default=DEFAULT_OUT, show_default=True,
              help="Output directory (created if missing).")
@click.option("--save-npy", is_flag=True, help="Also write each heatmap at model input resolution as float32 .npy.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files (never replaced otherwise).")
@click.option("-b", "--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Images per graph run (also Score-CAM's masked-input batch).")
@click.option("--providers", type=click.Choice(list(PROVIDERS)), default="auto", show_default=True,
              help="Execution provider: auto picks CUDA when it really works, else CPU.")
@click.option("--threads", type=click.IntRange(0), default=None, help="ONNX Runtime intra-op threads (0: ORT's default).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def explain_command(model: str, inputs: tuple[str, ...], methods: tuple[str, ...], class_: str, out: str,
                    save_npy: bool, overwrite: bool, batch_size: int, providers: str, threads: Optional[int],
                    debug: bool) -> None:
    """Explain images with an explanation graph (made by `onnxcam export`).

    For each image and method, writes OUT/<stem>.<method>.png (the heatmap over the original
    photo) and, with --save-npy, OUT/<stem>.<method>.npy; prints a summary table. Images whose
    stems repeat get -2, -3, ... appended. Exit status: 0 all done, 1 some inputs failed,
    2 usage or model errors.
    """
    setup_logging(debug)
    from tqdm import tqdm

    from onnxcam.runtime import ALL_METHODS, EVERY_METHOD, ClassIndexError, ModelError

    method_list = parse_methods(methods, EVERY_METHOD, all_methods=ALL_METHODS)
    class_index = parse_class(class_)
    explainer = make_explainer(model, providers, threads, batch_size, debug)
    info = explainer.info
    if info.preprocess is None:
        fail(f"{model} has no onnxcam.preprocess metadata, so image files cannot be preprocessed for it; "
             "re-export it with `onnxcam export`", EXIT_USAGE)
    unavailable = [m for m in method_list if m != "ablationcam" and explainer.unavailable_reason(m)]
    if unavailable:  # e.g. an input-space method without its output, scorecam on a raw-input graph
        fail(explainer.unavailable_reason(unavailable[0]), EXIT_USAGE)
    if "ablationcam" in method_list and info.head_input is None:
        fail(f"{model} has no head-only path, needed by ablationcam; re-export it with `onnxcam export`",
             EXIT_USAGE)
    check_class_range(class_index, info.num_classes)
    out_dir = prepare_output_dir(out, debug)

    report = Reporter(debug)
    files, input_errors = expand_inputs(inputs)
    for message in input_errors:
        report.error(message)
    # Images whose outputs already exist are refused before any work (never overwritten).
    todo: list[tuple[Path, list]] = []
    for f, stem in zip(files, output_stems(files)):
        targets = target_paths(out_dir, stem, method_list, save_npy)
        existing = [p for _, _, p in targets if p.exists()]
        if existing and not overwrite:
            report.error(f"{f}: {existing[0]} exists; pass --overwrite to replace it")
        else:
            todo.append((f, targets))

    results: list[ImageResult] = []
    batches = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
    bar = tqdm(total=len(batches), desc="explaining", unit="batch", file=sys.stderr, leave=False,
               dynamic_ncols=True, disable=None if batches else True)
    try:
        for batch in batches:
            results.extend(_explain_batch(explainer, batch, method_list, class_index, overwrite, report))
            bar.update(1)
    except (ClassIndexError, ModelError) as exc:
        bar.close()
        fail(str(exc), EXIT_USAGE, debug)
    bar.close()

    if results:
        click.echo(format_table(TABLE_HEADERS, [r.row(out_dir) for r in results]))
    n_files = sum(len(r.written) for r in results)
    total = len(results) + report.failed
    line = (f"explained {len(results)} of {total} input{'s' if total != 1 else ''} with "
            f"{', '.join(method_list)}: {n_files} file{'s' if n_files != 1 else ''} in {out_dir}")
    if report.failed:
        line += f"; {report.failed} failed (see the error lines)"
    click.echo(line)
    if report.failed:
        sys.exit(EXIT_PARTIAL)


def _explain_batch(explainer: Any, batch: list[tuple[Path, list]], methods: list[str],
                   class_index: Optional[int], overwrite: bool, report: Reporter) -> list[ImageResult]:
    """Load one batch, run the graph once for all methods, write every image's files."""
    from onnxcam.runtime import ClassIndexError, ModelError

    files = [f for f, _ in batch]
    kept, originals, x, geos = load_batch(explainer, files, report)
    if x is None:
        return []
    try:
        res = explainer.explain_many(x, methods=methods, class_index=class_index)
    except (ClassIndexError, ModelError):
        raise
    except Exception as exc:  # noqa: BLE001  (an inference failure loses this batch only)
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        for i in kept:
            report.error(f"{files[i]}: explanation failed ({reason})")
        return []
    first = res[methods[0]]
    probs = softmax(first.logits)
    labels = explainer.labels
    done = []
    for j, i in enumerate(kept):
        f, targets = batch[i]
        try:
            written = write_image_outputs(res, j, originals[j], geos[j], targets, overwrite,
                                          layout=explainer.info.layout, color=explainer.info.preprocess.color)
        except FileExistsError as exc:
            report.error(f"{f}: {exc.filename} exists; pass --overwrite to replace it")
            continue
        except OSError as exc:
            report.error(f"{f}: cannot write {exc.filename or 'output'} ({exc.strerror or exc})")
            continue
        top1, explained = int(probs[j].argmax()), int(first.class_index[j])
        done.append(ImageResult(str(f), top1, label_of(labels, top1), float(probs[j, top1]), explained,
                                label_of(labels, explained), written))
        originals[j] = None  # free the decoded photo early
    return done
