"""A closed-form CAM method and its post-processing as a small standalone ONNX graph, written
without the ``onnx`` package (the runtime has none), so heatmaps can be computed where the
explanation graph ran — on the GPU — and only they cross to the host.

The graph of method M takes the explanation graph's outputs ``activations``, ``gradients``,
``gradients_pow2``, ``gradients_pow3`` (float32 [N, K, h, w]; only those M's formula reads) and
``size`` (int64 [2]: H, W) and returns

- ``raw`` [N, h, w]: M's formula from ``onnxcam.models.formulas`` (the very function the runtime
  evaluates with numpy), written as ONNX nodes;
- ``heatmap`` [N, H, W]: the runtime's ``postprocess`` — non-finite values made finite, ReLU,
  per-image min-max (ε = 1e-7), bilinear resize with half-pixel centres (ONNX ``Resize``, as cv2
  INTER_LINEAR), ReLU, min-max.

The protobuf is written field by field (ModelProto 7 = graph, 8 = opset; GraphProto 1 = node,
11 = input, 12 = output; NodeProto 1 = input, 2 = output, 4 = op_type, 5 = attribute).
"""
from __future__ import annotations

import functools
import struct

from onnxcam.models.formulas import FORMULAS

OPSET = 18
EPS = 1e-7
_FLOAT32_MAX = 3.4028234663852886e38
INPUTS = ("activations", "gradients", "gradients_pow2", "gradients_pow3")


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # negative ints as two's complement, as protobuf does
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes | str | int) -> bytes:
    """One protobuf field: varint for ints, length-delimited for bytes and strings."""
    if isinstance(payload, int):
        return _varint(num << 3) + _varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint((num << 3) | 2) + _varint(len(data)) + data


def _attribute(name: str, value: float | int | str | list[int]) -> bytes:
    """AttributeProto (1 name, 2 f, 3 i, 4 s, 8 ints, 20 type: FLOAT 1, INT 2, STRING 3, INTS 7)."""
    if isinstance(value, float):
        return _field(1, name) + _varint((2 << 3) | 5) + struct.pack("<f", value) + _field(20, 1)
    if isinstance(value, int):
        return _field(1, name) + _field(3, value) + _field(20, 2)
    if isinstance(value, str):
        return _field(1, name) + _field(4, value) + _field(20, 3)
    return _field(1, name) + b"".join(_field(8, v) for v in value) + _field(20, 7)


def _value_info(name: str, elem_type: int, dims: list[int | str]) -> bytes:
    shape = b"".join(_field(1, _field(1, d) if isinstance(d, int) else _field(2, d)) for d in dims)
    return _field(1, name) + _field(2, _field(1, _field(1, elem_type) + _field(2, shape)))


class Writer:
    """Collects the nodes of one graph; each op returns its output's name."""

    def __init__(self) -> None:
        self.nodes: list[bytes] = []
        self.used: set[str] = set()

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attributes) -> str:
        out = out or f"t{len(self.nodes)}"
        self.used.update(inputs)
        self.nodes.append(b"".join(_field(1, i) for i in inputs) + _field(2, out) + _field(4, op_type)
                          + b"".join(_field(5, _attribute(k, v)) for k, v in attributes.items()))
        return out

    def scalar(self, value: float) -> str:
        return self.op("Constant", value_float=float(value))

    def ints(self, values: list[int]) -> str:
        return self.op("Constant", value_ints=list(values))


class Symbol:
    """A float32 tensor of the graph being written; arithmetic operators add ONNX nodes."""

    def __init__(self, arrays: ProtoArrays, name: str) -> None:
        self.arrays, self.name = arrays, name

    def _op(self, op_type: str, *operands: Symbol | float) -> Symbol:
        return Symbol(self.arrays, self.arrays.w.op(op_type, *(self.arrays.lift(o) for o in operands)))

    def __add__(self, other): return self._op("Add", self, other)          # noqa: E704
    def __radd__(self, other): return self._op("Add", other, self)         # noqa: E704
    def __sub__(self, other): return self._op("Sub", self, other)          # noqa: E704
    def __rsub__(self, other): return self._op("Sub", other, self)         # noqa: E704
    def __mul__(self, other): return self._op("Mul", self, other)          # noqa: E704
    def __rmul__(self, other): return self._op("Mul", other, self)         # noqa: E704
    def __truediv__(self, other): return self._op("Div", self, other)      # noqa: E704
    def __rtruediv__(self, other): return self._op("Div", other, self)     # noqa: E704
    def __neg__(self): return self._op("Neg", self)                        # noqa: E704


