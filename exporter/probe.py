"""Concrete facts about every tensor of a classifier graph, read off one onnxruntime run.

Reverse-mode rules need static facts the ONNX graph does not always carry (exporters leave
shape inference incomplete, shape sub-graphs hide Reshape targets): the rank and size of each
tensor, its element type, and the value of small integer tensors (shapes, slice bounds, gather
indices). The probe runs the model once on random data with every intermediate tensor exposed
as an output and records them.

When the batch axis is dynamic the probe runs with a batch of 2, so that an axis that
broadcasts (size 1) cannot be mistaken for the batch axis, and once more with a batch of 1 to
learn which axes of each tensor grow with the batch (attention's ``[3, N, heads, T, d]`` has it
second); rules never bake the probed batch size into the graph they write.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnxcam.exporter.errors import ExportError
from onnxcam.models.errors import param

#: integer tensors up to this many elements have their values recorded
_SMALL_INT_TENSOR = 64


@dataclass
class TensorFacts:
    """Shapes, dtypes and small integer values of the tensors of one graph (by tensor name)."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, np.dtype] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    batch_dynamic: bool = True
    probe_batch: int = 2
    batch_axes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def shape(self, name: str) -> tuple[int, ...]:
        try:
            return self.shapes[name]
        except KeyError:
            raise ExportError(f"internal: no probed shape for tensor '{name}'") from None

    def is_float(self, name: str) -> bool:
        dtype = self.dtypes.get(name)
        return dtype is not None and np.issubdtype(dtype, np.floating)

    def axes_with_batch(self, name: str) -> tuple[int, ...]:
        """The axes of tensor ``name`` whose size grows with the batch (none when it is fixed)."""
        if not self.batch_dynamic:
            return ()
        if name in self.batch_axes:
            return self.batch_axes[name]
        shape = self.shapes.get(name, ())
        return (0,) if shape[:1] == (self.probe_batch,) else ()

    def rename(self, old: str, new: str) -> None:
        """Follow a tensor that was renamed after probing."""
        for table in (self.shapes, self.dtypes, self.values, self.batch_axes):
            if old in table:
                table[new] = table.pop(old)


def _input_shape(value: ir.Value, batch: int) -> tuple[list[int], bool]:
    """Concrete input shape for the probe and whether the batch axis is dynamic."""
    if value.shape is None or len(value.shape) == 0:
        raise ExportError(f"input '{value.name}' has no declared shape; pass {param('input_shape', 'C,H,W')}")
    shape, dynamic = [], False
    for axis, dim in enumerate(value.shape):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        elif axis == 0:
            shape.append(batch)
            dynamic = True
        else:
            raise ExportError(
                f"input '{value.name}' has a symbolic axis {axis} ('{dim}'); "
                f"pass {param('input_shape', 'C,H,W')} to fix it"
            )
    return shape, dynamic


def data_independent(graph: ir.Graph) -> set[str]:
    """Tensors whose values depend on no input data: constants, weights, and what is computed
    from them and from tensor shapes (``Shape``/``Size``). Only their probed values may be
    treated as constants; an index computed from the data (an ArgMax, say) changes per input."""
    static = set(graph.initializers)
    for node in graph:
        if node.op_type in ("Shape", "Size", "Constant") or all(i.name in static for i in node.inputs if i):
            static.update(o.name for o in node.outputs if o.name)
    return static


def _probe_session(model: ir.Model, names: list[str]) -> ort.InferenceSession:
    """A session on ``model`` with every tensor in ``names`` as an output (the model is left as it was)."""
    proto = ir.to_proto(model)
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated classes
        raise ExportError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None


def _record_batch_axes(session: ort.InferenceSession, names: list[str], feeds: dict[str, np.ndarray],
                       facts: TensorFacts) -> None:
    """Run once more with the first image of ``feeds`` and record, per tensor, the axes whose
    size changed (left empty when that run fails: ``axes_with_batch`` then assumes axis 0)."""
    try:
        results = session.run(None, {k: v[:1] for k, v in feeds.items()})
    except Exception:  # noqa: BLE001  (a graph that only runs at the probed batch)
        return
    for name, array in zip(names, results):
        full = facts.shapes[name]
        if len(full) == np.ndim(array):
            facts.batch_axes[name] = tuple(a for a, (d2, d1) in enumerate(zip(full, np.shape(array))) if d2 != d1)
    for name, array in feeds.items():
        facts.batch_axes[name] = (0,)


def probe(model: ir.Model, seed: int = 0) -> TensorFacts:
    """Run ``model`` once with every intermediate tensor as an output and record the facts.

    Tries a batch of 2 when the batch axis is dynamic and falls back to 1 when the graph bakes
    a batch of 1 into its shape arithmetic (the explanation graph then has a fixed batch of 1).
    """
    graph = model.graph
    graph_inputs = [v for v in graph.inputs if v.name not in graph.initializers]
    names = list(dict.fromkeys(o.name for node in graph for o in node.outputs if o.name))
    session = _probe_session(model, names)
    rng = np.random.default_rng(seed)
    last_error: Exception | None = None
    for batch in (2, 1):
        feeds, dynamic = {}, False
        for value in graph_inputs:
            shape, dynamic_here = _input_shape(value, batch)
            dynamic = dynamic or dynamic_here
            dtype = value.dtype.numpy() if value.dtype is not None else np.float32
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        if batch == 2 and not dynamic:
            continue
        try:
            results = session.run(None, feeds)
        except Exception as exc:
            last_error = exc
            continue
        facts = TensorFacts(batch_dynamic=dynamic and batch == 2, probe_batch=batch)
        static = data_independent(graph)
        for name, array in list(zip(names, results)) + list(feeds.items()):
            array = np.asarray(array)
            facts.shapes[name] = tuple(int(d) for d in array.shape)
            facts.dtypes[name] = array.dtype
            if name in static and np.issubdtype(array.dtype, np.integer) and array.size <= _SMALL_INT_TENSOR:
                facts.values[name] = array.copy()
        if facts.batch_dynamic:
            _record_batch_axes(session, names, feeds, facts)
        for name, init in graph.initializers.items():
            tensor = init.const_value
            facts.shapes[name] = tuple(int(d) for d in tensor.shape)
            facts.dtypes[name] = np.dtype(tensor.dtype.numpy())
            if np.issubdtype(facts.dtypes[name], np.integer) and tensor.size <= _SMALL_INT_TENSOR:
                facts.values[name] = tensor.numpy()
        return facts
    raise ExportError(f"onnxruntime cannot run the model: {str(last_error).splitlines()[0]}")
