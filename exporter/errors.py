"""Errors the exporter raises for the user to read."""
from __future__ import annotations

from typing import TYPE_CHECKING

from onnxcam.models.errors import OnnxcamError

if TYPE_CHECKING:
    import onnx_ir as ir


class ExportError(OnnxcamError):
    """One-line user-facing error; the CLI prints it (parameters as flags) and exits 2."""


class UnsupportedOperator(ExportError):
    """An operator on the path from the target to the scores that the reverse pass cannot go
    through: it has no gradient rule, or (``reason``) its rule cannot apply here."""

    def __init__(self, node: ir.Node, reason: str = "has no gradient rule") -> None:
        self.node, self.reason = node, reason
        super().__init__(f"operator {node.op_type} (node '{node.name}') {reason}")
