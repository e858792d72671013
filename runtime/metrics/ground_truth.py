"""Ground truth for the localisation metrics, in the ORIGINAL photo's pixels.

- boxes: a JSON file ``{"cat.jpg": [[x_min, y_min, x_max, y_max], ...], ...}`` or a CSV with the
  header ``file,x_min,y_min,x_max,y_max`` (one row per box); ``x_max``/``y_max`` are exclusive
  pixel edges; a COCO JSON (``images`` + ``annotations`` with ``bbox`` = [x, y, width, height]) too;
- Pascal VOC XML: ``<stem>.xml`` beside the image (``object/bndbox``, 1-based inclusive corners);
- masks: ``<stem>_mask.png`` beside ``<stem>.jpg``; object pixels are those equal to the mask
  value (default: every non-zero pixel).
"""
from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from onnxcam.runtime.errors import OnnxcamError
from onnxcam.runtime.images import IMAGE_EXTENSIONS
from onnxcam.runtime.metrics.localisation import as_boxes, as_mask


class GroundTruthError(OnnxcamError):
    """A ground-truth file that cannot be read (one line naming it)."""


def read_boxes(path: Path) -> dict[str, list[list[float]]]:
    """Boxes per file name from JSON or CSV (see the module docstring); GroundTruthError for a bad file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise GroundTruthError(f"{path}: cannot read the boxes file ({exc.strerror or exc})") from None
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
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError) as exc:
        raise GroundTruthError(f"{path}: unreadable boxes file ({exc})".splitlines()[0]) from None
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


def find_mask(image: Path) -> Path | None:
    for p in sorted(image.parent.glob(f"{image.stem}_mask.*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            return p
    return None


def load_ground_truth(image: Path, size: tuple[int, int], boxes: dict, mask_value: int | None) -> np.ndarray | None:
    """Ground truth in the photo's pixels: a boolean mask [H0, W0] or boxes [K, 4]; None if there
    is none. Raises ValueError (one line) for a mask of the wrong size or bad boxes."""
    h0, w0 = size
    rows = boxes.get(image.name, boxes.get(image.stem))
    if rows is None and image.with_suffix(".xml").is_file():
        rows = read_voc(image.with_suffix(".xml"))
    if rows is not None:
        return as_boxes(np.asarray(rows, np.float64), (h0, w0))
    mask_path = find_mask(image)
    if mask_path is None:
        return None
    try:
        with Image.open(mask_path) as im:
            return mask_ground_truth(im, mask_path.name, (h0, w0), mask_value)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"mask {mask_path.name} is unreadable ({type(exc).__name__})") from None


def mask_ground_truth(image: Image.Image, name: str, size: tuple[int, int], mask_value: int | None) -> np.ndarray:
    """A mask image → boolean mask [H0, W0]: its pixels equal to ``mask_value`` (None: non-zero).
    Raises ValueError (one line, naming the mask) for an unreadable one, another size or no pixels."""
    h0, w0 = size
    try:
        arr = np.asarray(image if image.mode in ("L", "P", "1", "I", "I;16") else image.convert("L"))
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"mask {name} is unreadable ({type(exc).__name__})") from None
    if arr.shape[:2] != (h0, w0):
        raise ValueError(f"mask {name} is {arr.shape[1]}x{arr.shape[0]}, the image is {w0}x{h0}")
    mask = arr == mask_value if mask_value is not None else arr != 0
    try:
        return as_mask(mask, (h0, w0))
    except ValueError:
        what = f"value {mask_value}" if mask_value is not None else "non-zero pixels"
        raise ValueError(f"mask {name} has no object pixels ({what})") from None
