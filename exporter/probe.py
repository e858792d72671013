"""Concrete facts about every tensor of a classifier graph, read off one onnxruntime run.

Reverse-mode rules need static facts the ONNX graph does not always carry (exporters leave
shape inference incomplete, shape sub-graphs hide Reshape targets): the rank and size of each
tensor, its element type, and the value of small integer tensors (shapes, slice bounds, gather
indices). The probe runs the model once on random data with every intermediate tensor exposed
as an output and records them.

When the batch axis is dynamic the probe runs with a batch of 2, so that an axis that
broadcasts (size 1) cannot be mistaken for the batch axis; rules never bake the probed batch
size into the graph they write.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from onnxcam.exporter.errors import ExportError

#: integer tensors up to this many elements have their values recorded
_SMALL_INT_TENSOR = 64

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


@dataclass
class TensorFacts:
    """Shapes, dtypes and small integer values of the tensors of one graph (by tensor name)."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, np.dtype] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    batch_dynamic: bool = True
    probe_batch: int = 2

    def shape(self, name: str) -> tuple[int, ...]:
        try:
            return self.shapes[name]
        except KeyError:
            raise ExportError(f"internal: no probed shape for tensor '{name}'") from None

    def is_float(self, name: str) -> bool:
        dtype = self.dtypes.get(name)
        return dtype is not None and np.issubdtype(dtype, np.floating)


def _input_shape(value_info: onnx.ValueInfoProto, batch: int) -> tuple[list[int], bool]:
    """Concrete input shape for the probe and whether the batch axis is dynamic."""
    dims = value_info.type.tensor_type.shape.dim
    if not dims:
        raise ExportError(f"input '{value_info.name}' has no declared shape; pass --input-shape C,H,W")
    shape, dynamic = [], False
    for axis, dim in enumerate(dims):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(dim.dim_value)
        elif axis == 0:
            shape.append(batch)
            dynamic = True
        else:
            raise ExportError(
                f"input '{value_info.name}' has a symbolic axis {axis} ('{dim.dim_param}'); "
                "pass --input-shape C,H,W to fix it"
            )
    return shape, dynamic


def data_independent(model: onnx.ModelProto) -> set[str]:
    """Tensors whose values depend on no input data: constants, weights, and what is computed
    from them and from tensor shapes (``Shape``/``Size``). Only their probed values may be
    treated as constants; an index computed from the data (an ArgMax, say) changes per input."""
    static = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("Shape", "Size", "Constant") or all(i in static for i in node.input if i):
            static.update(o for o in node.output if o)
    return static


def probe(model: onnx.ModelProto, seed: int = 0) -> TensorFacts:
    """Run ``model`` once with every intermediate tensor as an output and record the facts.

    Tries a batch of 2 when the batch axis is dynamic and falls back to 1 when the graph bakes
    a batch of 1 into its shape arithmetic (the explanation graph then has a fixed batch of 1).
    """
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    probe_model = onnx.ModelProto()
    probe_model.CopyFrom(model)
    del probe_model.graph.output[:]
    names: list[str] = []
    seen: set[str] = set()
    for node in model.graph.node:
        for name in node.output:
            if name and name not in seen:
                seen.add(name)
                names.append(name)
    probe_model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            probe_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises several unrelated classes
        raise ExportError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from exc

    rng = np.random.default_rng(seed)
    last_error: Exception | None = None
    for batch in (2, 1):
        feeds, dynamic = {}, False
        for value_info in graph_inputs:
            shape, dynamic_here = _input_shape(value_info, batch)
            dynamic = dynamic or dynamic_here
            feeds[value_info.name] = rng.standard_normal(shape).astype(np.float32)
        if batch == 2 and not dynamic:
            continue
        try:
            results = session.run(None, feeds)
        except Exception as exc:
            last_error = exc
            continue
        facts = TensorFacts(batch_dynamic=dynamic and batch == 2, probe_batch=batch)
        static = data_independent(model)
        for name, array in list(zip(names, results)) + list(feeds.items()):
            array = np.asarray(array)
            facts.shapes[name] = tuple(int(d) for d in array.shape)
            facts.dtypes[name] = array.dtype
            if name in static and np.issubdtype(array.dtype, np.integer) and array.size <= _SMALL_INT_TENSOR:
                facts.values[name] = array.copy()
        for init in model.graph.initializer:
            array = onnx.numpy_helper.to_array(init)
            facts.shapes[init.name] = tuple(array.shape)
            facts.dtypes[init.name] = array.dtype
            if np.issubdtype(array.dtype, np.integer) and array.size <= _SMALL_INT_TENSOR:
                facts.values[init.name] = array
        return facts
    raise ExportError(f"onnxruntime cannot run the model: {str(last_error).splitlines()[0]}")
