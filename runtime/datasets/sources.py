"""The images of a dataset run: directories, files, glob patterns, lists and manifests.

Each argument is one of
- an image file, or a directory (its image files, sorted; ``--recursive`` walks sub-directories);
- a glob pattern (``val/**/*.JPEG``; ``**`` crosses directories), expanded sorted;
- a ``.txt`` list (one path per line, relative to the list's directory; ``#`` comments);
- a ``.csv`` or ``.parquet`` manifest with a ``path`` column and optionally ``class`` (an integer
  class index per image, explained instead of the top-1) and, for ``evaluate``, ground truth:
  ``boxes`` (JSON ``[[x_min, y_min, x_max, y_max], ...]`` in the photo's pixels) or ``mask`` (a
  mask image, relative to the manifest).

Any of them may be a ``pyarrow.fs`` URI (``s3://bucket/val/``, ``gs://…/list.txt``; see
``storage``), and a list or manifest may name URIs.

The result keeps the arguments' order, each image once; what yields nothing is one error line.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from onnxcam.runtime.datasets import storage
from onnxcam.runtime.images import IMAGE_EXTENSIONS

_GLOB_CHARS = set("*?[")


class SourceError(ValueError):
    """An argument that names no images (one line, naming it)."""


@dataclass(frozen=True)
class Source:
    """One image to explain: its path and the class to explain (None: its top-1); from a manifest
    also its ground truth for ``evaluate``: ``boxes`` [[x_min, y_min, x_max, y_max], ...] in the
    photo's pixels, or ``mask`` (a mask image's path or URI)."""

    path: str
    class_index: int | None = None
    boxes: tuple[tuple[float, float, float, float], ...] | None = None
    mask: str | None = None

    def key(self) -> str:
        """What identifies this input in a run's digest (ground truth included when given)."""
        extra = "" if self.boxes is None and self.mask is None else f"\t{self.boxes}\t{self.mask}"
        return f"{self.path}\t{self.class_index}{extra}"


def _images_in(directory: Path, recursive: bool) -> list[Path]:
    """The entries named like images (a directory ``x.jpg`` too: it becomes that image's error
    row, not a silent gap), sorted, hidden ones skipped."""
    walk = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(p for p in walk if not any(part.startswith(".") for part in p.relative_to(directory).parts)
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_of(value: object, where: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()) or value != value:  # empty or NaN
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SourceError(f"{where}: class {value!r} is not an integer class index") from None
    if not number.is_integer() or not 0 <= number < 2**62:
        raise SourceError(f"{where}: class {value!r} is not a class index ≥ 0")
    return int(number)


def _boxes_of(value: object, where: str) -> tuple | None:
    """A manifest's ``boxes`` cell: JSON text or a list of [x_min, y_min, x_max, y_max] (empty: none)."""
    if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and value != value):
        return None
    try:
        rows = json.loads(value) if isinstance(value, str) else value
        rows = rows if rows and isinstance(rows[0], (list, tuple)) else [rows]
        boxes = tuple(tuple(float(v) for v in row) for row in rows)
    except (ValueError, TypeError, IndexError, RecursionError):
        raise SourceError(f"{where}: boxes {str(value)[:60]!r} are not [[x_min, y_min, x_max, y_max], ...]") from None
    if not boxes or any(len(b) != 4 or not all(map(math.isfinite, b)) for b in boxes):
        raise SourceError(f"{where}: each box needs 4 finite numbers x_min, y_min, x_max, y_max")
    return boxes


