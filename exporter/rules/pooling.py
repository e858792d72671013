"""Pooling and reductions."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.rules import rule
from onnxcam.exporter.rules.linear import conv_geometry, transpose_to_input

if TYPE_CHECKING:  # pragma: no cover
    from onnxcam.exporter.autodiff import Path

Grads = Sequence["ir.Value | None"]


class MaxPoolIndicesPass(ir.passes.InPlacePass):
    """Give every MaxPool on a differentiated path its ``Indices`` output (flat, row-major),
    which the MaxPool rule scatters the gradient to: preparation, so that every rule only adds
    nodes. ``paths`` are the differentiated paths (``autodiff.find_path``)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__()
        self.nodes = {n for path in paths for n in path.nodes if n.op_type == "MaxPool"}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for node in self.nodes:
            if len(node.outputs) < 2:
                node.resize_outputs(2)
                node.outputs[1].name = f"{node.outputs[0].name}/indices"
                node.outputs[1].dtype = ir.DataType.INT64
                node.attributes.pop("storage_order", None)  # row-major indices, as the rule expects
            elif node.attributes.get_int("storage_order", 0):
                raise ExportError(f"MaxPool node '{node.name}': column-major Indices (storage_order=1) "
                                  "are not supported")
        return ir.passes.PassResult(model, modified=bool(self.nodes))


