"""A torch reading of a quantized ONNX head, for straight-through reference gradients.

:func:`head_scores` evaluates the nodes between a target tensor and the scores of an ONNX model
in torch, with each quantizing operator as quantization-aware training writes it:
QuantizeLinear → the quantized *levels* round(x / s) + z, clipped, as floats, with the
straight-through gradient 1/s where a level lies strictly between the bounds (torch's
``fake_quantize_per_tensor_affine`` backward except on values that round exactly onto a bound,
which onnxcam cannot tell from clipped ones without breaking onnxruntime's fusions), DequantizeLinear
→ (q − z)·s, DynamicQuantizeLinear → levels at the scale and zero point of x's own range (held
constant), MatMulInteger / ConvInteger → the float product of the levels minus their zero points,
the operator-oriented QLinearConv, QLinearAdd, QLinearGlobalAveragePool, QGemm … → their float
operator on the dequantized operands, quantized as QuantizeLinear is. Float operators run as torch
functions. Only what the tests' models contain is read.
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


#: (scale, zero point) positions of the output of each operator-oriented quantized operator
QOPERATOR_OUTPUT = {"QLinearConv": (6, 7), "QLinearAdd": (6, 7), "QLinearMul": (6, 7), "QLinearMatMul": (6, 7),
                    "QLinearGlobalAveragePool": (3, 4), "QLinearConcat": (0, 1), "QGemm": (7, 8)}


def _real(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, axis: int = 1) -> torch.Tensor:
    """(q − z)·s, per channel along ``axis`` when the parameters are vectors."""
    zero = torch.tensor(0.0) if zero is None else _per_channel(zero, axis, q.dim())
    return (q - zero) * _per_channel(scale, axis, q.dim())


def _qoperator(node: onnx.NodeProto, x: list, a: dict, levels: dict) -> torch.Tensor:
    """An operator-oriented quantized operator: its float operator on the dequantized operands,
    then quantized (``x`` positional, None for an absent optional input)."""
    op = node.op_type
    if op == "QLinearConv":
        bias = x[8] * _per_channel(x[1] * x[4], 0, 1).reshape(-1) if len(x) > 8 and x[8] is not None else None
        y = _conv(_real(x[0], x[1], x[2]), _real(x[3], x[4], x[5], axis=0), bias, a)
    elif op == "QLinearMatMul":
        y = _real(x[0], x[1], x[2]) @ _real(x[3], x[4], x[5], axis=-1)
    elif op == "QLinearAdd":
        y = _real(x[0], x[1], x[2]) + _real(x[3], x[4], x[5])
    elif op == "QLinearMul":
        y = _real(x[0], x[1], x[2]) * _real(x[3], x[4], x[5])
    elif op == "QLinearConcat":
        y = torch.cat([_real(x[i], x[i + 1], x[i + 2]) for i in range(2, len(x), 3)], dim=a["axis"])
    elif op == "QLinearGlobalAveragePool":
        y = _real(x[0], x[1], x[2]).mean((1, 2) if a.get("channels_last", 0) else (2, 3), keepdim=True)
    elif op == "QGemm":
        w = _real(x[3], x[4], x[5], axis=0 if a.get("transB", 0) else 1)
        y = a.get("alpha", 1.0) * (_real(x[0], x[1], x[2]) @ (w.T if a.get("transB", 0) else w))
        if x[6] is not None:
            y = y + x[6] * x[1] * x[4]
        if len(x) < 8 or x[7] is None:
            return y
    else:
        raise NotImplementedError(op)
    s, z = QOPERATOR_OUTPUT[op]
    zero = x[z] if len(x) > z and x[z] is not None else None
    dtype = zero.onnx_dtype if zero is not None else onnx.TensorProto.UINT8
    return _quantize(y, x[s], zero if zero is not None else torch.tensor(0.0), dtype, 1, levels.get(node.output[0]))


def target_levels(model: onnx.ModelProto, target: str, activations: torch.Tensor) -> torch.Tensor:
    """The levels a/s + z of a quantized target tensor (made by an operator-oriented quantized
    operator) from its real activations a; a float target as it is."""
    producer = next(n for n in model.graph.node if target in n.output)
    if producer.op_type not in QOPERATOR_OUTPUT:
        return activations
    constants = {i.name: _constant(i) for i in model.graph.initializer}
    s, z = (producer.input[i] if len(producer.input) > i else "" for i in QOPERATOR_OUTPUT[producer.op_type])
    return activations / constants[s] + (constants[z] if z else 0.0)


class _Tensor(torch.Tensor):
    """An initializer: a float tensor that remembers its ONNX element type."""

    onnx_dtype: int


def _constant(proto: onnx.TensorProto) -> _Tensor:
    tensor = torch.from_numpy(numpy_helper.to_array(proto).astype(np.float32)).as_subclass(_Tensor)
    tensor.onnx_dtype = proto.data_type
    return tensor


def quantizer_outputs(model: onnx.ModelProto) -> list[str]:
    """The quantized tensors of ``model`` (QuantizeLinear, DynamicQuantizeLinear outputs)."""
    return [n.output[0] for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear", *QOPERATOR_OUTPUT)]


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
        if node.op_type in QOPERATOR_OUTPUT:
            result = _qoperator(node, [values[i] if i else None for i in node.input], _attrs(node), levels or {})
        else:
            result = _run(node, [values[i] for i in node.input if i], _attrs(node), levels or {})
        for name, value in zip(node.output, result if isinstance(result, list) else [result]):
            values[name] = value.as_subclass(torch.Tensor) if isinstance(value, _Tensor) else value
    return values[logits]
