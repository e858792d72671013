"""Small look-ups on an ``onnx_ir`` graph shared by the exporter's passes."""
from __future__ import annotations

import onnx_ir as ir


def values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    """Every named tensor of ``graph``."""
    values: dict[str, ir.Value] = {v.name: v for v in graph.inputs}
    values.update(graph.initializers)
    for node in graph:
        for out in node.outputs:
            if out.name:
                values[out.name] = out
    return values


def resolve_identity(value: ir.Value) -> ir.Value:
    """Follow Identity nodes back to the tensor the rest of the graph actually uses."""
    while value.producer() is not None and value.producer().op_type == "Identity":
        value = value.producer().inputs[0]
    return value


def default_opset(model: ir.Model) -> int:
    """The model's default-domain opset version."""
    return next((v for d, v in model.opset_imports.items() if d in ("", "ai.onnx")), 1)


def output_named(graph: ir.Graph, name: str) -> ir.Value | None:
    return next((v for v in graph.outputs if v.name == name), None)
