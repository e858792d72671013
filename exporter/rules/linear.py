"""Matrix products and convolutions: the adjoint of a linear map is its transpose."""
from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.rules import rule

Grads = Sequence["ir.Value | None"]


@rule("Gemm", piecewise_linear=True)
def gemm(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = α·op(A)·op(B) + β·C:  dA = α·dy·op(B)ᵀ (transposed back if transA),
    dB = α·op(A)ᵀ·dy (transposed back if transB), dC = unbroadcast(β·dy)."""
    a, c = node.inputs[0], node.inputs[1]
    dy = dys[0]
    alpha = node.attributes.get_float("alpha", 1.0)
    beta = node.attributes.get_float("beta", 1.0)
    trans_a = node.attributes.get_int("transA", 0)
    trans_b = node.attributes.get_int("transB", 0)
    grads: list[ir.Value | None] = [None] * len(node.inputs)
    if needs[0]:
        if trans_a:
            grads[0] = b.op("Gemm", c, dy, alpha=alpha, transA=trans_b, transB=1)
        else:
            grads[0] = b.op("Gemm", dy, c, alpha=alpha, transB=1 - trans_b)
    if needs[1]:
        if trans_b:
            grads[1] = b.op("Gemm", dy, a, alpha=alpha, transA=1, transB=trans_a)
        else:
            grads[1] = b.op("Gemm", a, dy, alpha=alpha, transA=1 - trans_a)
    if len(needs) > 2 and needs[2]:
        scaled = dy if beta == 1.0 else b.op("Mul", dy, b.scalar(beta, dy))
        grads[2] = b.unbroadcast(scaled, node.inputs[2], b.static_shape(node.outputs[0]))
    return grads


def _swap_last(b: GraphBuilder, x: ir.Value, rank: int) -> ir.Value:
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return b.op("Transpose", x, perm=perm)


@rule("MatMul", piecewise_linear=True)
def matmul(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = A @ B (batched, broadcasting):  dA = unbroadcast(dy @ Bᵀ), dB = unbroadcast(Aᵀ @ dy)."""
    a, c = node.inputs
    dy, y_shape = dys[0], b.static_shape(node.outputs[0])
    a_shape, c_shape = b.static_shape(a), b.static_shape(c)
    if len(a_shape) < 2 or len(c_shape) < 2:
        raise ExportError(f"MatMul node '{node.name}': 1-D operands are not supported on the path to the scores")
    grads: list[ir.Value | None] = [None, None]
    if needs[0]:
        da = b.op("MatMul", dy, _swap_last(b, c, len(c_shape)))
        grads[0] = b.unbroadcast(da, a, y_shape[:-2] + a_shape[-2:])
    if needs[1]:
        dc = b.op("MatMul", _swap_last(b, a, len(a_shape)), dy)
        grads[1] = b.unbroadcast(dc, c, y_shape[:-2] + c_shape[-2:])
    return grads


def conv_geometry(b: GraphBuilder, node: ir.Node, x_shape, y_shape, kernel) -> tuple[list[int], list[int], list[int]]:
    """Explicit (strides, dilations, pads) of a Conv node, resolving ``auto_pad``."""
    spatial = len(kernel)
    strides = list(node.attributes.get_ints("strides", [1] * spatial))
    dilations = list(node.attributes.get_ints("dilations", [1] * spatial))
    auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = list(node.attributes.get_ints("pads", [0] * 2 * spatial))
    elif auto_pad == "VALID":
        pads = [0] * 2 * spatial
    else:
        if any(s > 1 for s in strides):
            b.check_fixed_size(range(2, 2 + spatial), node, why=f"pads by {auto_pad} at a stride > 1, which depends "
                                                                "on the size")
        begins, ends = [], []
        for i in range(spatial):
            total = max(0, (y_shape[2 + i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - x_shape[2 + i])
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        pads = begins + ends
    return strides, dilations, pads


def adjoint_kernel(b: GraphBuilder, w: ir.Value, group: int) -> ir.Value:
    """W' with W'[i, o, k] = W[o, i, −k] within each group ([C_in, C_out/g, *kernel]): the
    kernel of the convolution that equals ConvTranspose(·, W) at stride 1. Written as
    Reshape/Transpose/Slice nodes on W, which onnxruntime folds once at session creation when W
    is a constant (the file keeps one copy of the weights)."""
    w_shape = b.static_shape(w)
    c_out, c_in_per_group, kernel = w_shape[0], w_shape[1], list(w_shape[2:])
    spatial = len(kernel)
    if c_out // group > 1 or c_in_per_group > 1:
        grouped = b.op("Reshape", w, b.ints([group, c_out // group, c_in_per_group, *kernel]))
        swapped = b.op("Transpose", grouped, perm=[0, 2, 1, *range(3, 3 + spatial)])
        w = b.op("Reshape", swapped, b.ints([group * c_in_per_group, c_out // group, *kernel]))
    flip_axes = [2 + i for i, k in enumerate(kernel) if k > 1]
    if flip_axes:
        w = b.op("Slice", w, b.ints([-1] * len(flip_axes)), b.ints([_SLICE_TO_START] * len(flip_axes)),
                 b.ints(flip_axes), b.ints([-1] * len(flip_axes)))
    return w


_SLICE_TO_START = -(2**63)  # a Slice end that, with step −1, runs through index 0


@rule("Conv", piecewise_linear=True)
def conv(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = W ⋆ x + bias:  dx = ConvTranspose(dy, W) with the same strides, pads, dilations and
    group, and output_padding restoring x's size (the rows of the stride that the forward pass dropped).
    At stride 1 the same dx is the correlation dx = W' ⋆ dy with W' = ``adjoint_kernel`` (channels
    swapped per group, kernel flipped) and pads (k − 1)·d − p, which runs on onnxruntime's faster
    Conv kernels; that form is emitted whenever the pads allow it (p ≤ (k − 1)·d)."""
    if any(needs[1:]):
        raise ExportError(f"Conv node '{node.name}': weights that depend on the target are not supported")
    x, w = node.inputs[0], node.inputs[1]
    x_shape, y_shape = b.static_shape(x), b.static_shape(node.outputs[0])
    kernel = b.static_shape(w)[2:]
    strides, dilations, pads = conv_geometry(b, node, x_shape, y_shape, kernel)
    group = node.attributes.get_int("group", 1)
    reach = [(k - 1) * d for k, d in zip(kernel, dilations)]
    if all(s == 1 for s in strides) and all(p <= r for p, r in zip(pads, reach + reach)):
        dx = b.op(
            "Conv", dys[0], adjoint_kernel(b, w, group),
            dilations=dilations, pads=[r - p for p, r in zip(pads, reach + reach)], group=group,
            kernel_shape=list(kernel),
        )
        return [dx] + [None] * (len(node.inputs) - 1)
    dx = transpose_to_input(b, node, dys[0], w, x, strides, dilations, pads, group, list(kernel), x_shape, y_shape)
    return [dx] + [None] * (len(node.inputs) - 1)


def transpose_to_input(b: GraphBuilder, node: ir.Node, dy: ir.Value, w: ir.Value, x: ir.Value, strides, dilations,
                       pads, group: int, kernel: list[int], x_shape, y_shape) -> ir.Value:
    """ConvTranspose(dy, W) of x's size: ``output_padding`` restores the rows of the stride the
    forward pass dropped, and an end pad beyond the windows (ceil mode) is cropped instead. When
    the image size is symbolic the rows are cut or zero-filled at run time (``fit_to``)."""
    spatial = len(kernel)
    axes = list(range(2, 2 + spatial))
    if set(b.facts.axes_with_size(x.name)) & set(axes):
        dx = b.op("ConvTranspose", dy, w, strides=strides, dilations=dilations, pads=pads[:spatial] + [0] * spatial,
                  group=group, kernel_shape=kernel)
        return b.fit_to(dx, x, axes)
    output_padding, back_pads = [], list(pads)
    for i in range(spatial):
        covered = (y_shape[2 + i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
        missing = x_shape[2 + i] + pads[i] + pads[spatial + i] - covered
        output_padding.append(max(0, missing))
        back_pads[spatial + i] += max(0, -missing)
    return b.op("ConvTranspose", dy, w, strides=strides, dilations=dilations, pads=back_pads, group=group,
                kernel_shape=kernel, output_padding=output_padding)


@rule("ConvTranspose", piecewise_linear=True)
def conv_transpose(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = Wᵀ ⋆ x (transposed convolution):  dx = Conv(dy, W) with the same strides, pads,
    dilations and group."""
    if any(needs[1:]):
        raise ExportError(f"ConvTranspose node '{node.name}': weights that depend on the target are not supported")
    if node.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "") or "output_shape" in node.attributes:
        raise ExportError(f"ConvTranspose node '{node.name}': only explicit pads are supported")
    w = node.inputs[1]
    kernel = b.static_shape(w)[2:]
    spatial = len(kernel)
    dx = b.op(
        "Conv", dys[0], w,
        strides=list(node.attributes.get_ints("strides", [1] * spatial)),
        dilations=list(node.attributes.get_ints("dilations", [1] * spatial)),
        pads=list(node.attributes.get_ints("pads", [0] * 2 * spatial)),
        group=node.attributes.get_int("group", 1), kernel_shape=list(kernel),
    )
    return [dx] + [None] * (len(node.inputs) - 1)


def _einsum_terms(node: ir.Node) -> tuple[list[str], str]:
    equation = node.attributes.get_string("equation").replace(" ", "")
    if "..." in equation or "->" not in equation:
        raise ExportError(f"Einsum node '{node.name}': only explicit equations without '...' are supported "
                          f"(got {equation!r})")
    inputs, output = equation.split("->")
    terms = inputs.split(",")
    if any(len(set(t)) != len(t) for t in terms + [output]):
        raise ExportError(f"Einsum node '{node.name}': repeated indices in one operand are not supported")
    return terms, output


@rule("Einsum", piecewise_linear=True)
def einsum(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = einsum(t_1, …, t_n → o):  dx_i = einsum(dy and the other operands → t_i), with the
    indices of t_i that appear nowhere else (summed over in the forward pass) broadcast back."""
    terms, output = _einsum_terms(node)
    grads: list[ir.Value | None] = [None] * len(node.inputs)
    for i, need in enumerate(needs):
        if not need:
            continue
        others = [(t, v) for j, (t, v) in enumerate(zip(terms, node.inputs)) if j != i]
        known = set(output).union(*[set(t) for t, _ in others])
        present = "".join(c for c in terms[i] if c in known)
        grad = b.op("Einsum", dys[0], *(v for _, v in others),
                    equation=",".join([output] + [t for t, _ in others]) + "->" + present)
        if present != terms[i]:  # indices only this operand had: broadcast dy back along them
            missing = [k for k, c in enumerate(terms[i]) if c not in known]
            grad = b.op("Expand", b.op("Unsqueeze", grad, b.ints(missing)), b.shape_of(node.inputs[i]))
        grads[i] = grad
    return grads
