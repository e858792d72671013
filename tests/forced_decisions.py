"""A float64 torch reference that takes every ReLU mask and max-pool choice from an ONNX graph.

A reverse pass through a whole network (``input_gradients``) in float32 puts a few ReLU inputs
and max-pool windows that are within rounding distance of a tie on the other side than float64
does — in torch as in onnxruntime — and each such flip moves the gradient of a whole receptive
field. On a random-weight network this is often 1e-3…1e-2 of max|g|, for torch's own float32 too.
To tell a wrong rule from a flip, :func:`forced_reference` runs the torch model in float64 with
every ``F.relu`` returning x·[y_onnx > 0] and every ``F.max_pool2d`` gathering x at the ONNX
``MaxPool``'s own arg-max indices (the ONNX classifier's ``Relu`` / ``MaxPool`` nodes in order,
matched to torch's calls in execution order, shapes checked). At the same decisions the two
gradients are the same function of x, so they must agree to float32 rounding (~1e-6·max|g|).
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_RELUS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
_MAXPOOLS = {F.max_pool2d, F._max_pool2d, torch.max_pool2d}


def onnx_decisions(model: onnx.ModelProto | ir.Model, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """("relu", output) and ("maxpool", flat arg-max indices) for each Relu / MaxPool node of
    the ONNX classifier ``model`` on input ``x``, in graph order."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model if isinstance(model, onnx.ModelProto) else ir.to_proto(model))
    wanted = []
    for node in probe.graph.node:
        if node.op_type == "Relu":
            wanted.append(("relu", node.output[0]))
        elif node.op_type == "MaxPool":
            if len(node.output) < 2:
                node.output.append(f"{node.output[0]}/forced_indices")
            wanted.append(("maxpool", node.output[1]))
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for _, name in wanted)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    image = next(i.name for i in probe.graph.input if i.name not in {t.name for t in probe.graph.initializer})
    return [(kind, value) for (kind, _), value in zip(wanted, session.run(None, {image: x}))]


class _Forced(TorchFunctionMode):
    def __init__(self, decisions: list[tuple[str, np.ndarray]]) -> None:
        super().__init__()
        self.decisions, self.used = decisions, 0

    def _next(self, kind: str, shape: tuple[int, ...]) -> np.ndarray:
        got, value = self.decisions[self.used]
        self.used += 1
        assert got == kind, f"call {self.used}: torch calls {kind}, the ONNX graph has {got} here"
        return value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELUS:
            x = args[0]
            y = self._next("relu", tuple(x.shape))
            assert y.shape == tuple(x.shape), f"ReLU {self.used}: shape {tuple(x.shape)} vs ONNX {y.shape}"
            return x * torch.from_numpy(y > 0).to(x.dtype)
        if func in _MAXPOOLS:
            x = args[0]
            indices = self._next("maxpool", tuple(x.shape))
            return x.reshape(-1)[torch.from_numpy(indices.reshape(-1))].reshape(indices.shape)
        return func(*args, **kwargs)


def forced_reference(module: torch.nn.Module, classifier: onnx.ModelProto | ir.Model, x: np.ndarray,
                     classes: np.ndarray) -> np.ndarray:
    """∂S_classes/∂x by float64 torch.autograd at the ONNX classifier's own ReLU / max-pool decisions."""
    decisions = onnx_decisions(classifier, x)
    model = copy.deepcopy(module).double().eval()
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    with _Forced(decisions) as forced:
        logits = model(xt)
    assert forced.used == len(decisions), f"torch made {forced.used} ReLU/max-pool calls, ONNX has {len(decisions)}"
    logits[torch.arange(len(x)), torch.from_numpy(np.asarray(classes))].sum().backward()
    return xt.grad.numpy()


def plain_reference(module: torch.nn.Module, x: np.ndarray, classes: np.ndarray,
                    dtype: torch.dtype = torch.float64) -> np.ndarray:
    """∂S_classes/∂x by torch.autograd in ``dtype`` (no forced decisions)."""
    model = copy.deepcopy(module).to(dtype).eval()
    xt = torch.from_numpy(x).to(dtype).requires_grad_()
    logits = model(xt)
    logits[torch.arange(len(x)), torch.from_numpy(np.asarray(classes))].sum().backward()
    return xt.grad.numpy().astype(np.float64)
