"""The pictures people look at: one image's picture for a method, and a comparison grid.

A CAM map is an overlay on the original photo (the heatmap mapped back through the resize and
crop); an input-space method is drawn at the model input resolution as the registry says (the
deprocessed guided image or a signed map, see ``pixelmaps``). numpy and Pillow only.
"""
from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from onnxcam.runtime.colormap import overlay
from onnxcam.runtime.images import Geometry, heatmap_to_original
from onnxcam.runtime.pixelmaps import input_space_picture

CELL_W, CELL_H, LABEL_H, PAD, TITLE_H, LEGEND_H = 200, 170, 36, 6, 30, 17
#: Overlays of larger photos are drawn on a reduced copy of at most this many pixels (same aspect):
#: memory per picture stays bounded whatever the photo's size.
MAX_PICTURE_PIXELS = 4096 * 4096
#: one tile of a comparison: (first label line, second label line, picture)
Tile = tuple[str, str, Image.Image]


def method_picture(result, index: int, original: Image.Image, geometry: Geometry, layout: str = "NCHW",
                   color: str = "RGB", alpha: float = 0.5) -> Image.Image:
    """The picture of image ``index`` of an ``Explanation``: its overlay on ``original`` (the
    photo it came from, ``geometry`` its preprocessing), or for an input-space method its picture
    at the model input resolution."""
    if result.attributions is not None:
        return input_space_picture(result.method, result.attributions[index], layout, color)
    photo = bounded(original)
    return overlay(photo, heatmap_to_original(result.heatmaps[index], geometry, (photo.height, photo.width)),
                   alpha=alpha)


def bounded(photo: Image.Image, max_pixels: int = MAX_PICTURE_PIXELS) -> Image.Image:
    """``photo``, or a reduced copy of at most ``max_pixels`` pixels with the same aspect."""
    if photo.width * photo.height <= max_pixels:
        return photo
    scale = (max_pixels / (photo.width * photo.height)) ** 0.5
    return photo.resize((max(1, int(photo.width * scale)), max(1, int(photo.height * scale))), Image.BILINEAR,
                        reducing_gap=3.0)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def comparison_picture(rows: Sequence[Sequence[Tile]], title: str, legend: Sequence[str] = ()) -> Image.Image:
    """One picture: a title and the legend lines under it, then per row its tiles, each scaled to
    fit a CELL_W × CELL_H cell under its two-line label."""
    n_cols = max(len(tiles) for tiles in rows)
    width = PAD + n_cols * (CELL_W + PAD)
    head = TITLE_H + LEGEND_H * len(legend)
    canvas = Image.new("RGB", (width, head + len(rows) * (LABEL_H + CELL_H + PAD) + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    big, small = _font(15), _font(12)
    draw.text((PAD, 8), _fit(draw, title, big, width - 2 * PAD), fill=(0, 0, 0), font=big)
    for k, line in enumerate(legend):
        draw.text((PAD, TITLE_H - 2 + k * LEGEND_H), _fit(draw, line, small, width - 2 * PAD), fill=(40, 40, 40),
                  font=small)
    for r, tiles in enumerate(rows):
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
