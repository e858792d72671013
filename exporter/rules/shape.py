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
    """y = cast(x):  dx = cast(dy) back to x's float type (an integer x, the output of a
    quantized operator, keeps dy's float type: see ``rules.quantization``)."""
    x = node.inputs[0]
    if b.dtype(x) == b.dtype(node.outputs[0]) or not np.issubdtype(b.dtype(x), np.floating):
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
    b.check_batch_axis([axis], node, node.outputs[0])
    if axis in b.facts.axes_with_size(node.outputs[0].name):  # the pieces' sizes read at run time
        sizes = b.op("Concat", *(b.op("Gather", b.shape_of(x), b.ints([axis]), axis=0) for x in node.inputs), axis=0)
        return b.op_multi("Split", dys[0], sizes, num_outputs=len(node.inputs), axis=axis)
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


def _inverse_take(b: GraphBuilder, dy: ir.Value, kept: range, size: int, axis: int) -> ir.Value:
    """The adjoint of taking the positions ``kept`` along ``axis`` of a tensor of ``size`` there:
    a zero slice appended to dy, then for every position j the slice dy[i] with kept[i] = j, or
    the zero one."""
    zero_shape = b.op("Concat", b.op("Slice", b.shape_of(dy), b.ints([0]), b.ints([axis])), b.ints([1]),
                      b.op("Slice", b.shape_of(dy), b.ints([axis + 1]), b.ints([_END])), axis=0)
    zeros = b.op("ConstantOfShape", zero_shape, value=ir.tensor(np.zeros(1, b.dtype(dy))))
    padded = b.op("Concat", dy, zeros, axis=axis)
    source = np.full(size, len(kept), np.int64)
    source[list(kept)] = np.arange(len(kept))
    return b.op("Gather", padded, b.ints(source.tolist()), axis=axis)


@rule("Slice", piecewise_linear=True)
def slice_(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = x[a:e:s] along some axes:  dx = dy padded with zeros back to x's shape when every step
    is 1; otherwise each sliced axis scatters dy back to the positions it took (any step,
    negative ones and empty slices too)."""
    x = node.inputs[0]
    x_shape = b.static_shape(x)
    ranges = _slice_ranges(b, node)
    sliced = [a for a, kept in ranges.items() if kept != range(x_shape[a])]
    b.check_batch_axis(sliced, node)
    b.check_fixed_size(sliced, node, why="slices an axis whose size follows the image")
    rest = [None] * (len(node.inputs) - 1)
    if all(kept.step == 1 and len(kept) > 0 for kept in ranges.values()):
        begins, ends = [0] * len(x_shape), [0] * len(x_shape)
        for axis, kept in ranges.items():
            begins[axis], ends[axis] = kept.start, x_shape[axis] - kept.stop
        return [b.op("Pad", dys[0], b.ints(begins + ends))] + rest
    dx = dys[0]
    for axis, kept in ranges.items():
        if kept != range(x_shape[axis]):
            dx = _inverse_take(b, dx, kept, x_shape[axis], axis)
    return [dx] + rest


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


@rule("Tile", piecewise_linear=True)
def tile(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = x repeated r_i times along each axis i:  dx = Σ over the repeats of dy, i.e. dy viewed
    as [r_0, x_0, r_1, x_1, …] summed over the r axes."""
    x = node.inputs[0]
    repeats = b.require_constant(node.inputs[1], node, "repeats").astype(np.int64).tolist()
    x_shape = b.static_shape(x)
    if repeats[0] != 1:
        b.check_batch_axis([0], node)
    b.check_fixed_size(range(1, len(x_shape)), node, why="reshapes to sizes read off the probe")
    interleaved = [d for r, n in zip(repeats, x_shape) for d in (r, n)]
    interleaved[1] = -1 if repeats[0] == 1 else interleaved[1]  # the batch: never baked in
    summed = b.reduce("ReduceSum", b.op("Reshape", dys[0], b.ints(interleaved)),
                      list(range(0, 2 * len(x_shape), 2)), keepdims=False)
    return [summed, None]


@rule("GatherElements", piecewise_linear=True)
def gather_elements(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y[…, i, …] = x[…, idx[…, i, …], …] along axis:  dx = ScatterElements(zeros, idx, dy, add)
    (repeated indices add up; negative ones wrapped)."""
    x, indices = node.inputs
    axis = node.attributes.get_int("axis", 0) % b.rank(x)
    idx = b.op("Cast", indices, to=ir.DataType.INT64)
    size = b.op("Gather", b.shape_of(x), b.ints([axis]), axis=0)
    idx = b.op("Where", b.op("Less", idx, b.ints([0])), b.op("Add", idx, size), idx)
    return [b.op("ScatterElements", b.zeros_like(x), idx, dys[0], axis=axis, reduction="add"), None]


def _block_permutation(op: str, mode: str) -> tuple[list[int], str]:
    """The Transpose of DepthToSpace (DCR / CRD) or SpaceToDepth on the 6-D view of its input,
    and which view (``"depth"``: [N, b, b, C', H, W] / [N, C', b, b, H, W]; ``"space"``:
    [N, C, H, b, W, b])."""
    if op == "SpaceToDepth":
        return [0, 3, 5, 1, 2, 4], "space"
    return ([0, 3, 4, 1, 5, 2] if mode == "DCR" else [0, 1, 4, 2, 5, 3]), "depth"


@rule("DepthToSpace", "SpaceToDepth", piecewise_linear=True)
def depth_space(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """A fixed permutation of the elements (reshape → transpose → reshape):  dx = dy through the
    inverse permutation (reshape to the transposed view → inverse transpose → x's shape)."""
    x = node.inputs[0]
    n, c, h, w = b.static_shape(x)
    b.check_fixed_size([2, 3], node, why="reshapes to sizes read off the probe")
    bs = node.attributes.get_int("blocksize")
    perm, view = _block_permutation(node.op_type, node.attributes.get_string("mode", "DCR"))
    if view == "space":
        x_view = [-1, c, h // bs, bs, w // bs, bs]
    elif node.attributes.get_string("mode", "DCR") == "DCR":
        x_view = [-1, bs, bs, c // bs**2, h, w]
    else:
        x_view = [-1, c // bs**2, bs, bs, h, w]
    transposed = [x_view[i] for i in perm]
    back = b.op("Transpose", b.op("Reshape", dys[0], b.ints(transposed)), perm=[int(i) for i in np.argsort(perm)])
    return [b.op("Reshape", back, b.shape_of(x))]
