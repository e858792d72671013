"""A thin layer over onnx-ir's tape for writing the nodes of the reverse pass.

It names every new tensor and node with an ``onnxcam/`` prefix (so nothing collides with the
source graph's names), keeps integer constants and ``Shape`` nodes shared, knows the opset
(``Reduce*`` and ``Split`` changed signature over the years) and answers questions about the
forward tensors from the probe's :class:`~onnxcam.exporter.probe.TensorFacts`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir import tape
from onnxcam.exporter.errors import ExportError, UnsupportedOperator
from onnxcam.exporter.probe import TensorFacts
from onnxcam.models.errors import param

_NUMPY_TO_ONNX = {
    np.dtype(np.float32): ir.DataType.FLOAT,
    np.dtype(np.float16): ir.DataType.FLOAT16,
    np.dtype(np.float64): ir.DataType.DOUBLE,
}


class GraphBuilder:
    """Appends nodes and initializers to ``graph``; see the module docstring."""

    def __init__(self, graph: ir.Graph, facts: TensorFacts, opset: int, prefix: str = "onnxcam") -> None:
        self.graph = graph
        self.facts = facts
        self.opset = opset
        self.prefix = prefix
        self._tape = tape.Tape(graph)
        self._count = 0
        self._int_constants: dict[tuple[int, ...], ir.Value] = {}
        self._shapes: dict[int, ir.Value] = {}

    # -- emitting ---------------------------------------------------------------------------
    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def op(self, op_type: str, *inputs: ir.Value | None, **attributes: Any) -> ir.Value:
        """Append one single-output node and return its output."""
        value = self._tape.op(op_type, list(inputs), attributes or None, name=self._name(op_type))
        value.name = self._name(op_type.lower())
        return value

    def op_multi(self, op_type: str, *inputs: ir.Value | None, num_outputs: int, **attributes: Any) -> list[ir.Value]:
        """Append one node with ``num_outputs`` outputs."""
        values = self._tape.op_multi_out(
            op_type, list(inputs), attributes or None, num_outputs=num_outputs, name=self._name(op_type)
        )
        for value in values:
            value.name = self._name(op_type.lower())
        return list(values)

    def const(self, array: np.ndarray, hint: str = "const") -> ir.Value:
        """A new initializer holding ``array``."""
        return self._tape.initializer(ir.tensor(np.ascontiguousarray(array)), name=self._name(hint))

    def ints(self, values: Sequence[int]) -> ir.Value:
        """A shared 1-D int64 constant."""
        key = tuple(int(v) for v in values)
        if key not in self._int_constants:
            self._int_constants[key] = self.const(np.array(key, dtype=np.int64), "ints")
        return self._int_constants[key]

    def scalar(self, value: float, like: ir.Value) -> ir.Value:
        """A rank-0 constant with the float type of ``like``."""
        return self.const(np.array(value, dtype=self.dtype(like)), "scalar")

    def shape_of(self, value: ir.Value) -> ir.Value:
        """``Shape(value)``, one node per tensor."""
        key = id(value)
        if key not in self._shapes:
            self._shapes[key] = self.op("Shape", value)
        return self._shapes[key]

    # -- facts about forward tensors ----------------------------------------------------------
    def static_shape(self, value: ir.Value) -> tuple[int, ...]:
        """The probed shape (the batch axis holds the probe's batch size: never bake it in)."""
        return self.facts.shape(value.name)

    def rank(self, value: ir.Value) -> int:
        return len(self.static_shape(value))

    def dtype(self, value: ir.Value) -> np.dtype:
        if value.name in self.facts.dtypes:
            return np.dtype(self.facts.dtypes[value.name])
        if value.dtype is not None:
            return np.dtype(value.dtype.numpy())
        return np.dtype(np.float32)

    def constant_value(self, value: ir.Value | None) -> np.ndarray | None:
        """The value of a constant or small integer tensor, else None."""
        if value is None:
            return None
        if value.const_value is not None:
            return value.const_value.numpy()
        producer = value.producer()
        if producer is not None and producer.op_type == "Constant":
            attr = producer.attributes.get("value")
            if attr is not None:
                return attr.value.numpy()
        return self.facts.values.get(value.name)

    def require_constant(self, value: ir.Value, node: ir.Node, what: str) -> np.ndarray:
        array = self.constant_value(value)
        if array is None:
            raise ExportError(
                f"{node.op_type} node '{node.name}': its {what} is computed at run time; "
                "only constant values are supported on the path to the scores"
            )
        return array

    # -- reductions and broadcasting ---------------------------------------------------------
    def reduce(self, op_type: str, x: ir.Value, axes: Sequence[int], keepdims: bool) -> ir.Value:
        """``ReduceSum``/``ReduceMean``/``ReduceProd`` over ``axes`` whatever the opset."""
        axes = [int(a) for a in axes]
        takes_input = self.opset >= 18 or (op_type == "ReduceSum" and self.opset >= 13)
        if takes_input:
            return self.op(op_type, x, self.ints(axes), keepdims=int(keepdims))
        return self.op(op_type, x, axes=axes, keepdims=int(keepdims))

    def unbroadcast(self, grad: ir.Value, like: ir.Value, grad_shape: tuple[int, ...]) -> ir.Value:
        """Sum ``grad`` (of shape ``grad_shape``) over the axes along which ``like`` was broadcast.

        ∂L/∂x for y = f(broadcast(x)) is Σ over the broadcast axes of ∂L/∂y.
        """
        like_shape = self.static_shape(like)
        lead = len(grad_shape) - len(like_shape)
        axes = list(range(lead))
        axes += [lead + i for i, d in enumerate(like_shape) if d == 1 and grad_shape[lead + i] != 1]
        if not axes:
            return grad
        summed = self.reduce("ReduceSum", grad, axes, keepdims=True)
        if lead:
            summed = self.op("Reshape", summed, self.shape_of(like))
        return summed

    def split_sizes(self, x: ir.Value, axis: int, sizes: Sequence[int]) -> list[ir.Value]:
        """``Split`` along ``axis`` into pieces of ``sizes``."""
        if self.opset >= 13:
            return self.op_multi("Split", x, self.ints(sizes), num_outputs=len(sizes), axis=axis)
        return self.op_multi("Split", x, num_outputs=len(sizes), axis=axis, split=list(sizes))

    def zeros_like(self, value: ir.Value) -> ir.Value:
        dtype = _NUMPY_TO_ONNX.get(self.dtype(value), ir.DataType.FLOAT)
        return self.op("ConstantOfShape", self.shape_of(value), value=ir.tensor(np.zeros(1, dtype.numpy())))

    def check_fixed_size(self, axes: Sequence[int], node: ir.Node, value: ir.Value | None = None,
                         why: str = "bakes the size of an axis into its gradient") -> None:
        """Refuse when ``axes`` of ``value`` (the node's first input) follow the image size of a
        graph exported with a symbolic height and width: the rule ``why``."""
        value = node.inputs[0] if value is None else value
        rank = len(self.facts.shape(value.name))
        if set(self.facts.axes_with_size(value.name)) & {int(a) % rank for a in axes}:
            raise ExportError(f"{node.op_type} node '{node.name}' needs a fixed image size (it {why}); "
                              f"export with {param('input_shape', 'C,H,W')}")

    def size_of(self, value: ir.Value, axes: Sequence[int]) -> ir.Value | float:
        """∏ of the sizes of ``axes`` of ``value``: a number when they are fixed, else a rank-0
        tensor of ``value``'s float type computed from ``Shape(value)`` at run time."""
        shape = self.static_shape(value)
        if not set(self.facts.axes_with_size(value.name)) & set(axes):
            return float(np.prod([shape[a] for a in axes]))
        sizes = self.op("Gather", self.shape_of(value), self.ints(list(axes)), axis=0)
        count = self.reduce("ReduceProd", sizes, [0], keepdims=False)
        return self.op("Cast", count, to=ir.DataType.from_numpy(self.dtype(value)))

    def divide_by(self, x: ir.Value, count: ir.Value | float, like: ir.Value) -> ir.Value:
        """x / count (``count`` from :meth:`size_of`)."""
        if isinstance(count, float):
            return self.op("Mul", x, self.scalar(1.0 / count, like))
        return self.op("Div", x, count)

    def fit_to(self, dx: ir.Value, like: ir.Value, axes: Sequence[int]) -> ir.Value:
        """``dx`` cut or zero-padded at the end of ``axes`` to the run-time size of ``like``
        there (the last rows of a strided convolution's input that no window reached get 0)."""
        ends = self.op("Gather", self.shape_of(like), self.ints(list(axes)), axis=0)
        cut = self.op("Slice", dx, self.ints([0] * len(axes)), ends, self.ints(list(axes)))
        rank = self.rank(like)
        missing = self.op("Sub", self.shape_of(like), self.op("Shape", cut))
        pads = self.op("Concat", self.ints([0] * rank), missing, axis=0)
        return self.op("Pad", cut, pads)

    def check_batch_axis(self, axes: Sequence[int], node: ir.Node, value: ir.Value | None = None) -> None:
        """Refuse to bake the probed batch size: ``axes`` of ``value`` (the node's first input)
        must not be one that grows with a dynamic batch."""
        value = node.inputs[0] if value is None else value
        rank = len(self.facts.shape(value.name))
        if set(self.facts.axes_with_batch(value.name)) & {int(a) % rank for a in axes}:
            raise UnsupportedOperator(node, "works along the batch axis (it mixes the images of a batch), which "
                                            "the reverse pass cannot follow while the batch size may change")
