"""One reverse-mode rule per ONNX operator family.

A rule receives the builder, the forward node, the gradients flowing into the node's outputs
(``None`` where an output does not reach the scores) and which inputs need a gradient; it
returns one gradient (or ``None``) per input. Each rule's docstring states its derivative.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx_ir as ir
from onnxcam.exporter.builder import GraphBuilder

Rule = Callable[[GraphBuilder, ir.Node, Sequence["ir.Value | None"], Sequence[bool]], Sequence["ir.Value | None"]]

#: rules by operator: ``"Conv"`` for the default domain, ``"com.microsoft::QGemm"`` for others
RULES: dict[str, Rule] = {}

#: operators along which ∂²S/∂A² = 0 (S is piecewise linear in A); Mul/Div/MatMul/Gemm qualify
#: only when their other operand does not depend on A, which the engine checks separately.
PIECEWISE_LINEAR: set[str] = set()


def rule_key(node: ir.Node) -> str:
    """The key of ``node``'s operator in ``RULES``."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def rule(*op_types: str, piecewise_linear: bool = False) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the reverse-mode rule of ``op_types`` (keys as in ``RULES``)."""

    def register(fn: Rule) -> Rule:
        for op_type in op_types:
            RULES[op_type] = fn
            if piecewise_linear:
                PIECEWISE_LINEAR.add(op_type)
        return fn

    return register


def _load_rule_modules() -> None:
    from onnxcam.exporter.rules import (  # noqa: F401
        activations,
        elementwise,
        linear,
        normalization,
        pooling,
        qoperator,
        quantization,
        resampling,
        shape,
    )


_load_rule_modules()
