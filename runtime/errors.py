"""Exceptions raised by the runtime; each message is one line meant for an end user."""
from __future__ import annotations


class OnnxcamError(Exception):
    """Base class of every error the runtime raises on purpose."""


class ModelError(OnnxcamError):
    """The model file is missing, unreadable, or not an onnxcam explanation graph."""


class ImageError(OnnxcamError):
    """An image could not be read or is refused (names the file in the message)."""


class ClassIndexError(OnnxcamError, ValueError):
    """A requested class index is out of range or the wrong length."""