@rule("MaxPool", piecewise_linear=True)
def max_pool(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y_o = x_{i(o)} with i(o) the arg-max of window o:  dx_i = Σ_{o: i(o) = i} dy_o, i.e.
    ``ScatterElements(zeros, Indices, dy, reduction="add")`` at the node's flat ``Indices``
    (given to it by :class:`MaxPoolIndicesPass`)."""
    x = node.inputs[0]
    if len(node.outputs) < 2 or node.outputs[1] is None:
        raise ExportError(f"internal: MaxPool node '{node.name}' has no Indices output (MaxPoolIndicesPass)")
    indices = node.outputs[1]
    flat = b.ints([-1])
    zeros = b.op("ConstantOfShape", b.op("Reshape", b.op("Size", x), flat), value=ir.tensor(np.zeros(1, b.dtype(x))))
    scattered = b.op(
        "ScatterElements", zeros, b.op("Reshape", indices, flat), b.op("Reshape", dys[0], flat),
        axis=0, reduction="add",
    )
    return [b.op("Reshape", scattered, b.shape_of(x))]


def window_counts(size: int, kernel: int, stride: int, dilation: int, pad_begin: int, pad_end: int,
                  out_size: int, include_pad: bool) -> np.ndarray:
    """How many elements each of the ``out_size`` windows of one axis averages over."""
    low, high = (-pad_begin, size + pad_end) if include_pad else (0, size)
    counts = []
    for o in range(out_size):
        taps = o * stride - pad_begin + dilation * np.arange(kernel)
        counts.append(int(np.count_nonzero((taps >= low) & (taps < high))))
    return np.array(counts, dtype=np.float64)


@rule("AveragePool", piecewise_linear=True)
def average_pool(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y_o = (1/n_o) Σ_{i ∈ window o} x_i:  dx = ConvTranspose(dy / n, ones) per channel, where
    n_o counts the window's elements (padding included or not, as ``count_include_pad`` says)."""
    x, y = node.inputs[0], node.outputs[0]
    x_shape, y_shape = b.static_shape(x), b.static_shape(y)
    kernel = list(node.attributes.get_ints("kernel_shape"))
    strides, dilations, pads = conv_geometry(b, node, x_shape, y_shape, kernel)
    channels, dtype = x_shape[1], b.dtype(x)
    counts = _window_counts(b, node, x, strides, dilations, pads, kernel)
    scaled = b.op("Div", dys[0], counts)
    ones = b.const(np.ones([channels, 1] + kernel, dtype=dtype), "window")
    return [transpose_to_input(b, node, scaled, ones, x, strides, dilations, pads, channels, kernel, x_shape, y_shape)]


def _window_counts(b: GraphBuilder, node: ir.Node, x: ir.Value, strides, dilations, pads, kernel) -> ir.Value:
    """n_o as a constant, or computed at run time when the image size is symbolic and
    the windows at the border count fewer elements (a Conv of ones of x's size)."""
    x_shape, y_shape = b.static_shape(x), b.static_shape(node.outputs[0])
    spatial = len(kernel)
    include_pad = bool(node.attributes.get_int("count_include_pad", 0))
    if set(b.facts.axes_with_size(x.name)) & set(range(2, 2 + spatial)):
        if node.attributes.get_int("ceil_mode", 0):
            b.check_fixed_size(range(2, 2 + spatial), node, why="has ceil-mode windows, whose counts depend on the size")
        if include_pad or not any(pads):
            return b.scalar(float(np.prod(kernel)), x)
        one_map = b.op("Concat", b.ints([1, 1]), b.op("Slice", b.shape_of(x), b.ints([2]), b.ints([2 + spatial])),
                       axis=0)
        ones = b.op("ConstantOfShape", one_map, value=ir.tensor(np.ones(1, b.dtype(x))))
        return b.op("Conv", ones, b.const(np.ones([1, 1] + kernel, b.dtype(x)), "window"), strides=strides,
                    dilations=dilations, pads=pads, kernel_shape=kernel)
    counts = np.ones(())
    for i in range(spatial):
        axis_counts = window_counts(x_shape[2 + i], kernel[i], strides[i], dilations[i], pads[i],
                                    pads[spatial + i], y_shape[2 + i], include_pad)
        counts = np.multiply.outer(counts, axis_counts)
    return b.const(counts[None, None].astype(b.dtype(x)), "window_count")


@rule("GlobalAveragePool", piecewise_linear=True)
def global_average_pool(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = mean over space of x:  dx = expand(dy) / (h·w)."""
    x = node.inputs[0]
    area = b.size_of(x, range(2, b.rank(x)))
    return [b.op("Expand", b.divide_by(dys[0], area, x), b.shape_of(x))]


def _reduction_axes(b: GraphBuilder, node: ir.Node) -> list[int] | None:
    x = node.inputs[0]
    rank = b.rank(x)
    if len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].name:
        axes = b.require_constant(node.inputs[1], node, "axes").tolist()
    else:
        axes = node.attributes.get_ints("axes", None)
    if not axes:
        if node.attributes.get_int("noop_with_empty_axes", 0):
            return None
        axes = list(range(rank))
    return sorted(int(a) % rank for a in axes)


@rule("ReduceMean", "ReduceSum", piecewise_linear=True)
def reduce_mean_sum(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = Σ_axes x (÷ n for the mean):  dx = expand(dy, restored axes) (÷ n)."""
    x = node.inputs[0]
    axes = _reduction_axes(b, node)
    if axes is None:
        return [dys[0]] + [None] * (len(node.inputs) - 1)
    b.check_batch_axis(axes, node)
    dy = dys[0]
    if not node.attributes.get_int("keepdims", 1):
        dy = b.op("Unsqueeze", dy, b.ints(axes))
    if node.op_type == "ReduceMean":
        dy = b.divide_by(dy, b.size_of(x, axes), x)
    return [b.op("Expand", dy, b.shape_of(x))] + [None] * (len(node.inputs) - 1)


def _kept(b: GraphBuilder, node: ir.Node, value: ir.Value, axes: list[int]) -> ir.Value:
    """A reduction's output (or its gradient) with the reduced axes kept as size 1."""
    return value if node.attributes.get_int("keepdims", 1) else b.op("Unsqueeze", value, b.ints(axes))


def _reduction_gradient(b: GraphBuilder, node: ir.Node, dys: Grads, slope) -> Grads:
    """dx = expand(dy) · slope(x, y) for ``y = reduce(x)`` over the node's axes (y and dy with the
    reduced axes kept); the identity when the node reduces nothing."""
    x = node.inputs[0]
    axes = _reduction_axes(b, node)
    rest = [None] * (len(node.inputs) - 1)
    if axes is None:
        return [dys[0]] + rest
    b.check_batch_axis(axes, node)
    y, dy = _kept(b, node, node.outputs[0], axes), _kept(b, node, dys[0], axes)
    return [b.op("Mul", b.op("Expand", dy, b.shape_of(x)), slope(x, y, axes))] + rest


@rule("ReduceSumSquare")
def reduce_sum_square(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = Σ x²:  dx = 2x·dy."""
    return _reduction_gradient(b, node, dys, lambda x, y, axes: b.op("Mul", x, b.scalar(2.0, x)))


@rule("ReduceL2")
def reduce_l2(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = √(Σ x²):  dx = dy·x/y (0 where y = 0, as torch's norm)."""
    def slope(x, y, axes):
        safe = b.op("Where", b.op("Equal", y, b.scalar(0.0, y)), b.scalar(1.0, y), y)
        return b.op("Div", x, safe)
    return _reduction_gradient(b, node, dys, slope)


@rule("ReduceLogSumExp")
def reduce_log_sum_exp(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = ln Σ eˣ:  dx = dy·e^(x − y)  (the softmax over the reduced axes)."""
    return _reduction_gradient(b, node, dys, lambda x, y, axes: b.op("Exp", b.op("Sub", x, y)))


@rule("ReduceMax", "ReduceMin", piecewise_linear=True)
def reduce_max_min(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = max (or min) over the axes:  dx = dy·[x = y] / #{x = y}, the entries that tie sharing dy
    evenly (as torch.amax / torch.amin)."""
    def slope(x, y, axes):
        mask = b.op("Cast", b.op("Equal", x, y), to=ir.DataType.from_numpy(b.dtype(x)))
        return b.op("Div", mask, b.reduce("ReduceSum", mask, axes, keepdims=True))
    return _reduction_gradient(b, node, dys, slope)
