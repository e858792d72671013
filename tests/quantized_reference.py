"""A torch reading of a quantized ONNX head, for straight-through reference gradients.

:func:`head_scores` evaluates the nodes between a target tensor and the scores of an ONNX model
in torch, with each quantizing operator as quantization-aware training writes it:
QuantizeLinear → the quantized *levels* round(x / s) + z, clipped, as floats, with the
straight-through gradient 1/s where a level lies strictly between the bounds (torch's
``fake_quantize_per_tensor_affine`` backward except on values that round exactly onto a bound,
which onnxcam cannot tell from clipped ones without breaking onnxruntime's fusions), DequantizeLinear
→ (q − z)·s, DynamicQuantizeLinear → levels at the scale and zero point of x's own range (held
constant), MatMulInteger / ConvInteger → the float product of the levels minus their zero points.
Float operators run as torch functions. Only what the tests' models contain is read.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

_RANGES = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255)}


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _per_channel(param: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    return param if param.numel() == 1 else param.reshape([-1] + [1] * (rank - 1 - axis % rank))


def _quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: int, axis: int,
              levels: np.ndarray | None = None, clips: bool = True) -> torch.Tensor:
    """The levels clip(round(x / s) + z) (round half to even, as ONNX; or onnxruntime's own
    ``levels``), with the gradient 1/s where a level is strictly inside the range (everywhere
    when the range comes from x itself and nothing ``clips``)."""
    low, high = _RANGES[dtype]
    scaled = x / _per_channel(scale, axis, x.dim())
    if levels is None:
        found = torch.clamp(torch.round(scaled) + _per_channel(zero, axis, x.dim()), low, high).detach()
    else:
        found = torch.from_numpy(levels.astype(np.float32))
    inside = ((found > low) & (found < high)).to(x.dtype) if clips else torch.ones_like(x)
    return found + (scaled - scaled.detach()) * inside


def _conv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, a: dict) -> torch.Tensor:
    pads = a.get("pads", [0, 0, 0, 0])
    assert pads[:2] == pads[2:], "asymmetric pads"
    return F.conv2d(x, w, bias, stride=a.get("strides", 1), padding=pads[:2], dilation=a.get("dilations", 1),
                    groups=a.get("group", 1))


def _run(node: onnx.NodeProto, x: list, a: dict, levels: dict):  # noqa: C901 — one branch per operator
    op = node.op_type
    if op == "QuantizeLinear":
        dtype = onnx.TensorProto.UINT8 if len(x) < 3 else x[2].onnx_dtype
        return _quantize(x[0], x[1], x[2] if len(x) > 2 else torch.tensor(0), dtype, a.get("axis", 1),
                         levels.get(node.output[0]))
    if op == "DequantizeLinear":
        rank, axis = x[0].dim(), a.get("axis", 1)
        zero = x[2] if len(x) > 2 else torch.tensor(0.0)
        return (x[0] - _per_channel(zero, axis, rank)) * _per_channel(x[1], axis, rank)
    if op == "DynamicQuantizeLinear":
        low, high = min(float(x[0].min()), 0.0), max(float(x[0].max()), 0.0)
        scale = torch.tensor((high - low) / 255.0)
        zero = torch.tensor(float(np.clip(np.round(-low / float(scale)), 0, 255)))
        return [_quantize(x[0], scale, zero, onnx.TensorProto.UINT8, 1, levels.get(node.output[0]), clips=False),
                scale, zero]
    if op == "MatMulInteger":
        return (x[0] - (x[2] if len(x) > 2 else 0)) @ (x[1] - (x[3] if len(x) > 3 else 0))
    if op == "ConvInteger":
        w_zero = _per_channel(x[3], 0, 4) if len(x) > 3 else 0
        return _conv(x[0] - (x[2] if len(x) > 2 else 0), x[1] - w_zero, None, a)
    simple = {"Relu": torch.relu, "Cast": lambda t: t, "Identity": lambda t: t, "Add": torch.add, "Mul": torch.mul}
    if op in simple:
        return simple[op](*x)
    if op == "Conv":
        return _conv(x[0], x[1], x[2] if len(x) > 2 else None, a)
    if op == "GlobalAveragePool":
        return x[0].mean((2, 3), keepdim=True)
    if op == "ReduceMean":
        axes = [int(v) for v in (x[1].tolist() if len(x) > 1 else a["axes"])]
        return x[0].mean(axes, keepdim=bool(a.get("keepdims", 1)))
    if op == "Flatten":
        return x[0].reshape(x[0].shape[0], -1)
    if op == "Reshape":
        shape = [int(d) if d != 0 else x[0].shape[i] for i, d in enumerate(x[1].tolist())]
        return x[0].reshape(shape)
    if op == "MaxPool":
        pads = a.get("pads", [0, 0, 0, 0])
        return F.max_pool2d(x[0], a["kernel_shape"], a.get("strides", 1), pads[:2])
    if op == "Gemm":
        w = x[1].T if a.get("transB", 0) else x[1]
        return x[0] @ w + (x[2] if len(x) > 2 else 0)
    raise NotImplementedError(op)


class _Tensor(torch.Tensor):
    """An initializer: a float tensor that remembers its ONNX element type."""

    onnx_dtype: int


def _constant(proto: onnx.TensorProto) -> _Tensor:
    tensor = torch.from_numpy(numpy_helper.to_array(proto).astype(np.float32)).as_subclass(_Tensor)
    tensor.onnx_dtype = proto.data_type
    return tensor


def quantizer_outputs(model: onnx.ModelProto) -> list[str]:
    """The quantized tensors of ``model`` (QuantizeLinear, DynamicQuantizeLinear outputs)."""
    return [n.output[0] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear")]


def head_scores(model: onnx.ModelProto, target: str, target_value: torch.Tensor, logits: str,
                levels: dict[str, np.ndarray] | None = None) -> torch.Tensor:
    """The scores ``logits`` of ``model`` as a torch function of the tensor ``target``; a
    quantizer whose output is in ``levels`` takes those values forward (onnxruntime's integer
    kernels round their requantization their own way), the straight-through rule backward."""
    values: dict[str, torch.Tensor] = {target: target_value}
    values.update({init.name: _constant(init) for init in model.graph.initializer})
    for node in model.graph.node:  # the head, and what it computes from constants (weights' DQ)
        if node.op_type == "Constant":
            values[node.output[0]] = _constant(_attrs(node)["value"])
            continue
        if target in node.output or not all(i in values for i in node.input if i):
            continue
        result = _run(node, [values[i] for i in node.input if i], _attrs(node), levels or {})
        for name, value in zip(node.output, result if isinstance(result, list) else [result]):
            values[name] = value.as_subclass(torch.Tensor) if isinstance(value, _Tensor) else value
    return values[logits]
