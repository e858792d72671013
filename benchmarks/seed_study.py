"""The seed study's three measurements, reproduced with ``onnxcam.runtime.metrics`` on ONNX Runtime.

Model: ``efficientnet-lite0`` (real ImageNet weights, exported with ``onnxcam.exporter.export`` or
taken from ``onnxcam demo``'s cache). Photos: the shared fixtures (``../shared/fixtures/images``),
each explained for its top-1 class. Its head is global average pooling → linear, so Grad-CAM here
IS CAM (the CAM-equivalent Grad-CAM of the seed).

1. confidence change with the map: p(x ⊙ M) − p(x)  (``confidence_change``; higher is better)
2. change after removing the top 25 % pixels (set to 0 in normalised space), relative:
   100·(p(x without top 25 %) − p(x))/p(x)  (``remove_top_percent``; more negative is better)
3. IoU of the box around the top 25 % pixels with the ground-truth box (``topk_box_iou``), on
   the photos with a ground-truth mask (the Samoyed: trimap 0; the bird: VOC 3), on the photo.

Plus Average Drop % and Increase in Confidence % (Grad-CAM++ paper) from measurement 1's
scores. Prints a Markdown table (means over the photos).

    python benchmarks/seed_study.py [--methods gradcam,gradcam++,...] [--model PATH]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "fixtures" / "images"
NAMES = ["coral_dog_segmentation.png", "coral_bird_segmentation.png", "coral_cat.png", "coral_parrot.jpg",
         "coral_hot_dog.jpg", "coral_pets.jpg"]
MASKS = {"coral_dog_segmentation.png": ("coral_dog_segmentation_mask.png", 0),
         "coral_bird_segmentation.png": ("coral_bird_segmentation_mask.png", 3)}
DEFAULT_METHODS = "gradcam,gradcam++,xgradcam,hirescam,layercam,gradcam-elementwise,eigencam,eigengradcam,ablationcam"
CACHE = Path.home() / ".cache" / "onnxcam" / "efficientnet-lite0-onnxcam0.1.0.cam.onnx"


def model_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if CACHE.is_file():
        return CACHE
    from onnxcam.exporter import export
    out = Path("/tmp/onnxcam-seed-study-efficientnet-lite0.cam.onnx")
    if not out.is_file():
        print("exporting efficientnet-lite0 …", file=sys.stderr)
        export("efficientnet-lite0", out=str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="an efficientnet-lite0 .cam.onnx (default: demo cache or export)")
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--percent", type=float, default=25.0)
    args = ap.parse_args()

    from onnxcam.runtime import Explainer
    from onnxcam.runtime.metrics import (average_drop, cam_mult_scores, increase_in_confidence_percent,
                                         remove_top_percent, topk_box_iou)

    ex = Explainer(model_path(args.model), providers=["CPUExecutionProvider"], batch_size=32)
    paths = [PHOTOS / n for n in NAMES if (PHOTOS / n).is_file()]
    if not paths:
        sys.exit(f"no fixture photos in {PHOTOS}")
    x, _ = ex.prepare(paths)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    res = ex.explain_many(x, methods)
    geo_res = ex.explain_many(paths, methods)  # same maps, with the geometry to go back to the photo
    gt_idx = [i for i, p in enumerate(paths) if p.name in MASKS]
    gts = []
    for i in gt_idx:
        mask_name, value = MASKS[paths[i].name]
        gts.append(np.asarray(Image.open(PHOTOS / mask_name)) == value)
    classes = res[methods[0]].class_index
    labels = [ex.labels[c] if ex.labels else str(c) for c in classes]
    print(f"efficientnet-lite0 ({ex.info.target_layer}), {len(paths)} photos: "
          + ", ".join(f"{p.stem} → {lab}" for p, lab in zip(paths, labels)), file=sys.stderr)

    k = args.percent
    rows = []
    for m in methods:
        t0 = time.perf_counter()
        maps = res[m].heatmaps
        y, o, _ = cam_mult_scores(ex, x, maps, classes)
        drop = remove_top_percent(ex, x, maps, k, classes, relative=True)
        on_photo = geo_res[m].heatmaps_on_original()
        iou = [topk_box_iou(on_photo[i], g, k)[0] for i, g in zip(gt_idx, gts)]
        rows.append((m, float(np.mean(o - y)), float(np.mean(drop)), float(np.mean(iou)) if iou else float("nan"),
                     average_drop(y, o), increase_in_confidence_percent(y, o), time.perf_counter() - t0))
    print(f"| method | 1. confidence change with map ↑ | 2. change after removing top {k:g} % (%) ↓ | "
          f"3. top-{k:g} % box IoU ↑ ({len(gt_idx)} photos) | Average Drop % ↓ | Increase in Confidence % ↑ |")
    print("|---|---:|---:|---:|---:|---:|")
    for m, c1, c2, c3, ad, ic, _ in rows:
        name = "gradcam (= CAM here)" if m == "gradcam" else m
        print(f"| {name} | {c1:+.4f} | {c2:+.2f} | {c3:.3f} | {ad:.2f} | {ic:.1f} |")


if __name__ == "__main__":
    main()
