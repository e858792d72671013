"""Reverse-mode differentiation of an ONNX graph, written back as ONNX operators.

Given a forward graph, a target tensor A, an output tensor S and a seed tensor dS (the same
shape as S), :func:`differentiate` appends the nodes computing ∂⟨dS, S⟩/∂A. Only the nodes on a
path from A to S are differentiated; branches that do not depend on A are left alone, and a
tensor used several times (fan-out) accumulates the gradients of all its uses.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx_ir as ir
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.errors import ExportError, UnsupportedOperator  # noqa: F401 (re-exported)
from onnxcam.exporter.probe import TensorFacts
from onnxcam.exporter.rules import PIECEWISE_LINEAR, RULES, Rule, rule_key
from onnxcam.exporter.rules.qoperator import OUTPUT_QUANTIZATION, output_quantization

#: operators whose outputs never carry a gradient (integer or boolean results, or shape data)
NON_DIFFERENTIABLE = {
    "Shape", "Size", "ArgMax", "ArgMin", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual",
    "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "NonZero", "ConstantOfShape", "Constant", "Range",
    "OneHot", "RandomNormalLike", "RandomUniformLike", "EyeLike",
}


#: operators linear in each operand separately (the operands multiplied: Gemm's C and Conv's bias are added)
_PRODUCTS = {"Mul": 2, "MatMul": 2, "Gemm": 2, "Conv": 2, "ConvTranspose": 2, "Einsum": None}


@dataclass
class Path:
    """The part of the graph between a target tensor and an output."""

    nodes: list[ir.Node]          # topological order
    values: set[ir.Value]         # tensors that depend on the target and reach the output


#: operators whose integer outputs stand for real numbers (see ``rules.quantization``)
QUANTIZED = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", *OUTPUT_QUANTIZATION}


def _carries_gradient(value: ir.Value, facts: TensorFacts) -> bool:
    """Float tensors and the integer outputs of quantized operators (also once max-pooled or
    reshaped); not the scale and zero point a DynamicQuantizeLinear computes (constants under the
    straight-through rule)."""
    producer = value.producer()
    if producer is not None and producer.op_type == "DynamicQuantizeLinear":
        return value is producer.outputs[0]
    if facts.is_float(value.name) or (producer is not None and producer.op_type in QUANTIZED):
        return True
    return producer is not None and value is producer.outputs[0] and output_quantization(value) is not None


def is_straight_through(path: Path) -> bool:
    """Whether the reverse pass goes through quantizing operators (straight-through gradients)."""
    return any(node.op_type in QUANTIZED for node in path.nodes)


def find_path(graph: ir.Graph, facts: TensorFacts, target: ir.Value, output: ir.Value) -> Path:
    """The nodes and tensors on differentiable paths from ``target`` to ``output``."""
    nodes = list(graph)
    reached: set[ir.Value] = {target}
    for node in nodes:
        if node.op_type in NON_DIFFERENTIABLE:
            continue
        if any(inp is not None and inp in reached for inp in node.inputs):
            reached.update(o for o in node.outputs if _carries_gradient(o, facts))
    needed: set[ir.Value] = {output}
    for node in reversed(nodes):
        if node.op_type in NON_DIFFERENTIABLE:
            continue
        if any(o in needed for o in node.outputs):
            needed.update(i for i in node.inputs if i is not None and _carries_gradient(i, facts))
    values = reached & needed
    path_nodes = [
        n for n in nodes
        if n.op_type not in NON_DIFFERENTIABLE
        and any(o in values for o in n.outputs)
        and any(i is not None and i in values for i in n.inputs)
    ]
    return Path(path_nodes, values)


def unsupported_nodes(path: Path) -> list[ir.Node]:
    """Nodes on ``path`` for which no rule exists."""
    return [n for n in path.nodes if rule_key(n) not in RULES]


def is_piecewise_linear(path: Path) -> bool:
    """Whether S is piecewise linear in A along ``path`` (so ∂²S/∂A² = ∂³S/∂A³ = 0).

    Products (Mul, Div, MatMul, Gemm, Conv) stay linear only while at most one operand depends on A.
    """
    for node in path.nodes:
        operands = node.inputs[:_PRODUCTS.get(node.op_type, 2)]
        dependent_inputs = sum(1 for i in operands if i is not None and i in path.values)
        if node.op_type in _PRODUCTS:
            if dependent_inputs > 1:
                return False
        elif node.op_type == "Div":
            if node.inputs[1] in path.values:
                return False
        elif rule_key(node) not in PIECEWISE_LINEAR:
            return False
    return True


def differentiate(
    builder: GraphBuilder, path: Path, target: ir.Value, output: ir.Value, seed: ir.Value,
    overrides: Mapping[str, Rule] | None = None,
) -> ir.Value:
    """Append the reverse pass of ``path`` and return ∂⟨seed, output⟩/∂target.

    ``overrides`` replaces the rules of some operators (Guided Backpropagation's ReLU, say).
    """
    missing = unsupported_nodes(path)
    if missing:
        raise UnsupportedOperator(missing[0])
    rules = {**RULES, **(overrides or {})}
    grads: dict[ir.Value, ir.Value] = {output: seed}
    for node in reversed(path.nodes):
        output_grads = [grads.get(o) for o in node.outputs]
        if all(g is None for g in output_grads):
            continue
        needs = [i is not None and i in path.values for i in node.inputs]
        input_grads = rules[rule_key(node)](builder, node, output_grads, needs)
        for inp, need, grad in zip(node.inputs, needs, input_grads):
            if not need or grad is None:
                continue
            grads[inp] = builder.op("Add", grads[inp], grad) if inp in grads else grad
    if target not in grads:
        raise ExportError(f"the scores do not depend on the target tensor '{target.name}'")
    return grads[target]
