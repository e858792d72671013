"""Errors the exporter raises for the user to read."""
from onnxcam.models.errors import OnnxcamError


class ExportError(OnnxcamError):
    """One-line user-facing error; the CLI prints it (parameters as flags) and exits 2."""
