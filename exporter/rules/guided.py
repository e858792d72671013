"""Guided Backpropagation (Springenberg et al. 2015): ReLUs pass back only positive gradients.

These rules replace the ordinary ones for the ``guided_gradients`` output; they are not
registered in ``RULES``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.rules import Rule
from onnxcam.exporter.rules.activations import clip, relu

Grads = Sequence["ir.Value | None"]


def guided_relu(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = max(x, 0):  dx = dy · [x > 0] · [dy > 0]  = the ordinary rule applied to Relu(dy)."""
    return relu(b, node, [b.op("Relu", dys[0])], needs)


def guided_clip(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """A ReLU-like Clip (lower bound 0, as ReLU6): dx = dy · [0 < x < hi] · [dy > 0]  (the
    ordinary rule applied to Relu(dy)); any other Clip keeps its ordinary rule."""
    bound = node.inputs[1] if len(node.inputs) > 1 else None
    low = b.constant_value(bound) if bound is not None and bound.name else None
    if low is None or np.asarray(low).size != 1 or float(np.asarray(low).reshape(())) != 0.0:
        return clip(b, node, dys, needs)
    return clip(b, node, [b.op("Relu", dys[0])], needs)


GUIDED_RULES: dict[str, Rule] = {"Relu": guided_relu, "Clip": guided_clip}
