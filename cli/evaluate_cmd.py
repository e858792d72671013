"""``onnxcam evaluate``: faithfulness, localisation and complexity metrics of CAM methods on a
folder of images, with numpy + onnxruntime + Pillow only (``onnxcam.runtime.metrics``).

Ground truth (only needed by the localisation metrics), in the ORIGINAL photo's pixels:
- boxes: ``--boxes FILE`` (or ``boxes.json`` / ``boxes.csv`` inside DATA): JSON
  ``{"cat.jpg": [[x_min, y_min, x_max, y_max], ...], ...}`` or CSV with the header
  ``file,x_min,y_min,x_max,y_max`` (one row per box); ``x_max``/``y_max`` are exclusive pixel edges;
  a COCO JSON (``images`` + ``annotations`` with ``bbox`` = [x, y, width, height]) is read too;
- Pascal VOC XML: ``<stem>.xml`` beside the image (``object/bndbox``, 1-based inclusive corners);
- masks: ``<stem>_mask.png`` beside ``<stem>.jpg``; object pixels are those equal to
  ``--mask-value`` (default: every non-zero pixel); ``--mask-value STEM=V`` (repeatable) sets it
  for one image, e.g. a pet trimap (0 = animal) beside a VOC class mask (3 = bird).
Localisation metrics compare the heatmap mapped back onto the photo (outside the centre crop = 0).
"""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

import click

from onnxcam.cli.common import EXIT_PARTIAL, EXIT_USAGE, fail, prepare_output_dir, setup_logging
from onnxcam.cli.explain_cmd import (IMAGE_EXTENSIONS, PROVIDERS, Reporter, make_explainer, parse_class,
                                     parse_methods)

FAITHFULNESS = ("confidence_change", "drop_topk", "average_drop", "increase_in_confidence", "deletion", "insertion")
LOCALISATION = ("topk_iou", "pointing_game", "energy_pointing_game", "box_localisation")
COMPLEXITY = ("sparsity", "gini")
ROAD = ("road_morf", "road_lerf", "road_combined")
SANITY = ("randomisation_spearman", "randomisation_ssim")
ALL_METRICS = FAITHFULNESS + ROAD + LOCALISATION + COMPLEXITY + SANITY
#: Direction of "better" for the Markdown table.
BETTER = {"confidence_change": "↑", "drop_topk": "↓", "average_drop": "↓", "increase_in_confidence": "↑",
          "deletion": "↓", "insertion": "↑", "topk_iou": "↑", "pointing_game": "↑", "energy_pointing_game": "↑",
          "box_localisation": "↑", "sparsity": "↑", "gini": "↑", "road_morf": "↓", "road_lerf": "↑",
          "road_combined": "↑", "randomisation_spearman": "↓", "randomisation_ssim": "↓"}
METRICS_HELP = (
    "confidence_change: p(x⊙map) − p(x) (seed method 1); drop_topk: 100·(p after removing the top --percent % "
    "pixels − p)/p (seed method 2); average_drop / increase_in_confidence: AD % and IC % (Grad-CAM++); "
    "deletion / insertion: RISE AUC; road_morf / road_lerf / road_combined: ROAD (noisy linear imputation, "
    "percentiles 10..90; slow, not in the default set); topk_iou: IoU of the top --percent % box with the ground truth (seed "
    "method 3); pointing_game (hit = 1); energy_pointing_game; box_localisation (15 % threshold, largest "
    "segment, IoU ≥ 0.5 → 1); sparsity (max/mean); gini; randomisation_spearman / randomisation_ssim: similarity of each map to the map "
    "of the model with its top --randomise-layers layers re-drawn (cascading randomisation; needs onnx). Groups: "
    "faithfulness, road, localisation, complexity, sanity, all.")


def parse_metrics(value: Optional[str], has_ground_truth: bool) -> list[str]:
    if value is None:
        return list(FAITHFULNESS + (LOCALISATION if has_ground_truth else ()) + COMPLEXITY)
    groups = {"faithfulness": FAITHFULNESS, "localisation": LOCALISATION, "localization": LOCALISATION,
              "complexity": COMPLEXITY, "road": ROAD, "sanity": SANITY, "all": ALL_METRICS}
    names: list[str] = []
    for name in (v.strip().lower().replace("-", "_") for v in value.split(",")):
        if name in groups:
            names.extend(groups[name])
        elif name in ALL_METRICS:
            names.append(name)
        elif name:
            fail(f"unknown metric {name!r}; choose from {', '.join(ALL_METRICS)} "
                 "(or faithfulness, road, localisation, complexity, sanity, all)", EXIT_USAGE)
    if not names:
        fail("--metrics is empty", EXIT_USAGE)
    return list(dict.fromkeys(names))