def _manifest_rows(location: str) -> tuple[list[str], list[dict]]:
    """(column names, rows) of a CSV or Parquet manifest (a path or a URI)."""
    if storage.suffix(location) == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(storage.read_bytes(location)))
        return table.column_names, table.to_pylist()
    reader = csv.DictReader(io.StringIO(storage.read_bytes(location).decode("utf-8"), newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def read_manifest(location: str | Path) -> list[Source]:
    """The rows of a CSV / Parquet manifest (``path`` column, optional ``class``, ``boxes`` and
    ``mask``), paths relative to the manifest's directory (or URIs)."""
    location = str(location)
    columns, rows = _manifest_rows(location)
    if "path" not in columns:
        found = ", ".join(repr(c) for c in columns[:5]) or "none"
        raise SourceError(f"{location}: a manifest needs a 'path' column (found {found})")
    if not rows:
        raise SourceError(f"{location}: the manifest lists no images")
    if any(not isinstance(row.get("path"), str) or not row["path"].strip() for row in rows):
        raise SourceError(f"{location}: a row has no path")
    base = storage.parent(location)

    def source(i: int, row: dict) -> Source:
        where = f"{location} row {i + 2}"
        mask = row.get("mask")
        mask = storage.child(base, mask.strip()) if isinstance(mask, str) and mask.strip() else None
        return Source(storage.child(base, str(row["path"])), _class_of(row.get("class"), where),
                      _boxes_of(row.get("boxes"), where), mask)

    return [source(i, row) for i, row in enumerate(rows)]


def read_list(location: str | Path) -> list[Source]:
    """The paths of a ``.txt`` list, one per line, relative to its directory (or URIs)."""
    location = str(location)
    lines = storage.read_bytes(location).decode("utf-8").splitlines()
    base = storage.parent(location)
    found = [Source(storage.child(base, line.strip())) for line in lines if line.strip() and not line.startswith("#")]
    if not found:
        raise SourceError(f"{location}: the list names no images")
    return found


def _named(arg: str) -> list[Source]:
    """A file argument: a manifest, a list, or one image."""
    suffix = storage.suffix(arg)
    if suffix in (".csv", ".parquet"):
        return read_manifest(arg)
    if suffix == ".txt":
        return read_list(arg)
    return [Source(arg)]


def _expand_uri(arg: str, recursive: bool) -> list[Source]:
    if _GLOB_CHARS & set(arg.partition("://")[2]):
        found = [u for u in storage.glob(arg) if storage.suffix(u) in IMAGE_EXTENSIONS]
        if not found:
            raise SourceError(f"{arg}: the pattern matches no image files")
        return [Source(u) for u in found]
    kind = storage.kind(arg)
    if kind == "dir":
        found = [u for u in storage.list_files(arg, recursive) if storage.suffix(u) in IMAGE_EXTENSIONS]
        if not found:
            raise SourceError(f"{arg}: directory has no images")
        return [Source(u) for u in found]
    if kind == "file":
        return _named(arg)
    raise SourceError(f"{arg}: no such file or directory")


def _expand(arg: str, recursive: bool) -> list[Source]:
    if storage.is_uri(arg):
        return _expand_uri(arg, recursive)
    path = Path(arg)
    if path.is_dir():
        found = _images_in(path, recursive)
        if not found:
            raise SourceError(f"{arg}: directory has no images")
        return [Source(str(p)) for p in found]
    if path.is_file():
        return _named(arg)
    if _GLOB_CHARS & set(arg):
        found = sorted(p for p in glob.glob(arg, recursive=True) if Path(p).suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise SourceError(f"{arg}: the pattern matches no image files")
        return [Source(p) for p in found]
    raise SourceError(f"{arg}: no such file or directory")


def relative_names(paths: list[str]) -> list[str]:
    """Each path relative to the deepest folder holding them all: the file names when they share
    one folder, ``cat/1.jpg`` and ``dog/1.jpg`` when they do not (so two names differ whenever
    their paths do). Paths and URIs alike, ``/`` or the OS separator."""
    parts = [p.replace(os.sep, "/").split("/") for p in paths]
    common = parts[0][:-1] if parts else []
    for other in parts[1:]:
        k = 0
        while k < min(len(common), len(other) - 1) and common[k] == other[k]:
            k += 1
        common = common[:k]
    return ["/".join(other[len(common):]) for other in parts]


def _one_line(message: str) -> str:
    return " ".join(message.split())


def expand_sources(args: Iterable[str], recursive: bool = False) -> tuple[list[Source], list[str]]:
    """The images named by ``args`` (see the module docstring), each once, and one error line per
    argument that yields nothing (or cannot be read)."""
    sources, errors, seen = [], [], set()
    for arg in args:
        try:
            found = _expand(arg, recursive)
        except UnicodeDecodeError:
            errors.append(f"{arg}: cannot read (not UTF-8 text)")
            continue
        except SourceError as exc:
            errors.append(_one_line(str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001  (an unreadable file, a corrupt Parquet manifest)
            errors.append(_one_line(f"{arg}: cannot read ({type(exc).__name__}: {exc})"))
            continue
        for source in found:
            key = source.path if storage.is_uri(source.path) else os.path.normcase(os.path.abspath(source.path))
            if key not in seen:
                seen.add(key)
                sources.append(source)
    return sources, errors
