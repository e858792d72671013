"""Select a transformer's class token before the token-wise layers that follow it, not after.

A ViT reads its scores off one token: ``Gather(tokens, 0, axis=1)`` after the last block's MLP,
residual additions and final norm. Those layers act on each token alone, so selecting the token
first gives the same scores — and the forward and reverse passes of the last block's projection
and MLP then run on one row instead of T (197 for a ViT at 224²), which is most of the cost of
explaining a late target. The region moved is every token-wise node between the read-out and
the first node that is not token-wise (attention, a reshape), the target, or a tensor something
else also reads; the tensors at its border get the read-out's Gather instead.
"""
from __future__ import annotations

import onnx_ir as ir
from onnxcam.exporter.probe import TensorFacts

#: element-wise operators (one output element from the same element of each operand)
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Erf", "Relu", "Gelu", "Tanh", "Sigmoid", "Identity",
                "Dropout", "Cast", "Neg", "Sqrt", "Softplus", "HardSwish", "HardSigmoid", "Mish", "Clip",
                "LeakyRelu", "Elu", "Selu", "Celu", "Abs", "Exp", "Log", "Reciprocal"}


class SelectTokensFirstPass(ir.passes.InPlacePass):
    """Move a read-out ``Gather(x, index, axis=1)`` of a token tensor [N, T, D] (constant index)
    above the token-wise nodes that compute x (see the module docstring)."""

    def __init__(self, facts: TensorFacts, target: str) -> None:
        super().__init__()
        self.facts, self.target = facts, target

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        if self.facts.size_dynamic:  # token counts that follow the image size: left alone
            return ir.passes.PassResult(model, modified=False)
        for readout in [n for n in model.graph if self._is_readout(n)]:
            region = self._region(model.graph, readout)
            if region:
                self._move(model.graph, readout, region)
                modified = True
        return ir.passes.PassResult(model, modified=modified)

    def _is_readout(self, node: ir.Node) -> bool:
        if node.op_type != "Gather" or node.attributes.get_int("axis", 0) != 1 or len(node.inputs) != 2:
            return False
        shape = self.facts.shapes.get(node.inputs[0].name, ())
        index = node.inputs[1].const_value
        return len(shape) == 3 and index is not None and index.size <= 4 and node.inputs[0].name != self.target \
            and not node.outputs[0].is_graph_output()

    def _token_wise(self, node: ir.Node) -> bool:
        """Each output row along axis 1 depends on the same row of its token operands only."""
        if len(node.outputs) != 1:
            return False
        if node.op_type == "LayerNormalization":
            return node.attributes.get_int("axis", -1) in (-1, 2) and all(
                i is None or i is node.inputs[0] or self._broadcast(i) for i in node.inputs)
        if node.op_type == "MatMul":
            weight = node.inputs[1]
            return weight.const_value is not None and len(weight.const_value.shape) == 2
        return node.op_type in _ELEMENTWISE

    def _broadcast(self, value: ir.Value) -> bool:
        """An operand that does not reach the token axis (a scalar, a bias [D])."""
        return len(self.facts.shapes.get(value.name, (0, 0, 0))) <= 1

    def _aligned(self, value: ir.Value | None, node: ir.Node) -> bool:
        """A token operand of ``node``: a tensor of the node's output shape (but for the features
        of a MatMul's left operand)."""
        if value is None:
            return False
        shape, out = self.facts.shapes.get(value.name), self.facts.shapes.get(node.outputs[0].name)
        if node.op_type == "MatMul" and value is node.inputs[0]:
            return shape is not None and out is not None and shape[:-1] == out[:-1]
        return shape == out

    def _operands_fit(self, node: ir.Node) -> bool:
        return all(i is None or self._aligned(i, node) or self._broadcast(i) or (node.op_type == "MatMul" and k == 1)
                   for k, i in enumerate(node.inputs))

    def _region(self, graph: ir.Graph, readout: ir.Node) -> list[ir.Node]:
        """The token-wise nodes above ``readout`` whose outputs only the region (or the read-out) reads."""
        candidates, frontier = set(), [readout.inputs[0]]
        while frontier:
            value = frontier.pop()
            node = value.producer()
            if node is None or node in candidates or value.name == self.target or value in graph.outputs \
                    or not self._token_wise(node) or not self._operands_fit(node):
                continue
            candidates.add(node)
            frontier += [i for i in node.inputs if i is not None and self._aligned(i, node)]
        changed = True
        while changed:  # drop nodes whose outputs something outside the region reads
            changed = False
            for node in list(candidates):
                if any(use.node is not readout and use.node not in candidates for use in node.outputs[0].uses()):
                    candidates.discard(node)
                    changed = True
        return [n for n in graph if n in candidates]

    def _move(self, graph: ir.Graph, readout: ir.Node, region: list[ir.Node]) -> None:
        index, selected = readout.inputs[1], {}
        rows = None if len(index.const_value.shape) == 0 else int(index.const_value.shape[0])

        def picked(value: ir.Value) -> ir.Value:
            """The read-out rows of ``value``: the region's copy, or a new Gather at its border."""
            if value not in selected:
                gather = ir.node("Gather", [value, index], attributes={"axis": 1}, name=f"{readout.name}/{value.name}")
                graph.insert_before(readout, gather)
                selected[value] = self._record(gather.outputs[0], value, rows, f"{value.name}/selected")
            return selected[value]

        for node in region:
            inputs = [picked(i) if i is not None and self._aligned(i, node) else i for i in node.inputs]
            copy = ir.node(node.op_type, inputs, attributes=dict(node.attributes), domain=node.domain,
                           name=f"{node.name}/selected")
            graph.insert_before(readout, copy)
            selected[node.outputs[0]] = self._record(copy.outputs[0], node.outputs[0], rows,
                                                     f"{node.outputs[0].name}/selected")
        readout.outputs[0].replace_all_uses_with(selected[readout.inputs[0]])
        for node in [readout, *reversed(region)]:
            graph.remove(node, safe=True)

    def _record(self, new: ir.Value, old: ir.Value, rows: int | None, name: str) -> ir.Value:
        """Name ``new`` (the read-out rows of ``old``: ``rows`` of them, or one without its axis
        for a scalar index) and record its facts."""
        new.name, facts = name, self.facts
        shape = facts.shape(old.name)
        facts.shapes[name] = shape[:1] + (() if rows is None else (rows,)) + shape[2:]
        facts.dtypes[name] = facts.dtypes[old.name]
        facts.batch_axes[name] = (0,)
        return new
