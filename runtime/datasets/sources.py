"""The images of a dataset run: directories, files, glob patterns, lists and manifests.

Each argument is one of
- an image file, or a directory (its image files, sorted; ``--recursive`` walks sub-directories);
- a glob pattern (``val/**/*.JPEG``; ``**`` crosses directories), expanded sorted;
- a ``.txt`` list (one path per line, relative to the list's directory; ``#`` comments);
- a ``.csv`` or ``.parquet`` manifest with a ``path`` column and optionally ``class`` (an integer
  class index per image, explained instead of the top-1).

The result keeps the arguments' order, each image once; what yields nothing is one error line.
"""
from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from onnxcam.runtime.images import IMAGE_EXTENSIONS

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Source:
    """One image to explain: its path and the class to explain (None: its top-1)."""

    path: str
    class_index: int | None = None


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
        raise ValueError(f"{where}: class {value!r} is not an integer class index") from None
    if not number.is_integer() or number < 0:
        raise ValueError(f"{where}: class {value!r} is not a class index ≥ 0")
    return int(number)


def _manifest_rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_manifest(path: Path) -> list[Source]:
    """The rows of a CSV / Parquet manifest (``path`` column, optional ``class``), paths relative
    to the manifest's directory."""
    rows = _manifest_rows(path)
    if rows and "path" not in rows[0]:
        raise ValueError(f"{path}: a manifest needs a 'path' column (found {', '.join(map(str, rows[0]))})")
    base = path.parent
    return [Source(str(base / str(row["path"])), _class_of(row.get("class"), f"{path} row {i + 2}"))
            for i, row in enumerate(rows)]


def read_list(path: Path) -> list[Source]:
    """The paths of a ``.txt`` list, one per line, relative to its directory."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [Source(str(path.parent / line.strip())) for line in lines if line.strip() and not line.startswith("#")]


def _expand(arg: str, recursive: bool) -> list[Source]:
    path = Path(arg)
    if path.is_dir():
        found = _images_in(path, recursive)
        if not found:
            raise ValueError(f"{arg}: directory has no images")
        return [Source(str(p)) for p in found]
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".csv", ".parquet"):
            return read_manifest(path)
        if suffix == ".txt":
            return read_list(path)
        return [Source(str(path))]
    if _GLOB_CHARS & set(arg):
        found = sorted(p for p in glob.glob(arg, recursive=True) if Path(p).suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise ValueError(f"{arg}: the pattern matches no image files")
        return [Source(p) for p in found]
    raise ValueError(f"{arg}: no such file or directory")


def expand_sources(args: Iterable[str], recursive: bool = False) -> tuple[list[Source], list[str]]:
    """The images named by ``args`` (see the module docstring), each once, and one error line per
    argument that yields nothing (or cannot be read)."""
    sources, errors, seen = [], [], set()
    for arg in args:
        try:
            found = _expand(arg, recursive)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            errors.append(str(exc) if isinstance(exc, ValueError) else f"{arg}: cannot read ({exc})")
            continue
        except Exception as exc:  # noqa: BLE001  (a corrupt Parquet manifest)
            errors.append(f"{arg}: cannot read ({type(exc).__name__}: {exc})")
            continue
        for source in found:
            key = os.path.normcase(os.path.abspath(source.path))
            if key not in seen:
                seen.add(key)
                sources.append(source)
    return sources, errors
