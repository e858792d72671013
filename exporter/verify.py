"""Check an explanation graph against ``torch.autograd`` on the PyTorch model it came from.

Pass criteria (the contract's numerics): logits within 1e-4 relative to max|S|, activations
within 1e-4 relative to max|A|, and max|Δg| ≤ 1e-4·max|g| + 1e-6 for the gradients of the
explained class score, taken by torch at the graph's own activations (see ``torch_reference``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.torch_export import score_selector
from onnxcam.models.contract import GraphMetadata, Key, TargetLayout
from torch import nn
from torch.overrides import TorchFunctionMode

#: the final activations the exporter looks through to the logits (see ``exporter.scores``)
_SCORE_ACTIVATIONS = {torch.sigmoid, torch.Tensor.sigmoid, nn.functional.sigmoid, torch.softmax,
                      torch.Tensor.softmax, nn.functional.softmax, torch.log_softmax, torch.Tensor.log_softmax,
                      nn.functional.log_softmax}


class _ActivationInputs(TorchFunctionMode):
    """Records (input, output) of every Sigmoid / Softmax / LogSoftmax call during a forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        if func in _SCORE_ACTIVATIONS and args:
            self.calls.append((args[0], out))
        return out

    def pre_activation(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores``' input when a recorded activation produced them, else ``scores``."""
        return next((given for given, made in reversed(self.calls) if made is scores), scores)


@dataclass
class Comparison:
    """Largest deviations between the graph and torch, each with its allowed bound."""

    logits_error: float
    logits_bound: float
    gradient_error: float
    gradient_bound: float
    activation_error: float

    activation_bound: float = float("inf")

    @property
    def ok(self) -> bool:
        return (self.logits_error <= self.logits_bound and self.gradient_error <= self.gradient_bound
                and self.activation_error <= self.activation_bound)

    def __str__(self) -> str:
        return (f"max|Δlogits| {self.logits_error:.2e} (≤ {self.logits_bound:.2e}), "
                f"max|ΔA| {self.activation_error:.2e} (≤ {self.activation_bound:.2e}), "
                f"max|Δg| {self.gradient_error:.2e} (≤ {self.gradient_bound:.2e})")


def torch_reference(model: nn.Module, target: str, call_index: int, x: np.ndarray, class_index: np.ndarray,
                    activations: np.ndarray | None = None, scores: str | None = None,
                    layout: TargetLayout = TargetLayout()) -> dict[str, np.ndarray]:
    """logits, explained class, activations A and ∂S_class/∂A computed by torch.autograd, A and
    ∂S/∂A laid out as the graph's NCHW ``activations`` (``layout``: the target's own layout).

    With ``activations`` (NCHW) the target's output is replaced by those values (A is then the
    point where the head is differentiated; prefix tokens keep torch's own): comparing with
    another implementation at *its own* A keeps the two on the same side of every ReLU and
    max-pool tie that directly follows A. ``scores`` picks the class scores from a tuple / dict
    output (see ``score_selector``); a final Sigmoid / Softmax / LogSoftmax is looked through, as
    the exporter does.
    """
    module = dict(model.named_modules())[target]
    dtype = next(model.parameters()).dtype
    calls, captured = [0], {}

    def replace_output(mod: nn.Module, args: tuple, output):
        index, calls[0] = calls[0], calls[0] + 1
        if index != call_index:
            return None
        value = output if isinstance(output, torch.Tensor) else output[0]
        if activations is not None:
            own = value.detach().cpu().numpy()
            value = torch.from_numpy(np.ascontiguousarray(layout.from_nchw(activations, own))).to(dtype)
        leaf = value.detach().clone().requires_grad_(True)
        captured["A"] = leaf
        downstream = leaf.clone()  # in-place operators after the target must not touch the leaf
        return downstream if isinstance(output, torch.Tensor) else (downstream, *output[1:])

    handle = module.register_forward_hook(replace_output)
    activations_seen = _ActivationInputs()
    try:
        with activations_seen:
            output = model(torch.from_numpy(x).to(dtype))
    finally:
        handle.remove()
    logits = activations_seen.pre_activation(score_selector(output, scores)(output))
    if logits.shape[1] == 1:  # a binary classifier: class 0 is the negated logit (see ``scores``)
        logits = torch.cat([-logits, logits], 1)
    chosen = torch.where(torch.from_numpy(class_index) < 0, logits.argmax(1), torch.from_numpy(class_index))
    score = logits.gather(1, chosen[:, None]).sum()
    (gradients,) = torch.autograd.grad(score, captured["A"])
    return {"logits": logits.detach().numpy(), "target": chosen.numpy(),
            "activations": layout.to_nchw(captured["A"].detach().numpy()), "gradients": layout.to_nchw(gradients.numpy())}


def run_graph(model: onnx.ModelProto, x: np.ndarray, class_index: np.ndarray) -> dict[str, np.ndarray]:
    """Run the explanation graph on onnxruntime's CPU provider."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    image_input = next(p.value for p in model.metadata_props if p.key == Key.IMAGE_INPUT)
    names = ["logits", "target", "activations", "gradients"]
    return dict(zip(names, session.run(names, {image_input: x, "class_index": class_index})))


def compare(graph: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> Comparison:
    """Deviations of ``graph`` from ``reference`` under the contract's tolerances."""
    g_ref = reference["gradients"]
    return Comparison(
        logits_error=float(np.abs(graph["logits"] - reference["logits"]).max()),
        logits_bound=1e-4 * float(np.abs(reference["logits"]).max()) + 1e-6,
        gradient_error=float(np.abs(graph["gradients"] - g_ref).max()),
        gradient_bound=1e-4 * float(np.abs(g_ref).max()) + 1e-6,
        activation_error=float(np.abs(graph["activations"] - reference["activations"]).max()),
        activation_bound=1e-4 * float(np.abs(reference["activations"]).max()) + 1e-6,
    )


def verify_against_torch(model: onnx.ModelProto, module: nn.Module, target: str, call_index: int,
                         input_size: tuple[int, int, int], batch: int = 3, seed: int = 0,
                         scores: str | None = None) -> Comparison:
    """Compare on a seeded random batch with mixed top-1 and explicit classes; raise on failure."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *input_size)).astype(np.float32)
    num_classes = run_graph(model, x[:1], np.array([-1], np.int64))["logits"].shape[-1]
    class_index = np.array([-1 if i % 2 == 0 else (7 * i) % num_classes for i in range(batch)], np.int64)
    graph = run_graph(model, x, class_index)
    layout = GraphMetadata.from_props({p.key: p.value for p in model.metadata_props}).target_layout
    reference = torch_reference(module, target, call_index, x, class_index, scores=scores, layout=layout)
    at_graph_point = torch_reference(module, target, call_index, x, class_index, graph["activations"], scores,
                                     layout)
    result = compare(graph, {**reference, "gradients": at_graph_point["gradients"]})
    if not result.ok:
        raise ExportError(f"verification against torch.autograd FAILED: {result}")
    return result
