"""Operators that move data without arithmetic: reshapes, permutations, slicing and joining."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.rules import rule

Grads = Sequence["ir.Value | None"]
_END = int(np.iinfo(np.int64).max)


@rule("Identity", "Dropout", piecewise_linear=True)
def identity(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = x (Dropout at inference):  dx = dy."""
    return [dys[0]] + [None] * (len(node.inputs) - 1)


@rule("Cast", piecewise_linear=True)
def cast(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = cast(x):  dx = cast(dy) back to x's float type."""
    x = node.inputs[0]
    if b.dtype(x) == b.dtype(node.outputs[0]):
        return [dys[0]]
    return [b.op("Cast", dys[0], to=ir.DataType.from_numpy(b.dtype(x)))]


@rule("Flatten", "Reshape", "Squeeze", "Unsqueeze", piecewise_linear=True)
def reshape(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = x with another shape:  dx = reshape(dy, shape(x))."""
    x = node.inputs[0]
    return [b.op("Reshape", dys[0], b.shape_of(x))] + [None] * (len(node.inputs) - 1)


@rule("Transpose", piecewise_linear=True)
def transpose(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = transpose(x, p):  dx = transpose(dy, p⁻¹)."""
    rank = b.rank(node.inputs[0])
    perm = list(node.attributes.get_ints("perm", list(reversed(range(rank)))))
    return [b.op("Transpose", dys[0], perm=[int(i) for i in np.argsort(perm)])]


@rule("Concat", piecewise_linear=True)
def concat(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = concat(x_1 … x_n, axis):  dx_i = the i-th piece of split(dy, sizes, axis)."""
    rank = b.rank(node.outputs[0])
    axis = node.attributes.get_int("axis") % rank
    b.check_batch_axis([axis], node)
    sizes = [b.static_shape(x)[axis] for x in node.inputs]
    return b.split_sizes(dys[0], axis, sizes)


@rule("Split", piecewise_linear=True)
def split(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """(y_1 … y_n) = split(x, axis):  dx = concat(dy_1 … dy_n, axis), zeros for unused pieces."""
    axis = node.attributes.get_int("axis", 0) % b.rank(node.inputs[0])
    pieces = [dy if dy is not None else b.zeros_like(y) for dy, y in zip(dys, node.outputs)]
    return [b.op("Concat", *pieces, axis=axis)] + [None] * (len(node.inputs) - 1)


def _slice_ranges(b: GraphBuilder, node: ir.Node) -> dict[int, range]:
    x_shape = b.static_shape(node.inputs[0])
    rank = len(x_shape)
    const = [b.require_constant(v, node, what).astype(np.int64).tolist() if v is not None and v.name else None
             for v, what in zip(list(node.inputs[1:5]) + [None] * (5 - len(node.inputs)),
                                ("starts", "ends", "axes", "steps"))]
    starts, ends, axes, steps = const
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    ranges = {}
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= rank
        ranges[axis] = range(*slice(start, end, step).indices(x_shape[axis]))
    return ranges


@rule("Slice", piecewise_linear=True)
def slice_(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = x[a:e] along some axes (unit steps):  dx = pad(dy) with zeros back to x's shape."""
    x = node.inputs[0]
    x_shape = b.static_shape(x)
    ranges = _slice_ranges(b, node)
    b.check_batch_axis([a for a, kept in ranges.items() if kept != range(x_shape[a])], node)
    begins, ends = [0] * len(x_shape), [0] * len(x_shape)
    for axis, kept in ranges.items():
        if kept.step != 1 or len(kept) == 0:
            raise ExportError(f"Slice node '{node.name}': only non-empty unit-step slices are supported")
        begins[axis], ends[axis] = kept.start, x_shape[axis] - kept.stop
    return [b.op("Pad", dys[0], b.ints(begins + ends))] + [None] * (len(node.inputs) - 1)


@rule("Pad", piecewise_linear=True)
def pad(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = constant-pad(x, p):  dx = dy with the padding sliced off (negative pads, a crop, padded back)."""
    x = node.inputs[0]
    mode = node.attributes.get_string("mode", "constant")
    if mode != "constant":
        raise ExportError(f"Pad node '{node.name}': mode '{mode}' is not supported (only 'constant')")
    rank = b.rank(x)
    pads = b.require_constant(node.inputs[1], node, "pads").astype(np.int64).tolist()
    axes = list(range(rank))
    if len(node.inputs) > 3 and node.inputs[3] is not None and node.inputs[3].name:
        axes = [a % rank for a in b.require_constant(node.inputs[3], node, "axes").tolist()]
    full = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
    b.check_batch_axis([a for a in range(rank) if full[a] or full[rank + a]], node)
    starts = [max(p, 0) for p in full[:rank]]
    stops = [-full[rank + a] if full[rank + a] > 0 else _END for a in range(rank)]  # never a probed size
    dx = b.op("Slice", dys[0], b.ints(starts), b.ints(stops), b.ints(list(range(rank))))
    crop = [max(-p, 0) for p in full]
    if any(crop):
        dx = b.op("Pad", dx, b.ints(crop))
    return [dx] + [None] * (len(node.inputs) - 1)


@rule("Gather", piecewise_linear=True)
def gather(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = take(x, idx, axis):  dx = scatter-add of dy into zeros at idx along axis (repeated
    indices add up). The indices are read at run time, so shape-derived (batch-dependent) and
    data-dependent indices are both exact."""
    x, indices = node.inputs
    rank = b.rank(x)
    axis = node.attributes.get_int("axis", 0) % rank
    x_shape = b.shape_of(x)
    idx = b.op("Cast", indices, to=ir.DataType.INT64)
    size = b.op("Gather", x_shape, b.ints([axis]), axis=0)
    idx = b.op("Where", b.op("Less", idx, b.ints([0])), b.op("Add", idx, size), idx)
    # dy with the index axes folded into one: x's shape with axis replaced by len(idx)
    folded_shape = b.op("Concat", b.op("Slice", x_shape, b.ints([0]), b.ints([axis])), b.ints([-1]),
                        b.op("Slice", x_shape, b.ints([axis + 1]), b.ints([_END])), axis=0)
    dy = b.op("Reshape", dys[0], folded_shape)
    idx = b.op("Reshape", idx, b.ints([1] * axis + [-1] + [1] * (rank - axis - 1)))
    idx = b.op("Expand", idx, b.op("Shape", dy))
    return [b.op("ScatterElements", b.zeros_like(x), idx, dy, axis=axis, reduction="add"), None]


@rule("GatherND", piecewise_linear=True)
def gather_nd(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = x[idx] (index tuples of length k along the leading axes):  dx = scatter-add of dy into
    zeros at idx (repeated indices add up; indices read at run time).

    Written as ScatterElements(add) along axis 0 of x folded to [∏ x.shape[:k], ∏ x.shape[k:]],
    at the linear indices Σ_j idx[..., j]·∏ x.shape[j+1:k]. Not ScatterND(add): onnxruntime's CPU
    kernel applies repeated indices from several threads at once and loses updates (results
    differ from run to run); ScatterElements(add) accumulates them in order."""
    if node.attributes.get_int("batch_dims", 0):
        raise ExportError(f"GatherND node '{node.name}': batch_dims > 0 is not supported")
    x, indices = node.inputs
    rank, k = b.rank(x), b.static_shape(indices)[-1]
    x_shape = b.shape_of(x)
    lead = b.op("Slice", x_shape, b.ints([0]), b.ints([k]))
    idx = b.op("Cast", indices, to=ir.DataType.INT64)
    idx = b.op("Where", b.op("Less", idx, b.ints([0])), b.op("Add", idx, lead), idx)
    strides = [b.reduce("ReduceProd", b.op("Slice", x_shape, b.ints([j + 1]), b.ints([k])), [0], keepdims=True)
               for j in range(k - 1)] + [b.ints([1])]
    strides = b.op("Concat", *strides, axis=0) if k > 1 else strides[0]
    linear = b.reduce("ReduceSum", b.op("Mul", idx, strides), [b.rank(indices) - 1], keepdims=True)
    tail = (b.reduce("ReduceProd", b.op("Slice", x_shape, b.ints([k]), b.ints([rank])), [0], keepdims=True)
            if k < rank else b.ints([1]))
    folded = b.op("Concat", b.ints([-1]), tail, axis=0)
    dy = b.op("Reshape", dys[0], folded)
    linear = b.op("Expand", b.op("Reshape", linear, b.ints([-1, 1])), b.op("Shape", dy))
    dx = b.op("ScatterElements", b.op("Reshape", b.zeros_like(x), folded), linear, dy, axis=0, reduction="add")
    return [b.op("Reshape", dx, x_shape), None]
