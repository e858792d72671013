"""Class-name lists: the bundled ImageNet-1k names and users' own label files (no torch needed)."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

__all__ = ["imagenet_labels", "load_labels"]


@lru_cache(maxsize=1)
def _imagenet_labels() -> tuple[str, ...]:
    text = resources.files("onnxcam.models").joinpath("imagenet_labels.json").read_text("utf-8")
    names = json.loads(text)
    if len(names) != 1000:  # pragma: no cover - guards a corrupted package
        raise RuntimeError(f"imagenet_labels.json holds {len(names)} names, expected 1000")
    return tuple(names)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard class-index order (torchvision's names)."""
    return list(_imagenet_labels())


def load_labels(path: str | Path) -> list[str]:
    """Read a user's class names.

    Accepted forms:
      * ``.json``: a list of names, or an object mapping ``"0".."N-1"`` to names;
      * anything else: plain text, one name per line (blank lines are ignored).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is empty or not one of the forms above (one-line message).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"labels file not found: {p}")
    text = p.read_text("utf-8-sig")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"labels file {p} is not valid JSON: {e}") from None
        names = _names_from_json(data, p)
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"labels file {p} holds no class names")
    return names


def _names_from_json(data: object, p: Path) -> list[str]:
    """Turn a decoded JSON labels document into a list of names."""
    if isinstance(data, list) and all(isinstance(n, str) for n in data):
        return list(data)
    if isinstance(data, dict) and all(isinstance(n, str) for n in data.values()):
        try:
            indexed = {int(k): v for k, v in data.items()}
        except ValueError:
            indexed = {}
        if indexed and sorted(indexed) == list(range(len(indexed))):
            return [indexed[i] for i in range(len(indexed))]
    raise ValueError(
        f"labels file {p} must hold a JSON list of strings or an object mapping 0..N-1 to strings"
    )
