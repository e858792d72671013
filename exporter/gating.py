"""Run the reverse passes to the input only when asked: an ``If`` on an optional switch input.

onnxruntime runs every node of a graph whatever outputs are fetched, so a graph whose
``input_gradients`` / ``guided_gradients`` passes were ordinary nodes would make every call
(Grad-CAM, the masked batches of Score-CAM, a plain prediction) pay for one or two extra
whole-network reverse passes. Instead the nodes that only those outputs need move into the
``then_branch`` of an ``If`` node whose condition is the graph input ``input_gradients_enabled``
(bool scalar, default ``true`` through an initializer of the same name, so callers that do not
know it get the outputs). Fed ``false``, the ``else_branch`` returns the outputs as empty
tensors ([0, C, H, W]) and the passes cost nothing.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx_ir as ir

SWITCH = "input_gradients_enabled"
ROWS = "input_gradient_rows"  # the outputs' first dimension: the batch, or 0 when switched off


def _inputs(node: ir.Node) -> Iterable[ir.Value | None]:
    """The node's inputs and every value its subgraphs (If / Loop / Scan bodies) read."""
    yield from node.inputs
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            subgraphs = [attr.as_graph()]
        elif attr.type == ir.AttributeType.GRAPHS:
            subgraphs = list(attr.as_graphs())
        else:
            continue
        for subgraph in subgraphs:
            for inner in ir.traversal.RecursiveGraphIterator(subgraph):
                yield from inner.inputs


def _needed(values: Iterable[ir.Value]) -> set[ir.Node]:
    """Every node that the ``values`` depend on (through subgraphs too)."""
    needed: set[ir.Node] = set()
    stack = [v.producer() for v in values if v.producer() is not None]
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        stack.extend(v.producer() for v in _inputs(node) if v is not None and v.producer() is not None)
    return needed


def gate_outputs(graph: ir.Graph, gated: Sequence[ir.Value], per_image_shape: Sequence[int]) -> None:
    """Move the nodes only ``gated`` (graph outputs, float32 [N, *per_image_shape]) depend on
    into an ``If`` on the switch input (see the module docstring). The graph must be
    topologically sorted; the moved nodes keep their order."""
    kept = _needed(v for v in graph.outputs if v not in gated)
    only_gated = _needed(gated) - kept
    moving = [node for node in graph if node in only_gated]
    graph.remove(moving, safe=False)
    names = [value.name for value in gated]
    positions = [graph.outputs.index(value) for value in gated]
    for position in sorted(positions, reverse=True):
        graph.outputs.pop(position)

    empties = []
    for name in names:
        empty = ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(
            np.zeros((0, *per_image_shape), np.float32), name=f"{name}/empty"))], name=f"onnxcam/{name}/empty")
        empty.outputs[0].name = f"{name}/skipped"
        empty.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
        empty.outputs[0].shape = ir.Shape([0, *per_image_shape])
        empties.append(empty)
    for value in gated:  # the If's outputs take the public names
        value.name = f"{value.name}/computed"
    then_graph = ir.Graph([], list(gated), nodes=moving, name="input_gradients_computed")
    else_graph = ir.Graph([], [e.outputs[0] for e in empties], nodes=empties, name="input_gradients_skipped")

    switch = ir.Value(name=SWITCH, type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]),
                      const_value=ir.tensor(np.array(True), name=SWITCH))
    graph.inputs.append(switch)
    graph.register_initializer(switch)
    gate = ir.Node("", "If", [switch], [ir.AttrGraph("then_branch", then_graph), ir.AttrGraph("else_branch", else_graph)],
                   num_outputs=len(gated), name="onnxcam/input_gradients_gate")
    graph.append(gate)
    for position, name, out in sorted(zip(positions, names, gate.outputs)):
        out.name = name
        out.type = ir.TensorType(ir.DataType.FLOAT)
        out.shape = ir.Shape([ROWS, *per_image_shape])
        graph.outputs.insert(position, out)
