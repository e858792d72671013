"""The installed distribution's version (pyproject.toml is the one place it is written)."""
from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("onnxcam")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