def parse_mask_values(values: tuple[str, ...]) -> tuple[Optional[int], dict[str, int]]:
    """``--mask-value`` entries → (default value or None, {stem: value})."""
    default: Optional[int] = None
    per_stem: dict[str, int] = {}
    for value in values:
        stem, _, number = value.rpartition("=")
        try:
            v = int(number)
        except ValueError:
            fail(f"--mask-value takes V or STEM=V with an integer V, got {value!r}", EXIT_USAGE)
        if stem:
            per_stem[stem] = v
        else:
            default = v
    return default, per_stem


# -- data and ground truth ---------------------------------------------------------------------
def list_images(data: Path) -> list[Path]:
    return sorted(p for p in data.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS and not p.stem.lower().endswith("_mask"))


def read_boxes(path: Path) -> dict[str, list[list[float]]]:
    """Boxes per file name from JSON or CSV (see the module docstring); bad files end with exit 2."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        fail(f"{path}: cannot read the boxes file ({exc.strerror or exc})", EXIT_USAGE)
    boxes: dict[str, list[list[float]]] = {}
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
            if isinstance(raw, dict) and "annotations" in raw and "images" in raw:
                return _coco_boxes(raw)
            if not isinstance(raw, dict):
                raise ValueError("expected an object {file name: [[x_min, y_min, x_max, y_max], ...]}")
            for name, value in raw.items():
                rows = value if value and isinstance(value[0], (list, tuple)) else [value]
                boxes[str(name)] = [[float(v) for v in r] for r in rows]
        else:
            reader = csv.DictReader(text.splitlines())
            need = {"file", "x_min", "y_min", "x_max", "y_max"}
            if not need.issubset(reader.fieldnames or ()):
                raise ValueError("expected the header file,x_min,y_min,x_max,y_max")
            for row in reader:
                boxes.setdefault(row["file"], []).append([float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")])
        for name, rows in boxes.items():
            if any(len(r) != 4 for r in rows):
                raise ValueError(f"{name}: a box needs 4 numbers x_min, y_min, x_max, y_max")
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        fail(f"{path}: unreadable boxes file ({exc})".splitlines()[0], EXIT_USAGE)
    return boxes


def _coco_boxes(raw: dict) -> dict[str, list[list[float]]]:
    """COCO detection JSON → {file name: [[x_min, y_min, x_max, y_max], ...]}."""
    names = {img["id"]: Path(str(img["file_name"])).name for img in raw["images"]}
    boxes: dict[str, list[list[float]]] = {}
    for ann in raw["annotations"]:
        x, y, w, h = (float(v) for v in ann["bbox"])
        boxes.setdefault(names[ann["image_id"]], []).append([x, y, x + w, y + h])
    return boxes


def read_voc(path: Path) -> list[list[float]]:
    """Pascal VOC XML → boxes (1-based inclusive corners → pixel edges: x_min − 1, …, x_max)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
        rows = []
        for box in root.iter("bndbox"):
            v = {k: float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")}
            rows.append([v["xmin"] - 1, v["ymin"] - 1, v["xmax"], v["ymax"]])
    except (ET.ParseError, TypeError, ValueError) as exc:
        raise ValueError(f"{path.name}: unreadable Pascal VOC XML ({exc})") from None
    if not rows:
        raise ValueError(f"{path.name}: no object/bndbox in the Pascal VOC XML")
    return rows


def find_mask(image: Path) -> Optional[Path]:
    for p in sorted(image.parent.glob(f"{image.stem}_mask.*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            return p
    return None


def load_ground_truth(image: Path, size: tuple[int, int], boxes: dict, mask_value: Optional[int]) -> Any:
    """Ground truth in the photo's pixels: a boolean mask [H0, W0] or boxes [K, 4]; None if there
    is none. Raises ValueError (one line) for a mask of the wrong size or bad boxes."""
    import numpy as np
    from PIL import Image

    from onnxcam.runtime.metrics import as_boxes, as_mask

    h0, w0 = size
    rows = boxes.get(image.name, boxes.get(image.stem))
    if rows is None and image.with_suffix(".xml").is_file():
        rows = read_voc(image.with_suffix(".xml"))
    if rows is not None:
        try:
            return as_boxes(np.asarray(rows, np.float64), (h0, w0))
        except ValueError as exc:
            raise ValueError(f"{exc}") from None
    mask_path = find_mask(image)
    if mask_path is None:
        return None
    try:
        with Image.open(mask_path) as im:
            arr = np.asarray(im if im.mode in ("L", "P", "1", "I", "I;16") else im.convert("L"))
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"mask {mask_path.name} is unreadable ({type(exc).__name__})") from None
    if arr.shape[:2] != (h0, w0):
        raise ValueError(f"mask {mask_path.name} is {arr.shape[1]}x{arr.shape[0]}, the image is {w0}x{h0}")
    mask = arr == mask_value if mask_value is not None else arr != 0
    try:
        return as_mask(mask, (h0, w0))
    except ValueError:
        what = f"value {mask_value}" if mask_value is not None else "non-zero pixels"
        raise ValueError(f"mask {mask_path.name} has no object pixels ({what})") from None


# -- metrics on one batch ----------------------------------------------------------------------
def evaluate_batch(explainer: Any, x: Any, geos: list, gts: list, methods: list[str], metrics: list[str],
                   class_index: Optional[int], opts: dict) -> tuple[dict, dict, dict]:
    """→ (values {method: {metric: [per image]}}, curves {method: {kind: [N, n] array}},
    relative drops {method: [N]} for Win %)."""
    import numpy as np

    from onnxcam.runtime import heatmap_to_original
    from onnxcam.runtime.metrics import (auc, box_localisation, cam_mult_scores, deletion_curve,
                                         energy_pointing_game, gini, insertion_curve, pointing_game,
                                         relative_drop, remove_top_percent, road_scores, sparsity,
                                         topk_box_iou)

    res = explainer.explain_many(x, methods=methods, class_index=class_index)
    bs = opts["batch_size"]
    values: dict = {}
    curves: dict = {}
    drops: dict = {}
    for m in methods:
        maps, classes = res[m].heatmaps, res[m].class_index
        v: dict = {}
        need_mult = {"confidence_change", "average_drop", "increase_in_confidence"} & set(metrics) or len(methods) > 1
        if need_mult:
            y, o, _ = cam_mult_scores(explainer, x, maps, classes, batch_size=bs)
            drops[m] = relative_drop(y, o)
            if "confidence_change" in metrics:
                v["confidence_change"] = o - y
            if "average_drop" in metrics:
                v["average_drop"] = 100.0 * drops[m]
            if "increase_in_confidence" in metrics:
                v["increase_in_confidence"] = 100.0 * (o > y)
        if "drop_topk" in metrics:
            v["drop_topk"] = remove_top_percent(explainer, x, maps, opts["percent"], classes, relative=True,
                                                batch_size=bs)
        for kind, fn in (("deletion", deletion_curve), ("insertion", insertion_curve)):
            if kind in metrics:
                c = fn(explainer, x, maps, classes, step=opts["step"], batch_size=bs)
                curves.setdefault(m, {})[kind] = c
                v[kind] = auc(c)
        if set(ROAD) & set(metrics):
            road = {order: road_scores(explainer, x, maps, order, class_index=classes, noise=opts["road_noise"],
                                       seed=0, batch_size=bs).mean(axis=1)
                    for order in ("morf", "lerf") if f"road_{order}" in metrics or "road_combined" in metrics}
            for order in ("morf", "lerf"):
                if f"road_{order}" in metrics:
                    v[f"road_{order}"] = road[order]
            if "road_combined" in metrics:
                v["road_combined"] = (road["lerf"] - road["morf"]) / 2
        if set(SANITY) & set(metrics):
            from onnxcam.runtime.metrics.sanity import model_randomisation
            r = model_randomisation(explainer.info.path, x, m, classes, steps=[opts["randomise_layers"]],
                                    seed=0, providers=explainer.providers, batch_size=bs)
            if "randomisation_spearman" in metrics:
                v["randomisation_spearman"] = r.spearman[-1]
            if "randomisation_ssim" in metrics:
                v["randomisation_ssim"] = r.ssim[-1]
        if set(LOCALISATION) & set(metrics):
            on_photo = [heatmap_to_original(h, g) for h, g in zip(maps, geos)]
            for metric in LOCALISATION:
                if metric not in metrics:
                    continue
                vals = []
                for h, gt in zip(on_photo, gts):
                    if metric == "topk_iou":
                        vals.append(topk_box_iou(h, gt, opts["percent"])[0])
                    elif metric == "pointing_game":
                        vals.append(float(pointing_game(h, gt, opts["tolerance"])[0]))
                    elif metric == "energy_pointing_game":
                        vals.append(energy_pointing_game(h, gt)[0])
                    else:
                        vals.append(float(box_localisation(h, gt)[1][0]))
                v[metric] = np.asarray(vals, np.float64)
        if "sparsity" in metrics:
            v["sparsity"] = sparsity(maps)
        if "gini" in metrics:
            v["gini"] = gini(maps)
        v["_class"] = classes
        values[m] = v
    return values, curves, drops


# -- outputs -----------------------------------------------------------------------------------
def _mean(values: list) -> Optional[float]:
    import numpy as np

    a = np.asarray(values, np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


def markdown_table(summary: dict, metrics: list[str], n_images: int) -> str:
    methods = list(summary)
    cols = metrics + sorted({k for m in methods for k in summary[m] if k.startswith("win_vs_")})
    head = "| method | " + " | ".join(f"{c} {BETTER.get(c, '↑')}" for c in cols) + " |"
    rule = "|---|" + "---:|" * len(cols)
    rows = []
    for m in methods:
        cells = []
        for c in cols:
            val = summary[m].get(c)
            cells.append("–" if val is None else f"{val:.4f}")
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join([f"{n_images} image{'s' if n_images != 1 else ''}; ↑ higher is better, ↓ lower is better.",
                      "", head, rule] + rows) + "\n"


def write_curve_plots(out: Path, curves: dict) -> list[Path]:
    import numpy as np

    from onnxcam.runtime.metrics import auc
    from onnxcam.runtime.metrics.plot import plot_curves

    written = []
    for m, kinds in curves.items():
        lines = []
        for kind in ("deletion", "insertion"):
            if kind in kinds:
                mean = np.mean(np.concatenate(kinds[kind]), axis=0)
                lines.append((f"{kind} (AUC {float(auc(mean)):.3f})", mean))
        path = out / f"curves_{m.replace('+', 'p')}.png"
        plot_curves(lines, title=f"{m}: mean deletion / insertion curves", y_label="class probability",
                    y_range=(0.0, 1.0)).save(path)
        written.append(path)
    return written


# -- the command -------------------------------------------------------------------------------
@click.command("evaluate", short_help="Faithfulness, localisation and complexity metrics on a folder of images.")
@click.argument("model", metavar="MODEL.cam.onnx")
@click.argument("data", metavar="DATA_DIR")
@click.option("-m", "--methods", "--method", "methods", multiple=True, metavar="NAME",
              help="CAM methods to compare (repeatable or comma-separated; 'all'). Default: gradcam.")
@click.option("--metrics", default=None, metavar="LIST",
              help="Comma-separated metrics or groups. Default: faithfulness and complexity, plus localisation "
                   "when ground truth is present. " + METRICS_HELP)
@click.option("-o", "--out", default="onnxcam-eval", show_default=True, help="Output directory (created if missing).")
@click.option("--boxes", "boxes_file", default=None, type=click.Path(dir_okay=False),
              help="Ground-truth boxes, JSON or CSV (default: DATA/boxes.json or DATA/boxes.csv when present).")
@click.option("--mask-value", "mask_values", multiple=True, metavar="[STEM=]V",
              help="Object pixel value in <stem>_mask.png ground-truth masks (default: any non-zero pixel); "
                   "STEM=V for one image (repeatable).")
@click.option("-c", "--class", "class_", default="top1", show_default=True, metavar="top1|INDEX",
              help="Class to explain and score: each image's top-1 class, or one index for all images.")
@click.option("--percent", type=click.FloatRange(0, 100, min_open=True), default=25.0, show_default=True,
              help="k of drop_topk and topk_iou: the top k % most salient pixels.")
@click.option("--step", type=click.IntRange(1), default=224, show_default=True,
              help="Pixels moved per step of the deletion / insertion curves (RISE: 224).")
@click.option("--tolerance", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Pointing-game tolerance in photo pixels (the original protocol uses 15).")
@click.option("--road-noise", type=click.FloatRange(0), default=0.01, show_default=True,
              help="Standard deviation of the noise added by ROAD's imputation (seeded).")
@click.option("--randomise-layers", type=click.IntRange(1), default=10**9, show_default="all",
              help="Sanity metrics: how many layers to re-draw, from the top (cascading).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate at most N images (in name order).")
@click.option("-b", "--batch-size", type=click.IntRange(1), default=16, show_default=True,
              help="Images per graph run, also the perturbed images per run of the metrics.")
@click.option("--providers", type=click.Choice(list(PROVIDERS)), default="auto", show_default=True,
              help="Execution provider: auto picks CUDA when it really works, else CPU.")
@click.option("--threads", type=click.IntRange(0), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def evaluate_command(model: str, data: str, methods: tuple[str, ...], metrics: Optional[str], out: str,
                     boxes_file: Optional[str], mask_values: tuple[str, ...], class_: str, percent: float, step: int,
                     tolerance: float, road_noise: float, randomise_layers: int, limit: Optional[int], batch_size: int, providers: str,
                     threads: Optional[int], debug: bool) -> None:
    """Evaluate CAM methods of an explanation graph on the images in DATA_DIR.

    Writes OUT/per_image.csv (one row per image and method), OUT/metrics.json
    ({method: {metric: mean}}, with win_vs_<other> = Win % when several methods are compared),
    OUT/metrics.md (the same as a Markdown table, also printed) and OUT/curves_<method>.png
    (mean deletion / insertion curves). Images that cannot be read, or lack valid ground truth
    when a localisation metric is asked for, get one error line and are left out. Exit status:
    0 all done, 1 some images failed, 2 usage or model errors.
    """
    setup_logging(debug)
    import numpy as np
    from tqdm import tqdm

    from onnxcam.runtime import ALL_METHODS, ClassIndexError, ImageError, ModelError, load_image, preprocess_image

    method_list = parse_methods(methods, ALL_METHODS)
    class_index = parse_class(class_)
    mask_value, per_stem = parse_mask_values(mask_values)
    data_dir = Path(data)
    if not data_dir.is_dir():
        fail(f"{data}: not a directory (DATA is a folder of images)", EXIT_USAGE)
    if boxes_file is None:
        for name in ("boxes.json", "boxes.csv"):
            if (data_dir / name).is_file():
                boxes_file = str(data_dir / name)
                break
    boxes = read_boxes(Path(boxes_file)) if boxes_file else {}
    files = list_images(data_dir)
    has_gt = bool(boxes) or any(find_mask(f) or f.with_suffix(".xml").is_file() for f in files)
    metric_list = parse_metrics(metrics, has_gt)
    if set(SANITY) & set(metric_list):
        try:
            import onnx  # noqa: F401
        except ImportError:
            fail("the sanity metrics (randomisation_*) need the onnx package to rewrite weights: "
                 "pip install onnx", EXIT_USAGE)
    explainer = make_explainer(model, providers, threads, batch_size, debug)
    if explainer.info.raw_input:
        fail(f"{model} takes raw uint8 pixels (exported with --raw-input); the metrics perturb the normalised "
             "float input, so evaluate a graph exported without --raw-input", EXIT_USAGE)
    if explainer.info.preprocess is None:
        fail(f"{model} has no onnxcam.preprocess metadata, so image files cannot be preprocessed for it; "
             "re-export it with `onnxcam export`", EXIT_USAGE)
    if "ablationcam" in method_list and explainer.info.head_input is None:
        fail(f"{model} has no head-only path, needed by ablationcam; re-export it with `onnxcam export`", EXIT_USAGE)
    out_dir = prepare_output_dir(out, debug)

    report = Reporter(debug)
    if not files:
        report.error(f"{data}: directory has no images (looked for "
                     f"{', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}; *_mask files are ground truth)")
        sys.exit(EXIT_PARTIAL)
    if limit is not None:
        files = files[:limit]
    need_gt = bool(set(LOCALISATION) & set(metric_list))
    opts = {"batch_size": batch_size, "percent": percent, "step": step, "tolerance": tolerance, "road_noise": road_noise,
            "randomise_layers": randomise_layers}

    rows: list[list] = []
    per_method: dict = {m: {k: [] for k in metric_list} for m in method_list}
    curves: dict = {}
    drops: dict = {m: [] for m in method_list}
    done = 0
    bar = tqdm(total=len(files), desc="evaluating", unit="img", file=sys.stderr, leave=False, dynamic_ncols=True,
               disable=None)
    try:
        for s in range(0, len(files), batch_size):
            batch, xs, geos, gts = [], [], [], []
            for f in files[s:s + batch_size]:
                try:
                    img = load_image(f)
                    gt = None
                    if need_gt:
                        gt = load_ground_truth(f, (img.height, img.width), boxes,
                                               per_stem.get(f.stem, mask_value))
                        if gt is None:
                            raise ValueError(f"no ground truth (no entry in the boxes file, no {f.stem}_mask.png, "
                                             f"no {f.stem}.xml), needed by the localisation metrics "
                                             "(leave them out with --metrics faithfulness,complexity)")
                    xi, geo = preprocess_image(img, explainer.info.preprocess)
                except (ImageError, ValueError) as exc:
                    msg = str(exc)
                    report.error(msg if msg.startswith(str(f)) else f"{f}: {msg}")
                    bar.update(1)
                    continue
                batch.append(f)
                xs.append(xi)
                geos.append(geo)
                gts.append(gt)
            if not batch:
                continue
            try:
                values, bcurves, bdrops = evaluate_batch(explainer, np.stack(xs), geos, gts, method_list,
                                                         metric_list, class_index, opts)
            except (ClassIndexError, ModelError):
                raise
            except Exception as exc:  # noqa: BLE001  (an inference failure loses this batch only)
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                for f in batch:
                    report.error(f"{f}: evaluation failed ({reason})")
                bar.update(len(batch))
                continue
            for m in method_list:
                for k in metric_list:
                    per_method[m][k].extend(np.asarray(values[m][k], np.float64).tolist())
                for kind, c in bcurves.get(m, {}).items():
                    curves.setdefault(m, {}).setdefault(kind, []).append(c)
                if m in bdrops:
                    drops[m].extend(bdrops[m].tolist())
                for j, f in enumerate(batch):
                    rows.append([f.name, m, int(values[m]["_class"][j])]
                                + [float(values[m][k][j]) for k in metric_list])
            done += len(batch)
            bar.update(len(batch))
    except (ClassIndexError, ModelError) as exc:
        bar.close()
        fail(str(exc), EXIT_USAGE, debug)
    bar.close()

    if done:
        summary = {m: {k: _mean(per_method[m][k]) for k in metric_list} for m in method_list}
        if len(method_list) > 1:
            from onnxcam.runtime.metrics import win_percent
            for a in method_list:
                for b in method_list:
                    if a != b:
                        summary[a][f"win_vs_{b}"] = win_percent(drops[a], drops[b])
        try:
            with open(out_dir / "per_image.csv", "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(["image", "method", "class"] + metric_list)
                w.writerows([r[:3] + [_fmt(v) for v in r[3:]] for r in rows])
            (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            table = markdown_table(summary, metric_list, done)
            (out_dir / "metrics.md").write_text(table, encoding="utf-8")
            write_curve_plots(out_dir, curves)
        except OSError as exc:
            fail(f"{out}: cannot write results ({exc.strerror or exc})", EXIT_USAGE, debug)
        click.echo(table, nl=False)
    total = len(files)
    line = f"evaluated {done} of {total} image{'s' if total != 1 else ''} with {', '.join(method_list)}"
    line += f": results in {out_dir}" if done else ""
    if report.failed:
        line += f"; {report.failed} failed (see the error lines)"
    click.echo(line)
    if report.failed:
        sys.exit(EXIT_PARTIAL)


def _fmt(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"
