"""The export as a sequence of passes over one ``onnx_ir`` model, checked and serialised once.

classifier IR ─ SelectTokensFirstPass ─ MaxPoolIndicesPass ─ ExplanationGraphPass ─ RemoveUnusedNodes ─ TopologicalSort
─ SeparateDequantizeReadersPass ─ GateInputGradientsPass ─ [BakeHeatmapPass] ─ [RawInputPass] → one proto → onnx.checker → file.

Every pass changes the model in place (onnx-ir's pass infrastructure); the model is converted to
a proto only by the probe (``probe.py``, to run onnxruntime) and once at the end.
"""
from __future__ import annotations

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes
from onnxcam.exporter.autodiff import find_path
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.explain_graph import (
    ExplanationGraphPass,
    GraphSpec,
    differentiated_sources,
)
from onnxcam.exporter.gating import GateInputGradientsPass
from onnxcam.exporter.graph_values import values_by_name
from onnxcam.exporter.probe import TensorFacts
from onnxcam.exporter.qdq_groups import SeparateDequantizeReadersPass
from onnxcam.exporter.rules.pooling import MaxPoolIndicesPass
from onnxcam.exporter.token_readout import SelectTokensFirstPass


def apply_passes(model: ir.Model, passes: list[ir.passes.PassBase]) -> ir.Model:
    """Run in-place ``passes`` in order. (onnx-ir's ``Sequential`` would wrap the passes' own
    ``ExportError`` messages in a ``PassError``.)"""
    for each in passes:
        each(model)
    return model


def explanation_passes(spec: GraphSpec, facts: TensorFacts, heatmap: str | None = None,
                       raw_input: bool = False) -> list[ir.passes.PassBase]:
    """The passes that turn the classifier ``spec.model`` into its explanation graph."""
    values = values_by_name(spec.model.graph)
    paths = [find_path(spec.model.graph, facts, values[name], values[spec.logits])
             for name in differentiated_sources(spec)]
    passes: list[ir.passes.PassBase] = [
        SelectTokensFirstPass(facts, spec.target), MaxPoolIndicesPass(paths), ExplanationGraphPass(spec, facts),
        ir_passes.RemoveUnusedNodesPass(), ir_passes.TopologicalSortPass(), SeparateDequantizeReadersPass(),
        GateInputGradientsPass(),
    ]
    if heatmap is not None:
        from onnxcam.exporter.bake_heatmap import BakeHeatmapPass

        passes.append(BakeHeatmapPass(heatmap))
    if raw_input:
        from onnxcam.exporter.raw_input import RawInputPass

        passes.append(RawInputPass())
    return passes


def checked_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto that passes ``onnx.checker.check_model(full_check=True)``."""
    proto = ir.to_proto(model)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"internal: the explanation graph fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
    return proto
