"""Exceptions raised by the runtime; each message is one line meant for an end user."""
from __future__ import annotations

from onnxcam.models.errors import OnnxcamError

__all__ = ["ClassIndexError", "ImageError", "ModelError", "OnnxcamError"]


class ModelError(OnnxcamError):
    """The model file is missing, unreadable, or not an onnxcam explanation graph."""


class ImageError(OnnxcamError):
    """An image could not be read or is refused (names the file in the message)."""


class ClassIndexError(OnnxcamError, ValueError):
    """A requested class index is out of range, of the wrong type or the wrong length."""
