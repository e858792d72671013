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

When the height and width are symbolic too, the probe runs at 224×224 and once more at
288×192 to learn which axes of each tensor follow the image size; integer values that differ
between the runs (shapes computed from the image) are not recorded as constants. Rules that
would bake a size along such an axis refuse with the node's name (``check_fixed_size``); a
graph that only runs at one size keeps the probed size.
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
#: the sizes given to symbolic image axes (height, width) in the first and in the second run
PROBE_SIZES = ((224, 224), (288, 192))


@dataclass
class TensorFacts:
    """Shapes, dtypes and small integer values of the tensors of one graph (by tensor name)."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, np.dtype] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    batch_dynamic: bool = True
    probe_batch: int = 2
    batch_axes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    size_dynamic: bool = False
    size_axes: dict[str, tuple[int, ...]] = field(default_factory=dict)

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

    def axes_with_size(self, name: str) -> tuple[int, ...]:
        """The axes of tensor ``name`` whose size follows a symbolic image height or width."""
        return self.size_axes.get(name, ()) if self.size_dynamic else ()

    def rename(self, old: str, new: str) -> None:
        """Follow a tensor that was renamed after probing."""
        for table in (self.shapes, self.dtypes, self.values, self.batch_axes, self.size_axes):
            if old in table:
                table[new] = table.pop(old)


def _input_shape(value: ir.Value, batch: int, size: tuple[int, int]) -> tuple[list[int], bool, bool]:
    """Concrete input shape for the probe (symbolic height and width get ``size``) and whether
    its batch axis and its other axes are symbolic."""
    if value.shape is None or len(value.shape) == 0:
        raise ExportError(f"input '{value.name}' has no declared shape; pass {param('input_shape', 'C,H,W')}")
    shape, batch_dynamic, symbolic = [], False, []
    for axis, dim in enumerate(value.shape):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        elif axis == 0:
            shape.append(batch)
            batch_dynamic = True
        else:
            symbolic.append(axis)
            shape.append(0)
    if len(symbolic) > 2 or (symbolic and len(shape) != 4):
        raise ExportError(f"input '{value.name}' has symbolic axes {symbolic} ({list(value.shape)}); "
                          f"pass {param('input_shape', 'C,H,W')} to fix them")
    for axis, extent in zip(symbolic, size[-len(symbolic):] if symbolic else ()):
        shape[axis] = extent
    return shape, batch_dynamic, bool(symbolic)


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


def _changed_axes(session: ort.InferenceSession, names: list[str], feeds: dict[str, np.ndarray],
                  facts: TensorFacts) -> dict[str, tuple[int, ...]] | None:
    """Run once more on ``feeds`` and return, per tensor, the axes whose size differs from the
    first run; integer values that differ are forgotten (they are not constants). None when the
    graph does not run on these feeds."""
    try:
        results = session.run(None, feeds)
    except Exception:  # noqa: BLE001  (a graph that only runs at the probed batch or size)
        return None
    changed = {}
    for name, array in list(zip(names, results)) + list(feeds.items()):
        first = facts.shapes[name]
        if len(first) == np.ndim(array):
            changed[name] = tuple(a for a, (d1, d2) in enumerate(zip(first, np.shape(array))) if d1 != d2)
        if name in facts.values and not np.array_equal(facts.values[name], array):
            del facts.values[name]
    return changed


def _random_feeds(inputs: list[ir.Value], batch: int, size: tuple[int, int],
                  rng: np.random.Generator) -> tuple[dict[str, np.ndarray], bool, bool]:
    """Random feeds for ``inputs`` and whether any has a symbolic batch / a symbolic image size."""
    feeds, batch_dynamic, sized = {}, False, False
    for value in inputs:
        shape, batch_here, sized_here = _input_shape(value, batch, size)
        batch_dynamic, sized = batch_dynamic or batch_here, sized or sized_here
        dtype = value.dtype.numpy() if value.dtype is not None else np.float32
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds, batch_dynamic, sized


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
        feeds, dynamic, sized = _random_feeds(graph_inputs, batch, PROBE_SIZES[0], rng)
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
        if facts.batch_dynamic:  # left empty when the graph only runs at batch 2: axis 0 is assumed
            facts.batch_axes = _changed_axes(session, names, {k: v[:1] for k, v in feeds.items()}, facts) or {}
        if sized:
            resized = _random_feeds(graph_inputs, batch, PROBE_SIZES[1], rng)[0]
            facts.size_axes = _changed_axes(session, names, resized, facts) or {}
            facts.size_dynamic = any(facts.size_axes.values())
        for name, init in graph.initializers.items():
            tensor = init.const_value
            facts.shapes[name] = tuple(int(d) for d in tensor.shape)
            facts.dtypes[name] = np.dtype(tensor.dtype.numpy())
            if np.issubdtype(facts.dtypes[name], np.integer) and tensor.size <= _SMALL_INT_TENSOR:
                facts.values[name] = tensor.numpy()
        return facts
    reason = str(last_error).splitlines()[0]
    if sized:
        h, w = PROBE_SIZES[0]
        names = ", ".join(f"'{v.name}'" for v in graph_inputs)
        raise ExportError(f"input {names} has a symbolic height and width, and the model does not run at "
                          f"{h}×{w} ({reason}); pass {param('input_shape', 'C,H,W')} with its size")
    raise ExportError(f"onnxruntime cannot run the model: {reason}")
