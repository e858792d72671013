"""An evaluation's results as files people read: per-image CSV, JSON and Markdown summaries, and
the mean deletion / insertion curves as PNG plots."""
from __future__ import annotations

import csv
import io
import json
import math

from PIL import Image

from onnxcam.runtime.metrics.evaluate import METRICS, Aggregate
from onnxcam.runtime.metrics.faithfulness import auc
from onnxcam.runtime.metrics.plot import plot_curves


def _cell(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def per_image_csv(aggregate: Aggregate) -> str:
    """One row per (image, method): ``image,method,class,<metric>...``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["image", "method", "class"] + aggregate.metrics)
    writer.writerows(row[:3] + [_cell(v) for v in row[3:]] for row in aggregate.rows)
    return out.getvalue()


def summary_json(summary: dict) -> str:
    return json.dumps(summary, indent=2) + "\n"


def markdown_table(summary: dict, metrics: list[str], n_images: int) -> str:
    """The summary as a Markdown table (one row per method, ↑/↓ on each metric's column)."""
    methods = list(summary)
    cols = metrics + sorted({k for m in methods for k in summary[m] if k.startswith("win_vs_")})
    head = "| method | " + " | ".join(f"{c} {METRICS[c].better if c in METRICS else '↑'}" for c in cols) + " |"
    rows = [f"| {m} | " + " | ".join("–" if summary[m].get(c) is None else f"{summary[m][c]:.4f}" for c in cols) + " |"
            for m in methods]
    return "\n".join([f"{n_images} image{'s' if n_images != 1 else ''}; ↑ higher is better, ↓ lower is better.",
                      "", head, "|---|" + "---:|" * len(cols)] + rows) + "\n"


def curve_plots(aggregate: Aggregate) -> dict[str, Image.Image]:
    """{method: plot of its mean deletion / insertion curves (AUC in the legend)}."""
    plots = {}
    for method, kinds in aggregate.mean_curves().items():
        lines = [(f"{kind} (AUC {float(auc(kinds[kind])):.3f})", kinds[kind])
                 for kind in ("deletion", "insertion") if kind in kinds]
        plots[method] = plot_curves(lines, title=f"{method}: mean deletion / insertion curves",
                                    y_label="class probability", y_range=(0.0, 1.0))
    return plots


def curve_file_name(method: str) -> str:
    return f"curves_{method.replace('+', 'p')}.png"

