"""Export a PyTorch classifier to ONNX with its target layer's output exposed.

A forward hook on the target module records each of its outputs; a wrapper returns the logits
and the recorded output of the chosen call, so the exported graph names both tensors. The
dynamo exporter is tried first (dynamic batch axis), the TorchScript exporter second.
"""
from __future__ import annotations

import ast
import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import onnx
import onnx_ir as ir
import torch
from onnxcam.exporter.errors import ExportError
from onnxcam.models.errors import param
from torch import nn

IMAGE_INPUT, LOGITS, TARGET = "input", "logits", "onnxcam_target"


@dataclass
class TargetCall:
    """Which call of the target module is explained, and how many calls one forward pass makes."""

    index: int
    count: int

    def describe(self, name: str) -> str | None:
        if self.count == 1:
            return None
        return f"module '{name}' runs {self.count} times in one forward pass; explaining call {self.index + 1} (the last)"


class ExposeTarget(nn.Module):
    """Returns ``(logits, output of each target module's chosen call, ...)``."""

    def __init__(self, model: nn.Module, targets: list[tuple[nn.Module, int]],
                 scores: Callable[[Any], torch.Tensor] = lambda out: out) -> None:
        super().__init__()
        self.model = model
        self.scores = scores
        self._calls = [index for _, index in targets]
        self._outputs: list[list[torch.Tensor]] = [[] for _ in targets]
        self._handles = [module.register_forward_hook(self._recorder(i)) for i, (module, _) in enumerate(targets)]
        self.train(model.training)  # torch.onnx restores the wrapper's mode on the whole model afterwards

    def _recorder(self, slot: int):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            """Keep the output and hand a copy downstream, so that in-place operators after the
            target (DenseNet's ``relu(features, inplace=True)``) cannot change what is explained."""
            if isinstance(output, torch.Tensor):
                self._outputs[slot].append(output)
                return output.clone()
            self._outputs[slot].append(output[0])
            return None

        return record

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._outputs = [[] for _ in self._calls]
        logits = self.scores(self.model(x))
        return (logits, *(outputs[i] for outputs, i in zip(self._outputs, self._calls)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _describe(value: Any) -> str:
    return f"[{', '.join(map(str, value.shape))}]" if isinstance(value, torch.Tensor) else type(value).__name__


def score_selector(output: Any, scores: str | None = None) -> Callable[[Any], torch.Tensor]:
    """How to take the class scores [N, C] from what the model returns (``output``, one example):
    a tensor as it is; from a ``ModelOutput`` / dict the entry ``scores`` (default ``logits``);
    from a tuple / list the item at index ``scores``, else the only 2-D tensor in it. Raises
    ExportError listing what is there when the choice is ambiguous or wrong."""
    if isinstance(output, torch.Tensor):
        if scores not in (None, "0", "logits"):
            raise ExportError(f"scores {scores!r}: the model returns one tensor {_describe(output)}")
        return lambda out: out
    if isinstance(output, Mapping):
        key = scores or "logits"
        if key not in output:
            entries = ", ".join(f"{k} {_describe(v)}" for k, v in output.items())
            raise ExportError(f"the model returns {type(output).__name__} without {key!r} ({entries}); "
                              f"say which entry holds the class scores with {param('scores', 'NAME')}")
        return lambda out: out[key]
    if isinstance(output, (tuple, list)):
        items = ", ".join(f"{i}: {_describe(v)}" for i, v in enumerate(output))
        if scores is not None:
            if not scores.isdigit() or int(scores) >= len(output):
                raise ExportError(f"scores {scores!r}: the model returns a {type(output).__name__} ({items}); "
                                  "name the scores by their index")
            index = int(scores)
        else:
            matrices = [i for i, v in enumerate(output) if isinstance(v, torch.Tensor) and v.dim() == 2]
            if len(matrices) != 1:
                raise ExportError(f"the model returns a {type(output).__name__} ({items}); say which item holds "
                                  f"the class scores with {param('scores', 'INDEX')}")
            index = matrices[0]
        return lambda out: out[index]
    raise ExportError(f"the model returns a {type(output).__name__}, not class scores")


def count_calls(model: nn.Module, target: nn.Module, example: torch.Tensor) -> int:
    """How many times ``target`` runs in one forward pass of ``model`` on ``example``."""
    calls = []
    handle = target.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            model(example)
    finally:
        handle.remove()
    return len(calls)


def module_of(node: ir.Node) -> str | None:
    """The module (as in the source's ``named_modules()``) whose forward pass made ``node``,
    read off the dynamo exporter's ``pkg.torch.onnx.name_scopes``; None when not recorded
    ("" is the whole model)."""
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    try:
        names = ast.literal_eval(scopes) if scopes else None
    except (ValueError, SyntaxError):
        return None
    if not isinstance(names, list) or len(names) < 3:  # ['', 'model', ..., the fx node's own name]
        return None
    module = str(names[-2])
    return "" if module == "model" else module.removeprefix("model.")


def target_output_name(i: int) -> str:
    """Graph output name of the ``i``-th exposed target."""
    return TARGET if i == 0 else f"{TARGET}_{i}"


def _dynamo_export(wrapper: nn.Module, example: torch.Tensor, opset: int, outputs: list[str]) -> ir.Model:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        wrapper, (example,), dynamo=True, input_names=[IMAGE_INPUT], output_names=outputs,
        dynamic_shapes=({0: batch},), opset_version=opset, verbose=False,
    )
    return program.model  # the onnx_ir model itself: no proto round trip


def _torchscript_export(wrapper: nn.Module, example: torch.Tensor, opset: int, outputs: list[str]) -> ir.Model:
    buffer = io.BytesIO()
    torch.onnx.export(
        wrapper, (example,), buffer, dynamo=False, input_names=[IMAGE_INPUT], output_names=outputs,
        dynamic_axes={IMAGE_INPUT: {0: "N"}}, opset_version=opset, do_constant_folding=True,
    )
    return ir.from_proto(onnx.load_from_string(buffer.getvalue()))


def export_with_targets(model: nn.Module, target_names: list[str], input_size: tuple[int, int, int],
                        opset: int = 18, scores: str | None = None) -> tuple[ir.Model, list[TargetCall]]:
    """ONNX graph (an ``onnx_ir`` model) of ``model`` with outputs ``logits`` (the scores, see :func:`score_selector`)
    and, for each target module, its output (named by :func:`target_output_name`; the last call
    of a module that runs several times)."""
    modules = dict(model.named_modules())
    model.eval()
    example = torch.randn(2, *input_size)
    with torch.no_grad():
        select = score_selector(model(example), scores)
    calls, targets = [], []
    for name in target_names:
        if name not in modules:
            raise ExportError(f"unknown target layer '{name}'")
        count = count_calls(model, modules[name], example)
        if count == 0:
            raise ExportError(f"target layer '{name}' does not run in the forward pass")
        calls.append(TargetCall(count - 1, count))
        targets.append((modules[name], count - 1))
    wrapper = ExposeTarget(model, targets, select)
    outputs = [LOGITS] + [target_output_name(i) for i in range(len(targets))]
    errors = []
    try:
        for exporter in (_dynamo_export, _torchscript_export):
            try:
                with _quiet():
                    return exporter(wrapper, example, opset, outputs), calls
            except Exception as exc:  # each exporter fails in its own ways
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                errors.append(f"{exporter.__name__.strip('_')}: {message}")
    finally:
        wrapper.remove()
    raise ExportError("torch.onnx could not export the model (" + "; ".join(errors) + ")")


def export_with_target(model: nn.Module, target_name: str, input_size: tuple[int, int, int],
                       opset: int = 18, scores: str | None = None) -> tuple[ir.Model, TargetCall]:
    """:func:`export_with_targets` for one target, exposed as ``onnxcam_target``."""
    proto, calls = export_with_targets(model, [target_name], input_size, opset, scores)
    return proto, calls[0]


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress lines and deprecation warnings."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