class ProtoArrays:
    """The formulas' array vocabulary (``models.formulas``) on [N, K, h, w] tensors, as nodes of
    ``opset`` (ReduceSum takes its axes as an input from opset 13, the other reductions from 18)."""

    def __init__(self, writer: Writer, opset: int = OPSET) -> None:
        self.w, self.opset = writer, opset

    def lift(self, operand: Symbol | float) -> str:
        return operand.name if isinstance(operand, Symbol) else self.w.scalar(operand)

    def _reduce(self, op: str, x: str, axes: list[int], keepdims: int) -> str:
        if op == "ReduceSum" or self.opset >= 18:
            return self.w.op(op, x, self.w.ints(axes), keepdims=keepdims)
        return self.w.op(op, x, axes=list(axes), keepdims=keepdims)

    def relu(self, x: Symbol) -> Symbol:
        return Symbol(self, self.w.op("Relu", x.name))

    def nonzero_or_zero(self, c: Symbol, x: Symbol) -> Symbol:
        nonzero = self.w.op("Not", self.w.op("Equal", c.name, self.lift(0.0)))
        return Symbol(self, self.w.op("Where", nonzero, x.name, self.lift(0.0)))

    def sum_hw(self, x: Symbol) -> Symbol:
        return Symbol(self, self._reduce("ReduceSum", x.name, [2, 3], 1))

    def mean_hw(self, x: Symbol) -> Symbol:
        return Symbol(self, self._reduce("ReduceMean", x.name, [2, 3], 1))

    def sum_k(self, x: Symbol) -> Symbol:
        return Symbol(self, self._reduce("ReduceSum", x.name, [1], 0))

    def weighted(self, w: Symbol, A: Symbol) -> Symbol:
        return self.sum_k(w * A)

    def minmax(self, cam: str) -> str:
        """Per image over the last two axes: x ← x − min x; x ← x / (ε + max x)."""
        shifted = self.w.op("Sub", cam, self._reduce("ReduceMin", cam, [1, 2], 1))
        high = self._reduce("ReduceMax", shifted, [1, 2], 1)
        return self.w.op("Div", shifted, self.w.op("Add", self.lift(EPS), high))

    def finite(self, x: str) -> str:
        """NaN → 0, ±inf → ±float32 max (``runtime.postprocess.finite``)."""
        clipped = self.w.op("Clip", x, self.lift(-_FLOAT32_MAX), self.lift(_FLOAT32_MAX))
        return self.w.op("Where", self.w.op("IsNaN", x), self.lift(0.0), clipped)


def _model(writer: Writer, inputs: bytes, outputs: bytes, opset: int) -> bytes:
    graph = b"".join(_field(1, n) for n in writer.nodes) + _field(2, "onnxcam_heatmap") + inputs + outputs
    return _field(1, 8) + _field(2, "onnxcam") + _field(7, graph) + _field(8, _field(1, "") + _field(2, opset))


@functools.lru_cache(maxsize=None)
def heatmap_graph(method: str, opset: int = OPSET) -> tuple[bytes, tuple[str, ...]]:
    """(the serialized graph of ``method`` in ``opset`` (≥ 13) — see the module docstring —, the
    inputs it reads). The exporter splices the same graph into an explanation graph (``--heatmap``)."""
    if method not in FORMULAS:
        raise ValueError(f"{method!r} has no closed-form formula; in-graph heatmaps exist for {', '.join(FORMULAS)}")
    if opset < 13:
        raise ValueError(f"heatmap graphs need opset 13 or later, not {opset}")
    w = Writer()
    xp = ProtoArrays(w, opset)
    raw = FORMULAS[method](xp, *(Symbol(xp, name) for name in INPUTS)).name
    w.op("Identity", raw, out="raw")
    cam = xp.minmax(w.op("Relu", xp.finite(raw)))
    sizes = w.op("Concat", w.op("Slice", w.op("Shape", cam), w.ints([0]), w.ints([1])), "size", axis=0)
    cam = w.op("Resize", cam, "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel")
    w.op("Identity", xp.minmax(w.op("Relu", cam)), out="heatmap")
    reads = tuple(n for n in INPUTS if n in w.used)
    inputs = b"".join(_field(11, _value_info(n, 1, ["N", "K", "h", "w"])) for n in reads)
    inputs += _field(11, _value_info("size", 7, [2]))
    outputs = _field(12, _value_info("raw", 1, ["N", "h", "w"])) + _field(12, _value_info("heatmap", 1, ["N", "H", "W"]))
    return _model(w, inputs, outputs, opset), reads
