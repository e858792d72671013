"""Which tensor holds a classifier's class scores: chosen by the caller, or found without guessing.

A Softmax / LogSoftmax / Sigmoid producing an output is looked through to its input (the
contract's ``logits`` are pre-activation). Several ``[N, C]`` outputs are accepted only when they
come from the same scores, or when exactly one of them feeds no node and has a name that says
logits / scores / probs; otherwise the caller names the scores (``scores=``).

A binary classifier with one score column s ``[N, 1]`` (and no ``[N, C ≥ 2]`` output) is
explained through ``[−s, s]``: class 1 is the logit, class 0 its negation, as pytorch-grad-cam's
``BinaryClassifierOutputTarget`` does.
"""
from __future__ import annotations

import difflib
import re

import onnx_ir as ir
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.probe import TensorFacts
from onnxcam.models.errors import param

#: activations between the class scores and an output, looked through to the scores
SCORE_ACTIVATIONS = ("Softmax", "LogSoftmax", "Sigmoid")
#: words in an output's name that say it holds the class scores
SCORE_WORDS = re.compile(r"logit|score|prob", re.IGNORECASE)


def pre_activation(value: ir.Value) -> ir.Value:
    """Identity nodes and one final Softmax / LogSoftmax / Sigmoid followed back to their input."""
    while value.producer() is not None and value.producer().op_type in ("Identity", *SCORE_ACTIVATIONS):
        node = value.producer()
        value = node.inputs[0]
        if node.op_type != "Identity":
            break
    return value


def _is_scores(value: ir.Value, facts: TensorFacts, columns: int = 2) -> bool:
    """Whether ``value`` is float ``[N, C]`` with C ≥ ``columns``."""
    shape = facts.shapes.get(value.name)
    return shape is not None and len(shape) == 2 and shape[1] >= columns and facts.is_float(value.name)


def binary_to_two_classes(graph: ir.Graph, facts: TensorFacts, logits: ir.Value) -> ir.Value:
    """``logits`` itself, or for one score column s ``[N, 1]`` the tensor ``Concat(−s, s)`` [N, 2]
    (added to ``graph`` and ``facts``)."""
    shape = facts.shape(logits.name)
    if shape[1] != 1:
        return logits
    negated = ir.node("Neg", [logits])
    both = ir.node("Concat", [negated.outputs[0], logits], attributes={"axis": 1})
    negated.outputs[0].name, both.outputs[0].name = f"{logits.name}__negated", f"{logits.name}__binary"
    graph.extend([negated, both])  # after everything: ``logits`` is produced earlier
    for node, columns in ((negated, 1), (both, 2)):
        name = node.outputs[0].name
        facts.shapes[name], facts.dtypes[name] = (shape[0], columns), facts.dtypes[logits.name]
        if logits.name in facts.batch_axes:
            facts.batch_axes[name] = facts.batch_axes[logits.name]
    return both.outputs[0]


def _describe(values: list[ir.Value], facts: TensorFacts) -> str:
    return ", ".join(f"{v.name} {list(facts.shapes.get(v.name, ()))}" for v in values)


def _named(graph: ir.Graph, name: str) -> ir.Value | None:
    for value in (*graph.inputs, *graph.outputs):
        if value.name == name:
            return value
    return next((o for node in graph for o in node.outputs if o.name == name), None)


def find_logits(graph: ir.Graph, facts: TensorFacts, scores: str | None = None) -> ir.Value:
    """The pre-activation class scores ``[N, C]`` of ``graph`` (see the module docstring): the
    tensor ``scores`` names (an output or any tensor), else the one unambiguous ``[N, C]`` output."""
    outputs = list(graph.outputs)
    if scores is not None:
        value = _named(graph, scores)
        if value is None:
            close = difflib.get_close_matches(scores, [o.name for o in outputs], n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ExportError(f"{param('scores', scores)}: no such output or tensor; the outputs are "
                              f"{_describe(outputs, facts)}{hint}")
        logits = pre_activation(value)
        if not _is_scores(logits, facts, columns=1):
            raise ExportError(f"{param('scores', scores)}: {logits.name} has shape "
                              f"{list(facts.shapes.get(logits.name, ()))}; class scores are [N, C]")
        return logits
    candidates = [o for o in outputs if _is_scores(o, facts)] or [
        o for o in outputs if _is_scores(o, facts, columns=1)]
    if not candidates:
        raise ExportError(f"the model has no [N, C] score output (outputs: {_describe(outputs, facts)}); "
                          "is it a classifier?")
    behind = {o: pre_activation(o) for o in candidates}
    if len(set(behind.values())) == 1:
        return behind[candidates[0]]
    named = {behind[o] for o in candidates if SCORE_WORDS.search(o.name) and not o.uses()}
    if len(named) == 1:
        return named.pop()
    raise ExportError(f"the model has several [N, C] outputs ({_describe(candidates, facts)}); "
                      f"say which holds the class scores with {param('scores', 'OUTPUT')}")
