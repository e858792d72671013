"""Line plots with Pillow only (matplotlib is not a runtime dependency): deletion / insertion
curves with axes, ticks, a legend and a title."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Line colours (RGB) used in order.
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]


def plot_curves(curves: Sequence[tuple[str, np.ndarray]], title: str = "", x_label: str = "fraction of pixels",
                y_label: str = "score", size: tuple[int, int] = (640, 420),
                y_range: tuple[float, float] | None = None) -> Image.Image:
    """Draw curves (``(legend label, y values)``; x runs evenly from 0 to 1) into an RGB image."""
    width, height = size
    font = ImageFont.load_default()
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 60, 20, 30, 45
    x0, x1, y0, y1 = left, width - right, top, height - bottom  # plot area (y0 top)
    ys = [np.asarray(c, np.float64) for _, c in curves]
    if y_range is None:
        lo = min([float(np.nanmin(y)) for y in ys if y.size] + [0.0])
        hi = max([float(np.nanmax(y)) for y in ys if y.size] + [lo + 1e-6])
        pad = 0.05 * (hi - lo)
        y_range = (lo - pad if lo < 0 else lo, hi + pad)
    lo, hi = y_range
    hi = hi if hi > lo else lo + 1.0

    def px(fx: float, fy: float) -> tuple[float, float]:
        return x0 + fx * (x1 - x0), y1 - (fy - lo) / (hi - lo) * (y1 - y0)

    d.rectangle([x0, y0, x1, y1], outline="black")
    for t in np.linspace(0, 1, 6):  # x ticks
        x, _ = px(t, lo)
        d.line([x, y1, x, y1 + 4], fill="black")
        d.text((x, y1 + 6), f"{t:.1f}", fill="black", font=font, anchor="mt")
    for t in np.linspace(lo, hi, 6):  # y ticks and grid
        _, y = px(0, t)
        d.line([x0 - 4, y, x0, y], fill="black")
        d.line([x0 + 1, y, x1 - 1, y], fill=(225, 225, 225))
        d.text((x0 - 6, y), f"{t:.2f}", fill="black", font=font, anchor="rm")
    d.text(((x0 + x1) / 2, height - 8), x_label, fill="black", font=font, anchor="mb")
    d.text((8, y0 - 8), y_label, fill="black", font=font, anchor="lb")
    if title:
        d.text(((x0 + x1) / 2, 6), title, fill="black", font=font, anchor="mt")
    for k, y in enumerate(ys):
        if y.size >= 2:
            pts = [px(i / (len(y) - 1), v) for i, v in enumerate(y)]
            d.line(pts, fill=COLOURS[k % len(COLOURS)], width=2)
    if curves:  # legend background
        d.rectangle([x1 - 156, y0 + 2, x1 - 4, y0 + 14 + 14 * len(curves) - 2], fill="white", outline=(200, 200, 200))
    for k, ((label, _), y) in enumerate(zip(curves, ys)):
        colour = COLOURS[k % len(COLOURS)]
        ly = y0 + 8 + 14 * k  # legend, top right
        d.line([x1 - 150, ly, x1 - 130, ly], fill=colour, width=2)
        d.text((x1 - 125, ly), label, fill="black", font=font, anchor="lm")
    return img
