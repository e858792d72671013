"""Exporter: any image classifier → one ONNX graph with logits and target-layer gradients.

Needs the ``export`` extra (onnx, onnx-ir; torch for PyTorch sources).
"""
from onnxcam.models.version import __version__  # noqa: F401
from onnxcam.exporter.api import export
from onnxcam.exporter.errors import ExportError

__all__ = ["export", "ExportError"]
