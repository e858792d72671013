"""Resize: linear in its input, separable, so its adjoint is the transpose of its matrices.

Along each resized axis a, ``Resize`` (nearest, linear or cubic; any coordinate transformation
mode but ``tf_crop_and_resize``, whose extrapolation value makes it affine) is y = R_a·x with a
fixed [out, in] matrix R_a. Rather than re-deriving every mode's rounding rules, R_a is measured:
the same Resize (same attributes, same scales or sizes along a, 1 elsewhere) runs in onnxruntime on
the one-hot basis of that axis, and column i of R_a is its output for basis vector i. The reverse
pass is then dx = R_aᵀ·dy along each resized axis (a MatMul with a constant).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.rules import rule

Grads = Sequence["ir.Value | None"]
_PASSED = ("mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a", "exclude_outside", "antialias")


def _scales(b: GraphBuilder, node: ir.Node, rank: int) -> np.ndarray | None:
    """The node's scales per axis, or None when it was given sizes."""
    axes = list(node.attributes.get_ints("axes", list(range(rank))))
    axes = [a % rank for a in axes]
    inputs = list(node.inputs) + [None] * (4 - len(node.inputs))
    scales = inputs[2] if inputs[2] is not None and inputs[2].name else None
    if scales is not None:
        values = b.require_constant(scales, node, "scales").astype(np.float32)
        if values.size:
            full = np.ones(rank, np.float32)
            full[axes] = values
            return full
    return None


def interpolation_matrix(node: ir.Node, axis: int, size_in: int, size_out: int, rank: int,
                         scale: float | None, opset: int) -> np.ndarray:
    """R [size_out, size_in] that the Resize ``node`` applies along ``axis`` (measured, see the
    module docstring)."""
    attributes = {k: node.attributes[k].value for k in _PASSED if k in node.attributes}
    shape_in = [size_in if a in (0, axis) else 1 for a in range(rank)]  # the basis along the batch axis
    if scale is not None:
        extra = [helper.make_tensor("scales", TensorProto.FLOAT, [rank],
                                    [scale if a == axis else 1.0 for a in range(rank)])]
        inputs = ["x", "", "scales"]
    else:
        extra = [helper.make_tensor("sizes", TensorProto.INT64, [rank],
                                    [size_out if a == axis else shape_in[a] for a in range(rank)])]
        inputs = ["x", "", "", "sizes"]
    graph = helper.make_graph([helper.make_node("Resize", inputs, ["y"], **attributes)], "basis",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_in)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], extra)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(opset, 18))])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    basis = np.eye(size_in, dtype=np.float32).reshape(shape_in[:axis] + [size_in] + shape_in[axis + 1:])
    out = session.run(None, {"x": basis})[0]
    if out.shape[axis] != size_out:
        raise ExportError(f"internal: Resize node '{node.name}' measured {out.shape[axis]} outputs, expected {size_out}")
    return np.moveaxis(out, axis, 1).reshape(size_in, size_out).T.copy()


@rule("Resize", piecewise_linear=True)
def resize(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = R_a ⋅ x along each resized axis a (R_a measured, see the module docstring):
    dx = R_aᵀ ⋅ dy along each of them."""
    if node.attributes.get_string("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        raise ExportError(f"Resize node '{node.name}': tf_crop_and_resize is not supported on the path to the scores")
    x, y = node.inputs[0], node.outputs[0]
    x_shape, y_shape = b.static_shape(x), b.static_shape(y)
    rank = len(x_shape)
    scales = _scales(b, node, rank)
    changed = [a for a in range(rank) if x_shape[a] != y_shape[a]]
    if 0 in changed:
        raise ExportError(f"Resize node '{node.name}' resizes the batch axis")
    b.check_fixed_size(changed, node, why="has an interpolation matrix per input size")
    dx = dys[0]
    for axis in changed:
        matrix = interpolation_matrix(node, axis, x_shape[axis], y_shape[axis], rank,
                                      None if scales is None else float(scales[axis]), b.opset)
        transposed = b.const(matrix.astype(b.dtype(x)), "resize_adjoint")  # [out, in]: dx = dy·R along that axis
        last = rank - 1
        if axis != last:
            perm = list(range(rank))
            perm[axis], perm[last] = last, axis
            dx = b.op("Transpose", b.op("MatMul", b.op("Transpose", dx, perm=perm), transposed), perm=perm)
        else:
            dx = b.op("MatMul", dx, transposed)
    return [dx] + [None] * (len(node.inputs) - 1)

