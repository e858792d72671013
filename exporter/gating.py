"""Run each reverse pass to the input only when asked: an ``If`` on an optional switch input.

onnxruntime runs every node of a graph whatever outputs are fetched, so a graph whose
``input_gradients`` / ``guided_gradients`` passes were ordinary nodes would make every call
(Grad-CAM, the masked batches of Score-CAM, a plain prediction, saliency on a graph that also
carries the guided pass) pay for every whole-network reverse pass it carries. Instead the nodes
that only one such output needs move into the ``then_branch`` of an ``If`` whose condition is the
graph input ``<output>_enabled`` (``input_gradients_enabled``, ``guided_gradients_enabled``: bool
scalars, default ``true`` through an initializer of the same name, so callers that do not know
them get the outputs). Fed ``false``, the ``else_branch`` returns that output as an empty tensor
([0, C, H, W]) and its pass costs nothing.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx_ir as ir
from onnxcam.models.contract import INPUT_GRADIENT_MODES, GraphMetadata, switch_name

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


def gate_outputs(graph: ir.Graph, gated: Sequence[ir.Value], per_image_shape: Sequence[int]) -> dict[str, str]:
    """Give each of the ``gated`` graph outputs (float32 [N, *per_image_shape]) its own ``If`` on
    its own switch input (see the module docstring): the nodes only that output depends on move
    into the If's ``then_branch``, in graph order (the graph must be topologically sorted).
    Returns {output name: switch input name}."""
    switches = {}
    for value in list(gated):
        others = [v for v in graph.outputs if v is not value]
        only_this = _needed([value]) - _needed(others)
        moving = [node for node in graph if node in only_this]
        name, position = value.name, graph.outputs.index(value)
        switches[name] = switch_name(name)
        graph.remove(moving, safe=False)
        graph.outputs.pop(position)
        value.name = f"{name}/computed"  # the If's output takes the public name

        empty = ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(
            np.zeros((0, *per_image_shape), np.float32), name=f"{name}/empty"))], name=f"onnxcam/{name}/empty")
        skipped = empty.outputs[0]
        skipped.name = f"{name}/skipped"
        skipped.type = ir.TensorType(ir.DataType.FLOAT)
        skipped.shape = ir.Shape([0, *per_image_shape])
        switch = ir.Value(name=switches[name], type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]),
                          const_value=ir.tensor(np.array(True), name=switches[name]))
        graph.inputs.append(switch)
        graph.register_initializer(switch)
        gate = ir.Node("", "If", [switch], [
            ir.AttrGraph("then_branch", ir.Graph([], [value], nodes=moving, name=f"{name}_computed")),
            ir.AttrGraph("else_branch", ir.Graph([], [skipped], nodes=[empty], name=f"{name}_skipped")),
        ], name=f"onnxcam/{name}_gate")
        graph.append(gate)
        out = gate.outputs[0]
        out.name = name
        out.type = ir.TensorType(ir.DataType.FLOAT)
        out.shape = ir.Shape([ROWS, *per_image_shape])
        graph.outputs.insert(position, out)
    return switches


class GateInputGradientsPass(ir.passes.InPlacePass):
    """Put each input-gradient output the metadata lists (``onnxcam.input_gradients``) behind its
    own switch (see the module docstring) and record the switches in the metadata. The graph
    must be topologically sorted."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        meta = GraphMetadata.from_props(model.metadata_props)
        if meta.input_gradients is None:
            return ir.passes.PassResult(model, modified=False)
        names = INPUT_GRADIENT_MODES[meta.input_gradients]
        gated = [v for v in model.graph.outputs if v.name in names]
        switches = gate_outputs(model.graph, gated, list(gated[0].shape)[1:])
        model.metadata_props.update(meta.replace(input_gradient_switches=switches).to_props())
        return ir.passes.PassResult(model, modified=True)
