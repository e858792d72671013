"""Shared pieces of the reverse-mode rule tests (``tests/test_rules_*.py``).

Each case is a tiny ONNX classifier (image → Conv → target "A" [N, K, h, w] → the operator(s)
under test → Flatten → Gemm → logits [N, 5]) with a torch twin written with the same numbers
(float64). The explanation graph runs on a batch of 3 with class_index [-1, 2, 0]; its
``gradients`` must match torch.autograd within max|Δ| ≤ 1e-4·max|g| + 1e-6 and its ``logits``
the torch forward. Each case also states whether the head is piecewise linear, which the
``onnxcam.head_piecewise_linear`` metadata must say.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the rule tests take torch (and F) from here: skipped without it
pytest.importorskip("onnx_ir")
import torch.nn.functional as F  # noqa: E402,F401

from exporter_helpers import Net, check_against_torch, classifier, metadata  # noqa: E402

K, H, W = 4, 6, 7   # the default target tensor A is [N, 4, 6, 7]
D = K * H * W       # its features per image


@dataclass
class Case:
    head: Callable          # (net, "A") -> (onnx output name, torch function of A)
    linear: bool            # is the head piecewise linear in A?
    opset: int = 17
    image: tuple = (3, H, W)
    channels: int = K
    batch_independent: bool = True    # False where the head mixes the images of a batch



class Cases(list):
    """The cases of one test module: ``@cases("name", linear)`` registers a head; ``xfail`` is the
    reason of a known exporter bug (strict: fixing it must remove the mark)."""

    def __call__(self, name: str, linear: bool, xfail: str | None = None, **kw):
        def register(head):
            marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
            self.append(pytest.param(Case(head, linear, **kw), id=name, marks=marks))
            return head
        return register


def check_case(spec: Case) -> None:
    """Export the case's classifier and compare with torch.autograd (see the module docstring)."""
    c = classifier(spec.head, opset=spec.opset, image=spec.image, channels=spec.channels)
    graph, out, g = check_against_torch(c, batch_independent=spec.batch_independent)
    meta = metadata(graph)
    assert meta["onnxcam.head_piecewise_linear"] == ("true" if spec.linear else "false")
    np.testing.assert_allclose(out["gradients_pow2"], out["gradients"] ** 2, rtol=1e-6, atol=1e-30)


def tpads(p):
    """ONNX 2-D pads [hb, wb, he, we] → torch F.pad order (wb, we, hb, he)."""
    return (p[1], p[3], p[0], p[2])


def positive(net: Net, a: str):
    """Sigmoid(A) + 0.25 ∈ (0.25, 1.25): an operand for Log, Sqrt, Reciprocal, Div."""
    quarter = net.param([], values=0.25)
    return net.op("Add", net.op("Sigmoid", a), quarter), lambda t: torch.sigmoid(t) + 0.25
