"""Element-wise non-linearities and the soft-max family."""
from __future__ import annotations

import math
from collections.abc import Sequence

import onnx_ir as ir
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.rules import rule

Grads = Sequence["ir.Value | None"]


@rule("Relu", piecewise_linear=True)
def relu(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = max(x, 0):  dx = dy · [y > 0]  (the output is tested, so Conv+Relu fusion survives)."""
    y = node.outputs[0]
    return [b.op("Where", b.op("Greater", y, b.scalar(0.0, y)), dys[0], b.scalar(0.0, y))]


@rule("LeakyRelu", piecewise_linear=True)
def leaky_relu(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = x if x > 0 else αx:  dx = dy if x > 0 else α·dy."""
    x, dy = node.inputs[0], dys[0]
    alpha = node.attributes.get_float("alpha", 0.01)
    scaled = b.op("Mul", dy, b.scalar(alpha, x))
    return [b.op("Where", b.op("Greater", x, b.scalar(0.0, x)), dy, scaled)]


@rule("Clip", piecewise_linear=True)
def clip(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = min(max(x, lo), hi):  dx = dy · [lo < x < hi]  (strict, as torch's hardtanh/ReLU6)."""
    x = node.inputs[0]
    mask = None
    bounds = list(node.inputs[1:3]) + [None] * (3 - len(node.inputs))
    for bound, compare in zip(bounds[:2], ("Greater", "Less")):
        if bound is None or bound.name == "":
            continue
        test = b.op(compare, x, bound)
        mask = test if mask is None else b.op("And", mask, test)
    if mask is None:
        return [dys[0]]
    return [b.op("Where", mask, dys[0], b.scalar(0.0, x))]


@rule("Sigmoid")
def sigmoid(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = 1/(1+e^−x):  dx = dy · y · (1 − y)."""
    y = node.outputs[0]
    return [b.op("Mul", dys[0], b.op("Mul", y, b.op("Sub", b.scalar(1.0, y), y)))]


@rule("Tanh")
def tanh(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = tanh x:  dx = dy · (1 − y²)."""
    y = node.outputs[0]
    return [b.op("Mul", dys[0], b.op("Sub", b.scalar(1.0, y), b.op("Mul", y, y)))]


@rule("HardSigmoid", piecewise_linear=True)
def hard_sigmoid(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = max(0, min(1, αx + β)):  dx = α·dy · [0 < αx + β < 1]."""
    x = node.inputs[0]
    alpha = node.attributes.get_float("alpha", 0.2)
    beta = node.attributes.get_float("beta", 0.5)
    t = b.op("Add", b.op("Mul", x, b.scalar(alpha, x)), b.scalar(beta, x))
    mask = b.op("And", b.op("Greater", t, b.scalar(0.0, x)), b.op("Less", t, b.scalar(1.0, x)))
    return [b.op("Where", mask, b.op("Mul", dys[0], b.scalar(alpha, x)), b.scalar(0.0, x))]


@rule("HardSwish")
def hard_swish(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = x·relu6(x + 3)/6:  dx = dy · (0 if x < −3, x/3 + ½ if x ≤ 3, else 1)  (as torch)."""
    x = node.inputs[0]
    middle = b.op("Add", b.op("Mul", x, b.scalar(1.0 / 3.0, x)), b.scalar(0.5, x))
    upper = b.op("Where", b.op("LessOrEqual", x, b.scalar(3.0, x)), middle, b.scalar(1.0, x))
    slope = b.op("Where", b.op("Less", x, b.scalar(-3.0, x)), b.scalar(0.0, x), upper)
    return [b.op("Mul", dys[0], slope)]


@rule("Erf")
def erf(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = erf x:  dx = dy · 2/√π · e^(−x²)."""
    x = node.inputs[0]
    gauss = b.op("Exp", b.op("Neg", b.op("Mul", x, x)))
    return [b.op("Mul", dys[0], b.op("Mul", gauss, b.scalar(2.0 / math.sqrt(math.pi), x)))]


@rule("Gelu")
def gelu(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """Exact: y = x·Φ(x), dx = dy·(Φ(x) + x·φ(x)).
    Tanh approximation: y = ½x(1 + t), t = tanh(k(x + c·x³)), k = √(2/π), c = 0.044715,
    dx = dy·(½(1 + t) + ½x(1 − t²)·k(1 + 3c·x²))."""
    x = node.inputs[0]
    half = b.scalar(0.5, x)
    if node.attributes.get_string("approximate", "none") == "tanh":
        k, c = math.sqrt(2.0 / math.pi), 0.044715
        x2 = b.op("Mul", x, x)
        inner = b.op("Mul", b.scalar(k, x), b.op("Add", x, b.op("Mul", b.scalar(c, x), b.op("Mul", x2, x))))
        t = b.op("Tanh", inner)
        left = b.op("Mul", half, b.op("Add", b.scalar(1.0, x), t))
        dinner = b.op("Mul", b.scalar(k, x), b.op("Add", b.scalar(1.0, x), b.op("Mul", b.scalar(3 * c, x), x2)))
        right = b.op("Mul", b.op("Mul", half, x), b.op("Mul", b.op("Sub", b.scalar(1.0, x), b.op("Mul", t, t)), dinner))
        return [b.op("Mul", dys[0], b.op("Add", left, right))]
    cdf = b.op("Mul", half, b.op("Add", b.scalar(1.0, x), b.op("Erf", b.op("Mul", x, b.scalar(1 / math.sqrt(2), x)))))
    pdf = b.op("Mul", b.op("Exp", b.op("Mul", b.op("Mul", x, x), b.scalar(-0.5, x))), b.scalar(1 / math.sqrt(2 * math.pi), x))
    return [b.op("Mul", dys[0], b.op("Add", cdf, b.op("Mul", x, pdf)))]


@rule("Exp")
def exp(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = e^x:  dx = dy · y."""
    return [b.op("Mul", dys[0], node.outputs[0])]


@rule("Log")
def log(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = ln x:  dx = dy / x."""
    return [b.op("Div", dys[0], node.inputs[0])]


@rule("Sqrt")
def sqrt(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = √x:  dx = dy / (2y)."""
    y = node.outputs[0]
    return [b.op("Div", dys[0], b.op("Mul", y, b.scalar(2.0, y)))]


@rule("Reciprocal")
def reciprocal(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = 1/x:  dx = −dy · y²."""
    y = node.outputs[0]
    return [b.op("Neg", b.op("Mul", dys[0], b.op("Mul", y, y)))]


@rule("Softmax")
def softmax(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = softmax(x) along axis:  dx = y ⊙ (dy − Σ_axis(dy ⊙ y))."""
    y, dy = node.outputs[0], dys[0]
    axis = node.attributes.get_int("axis", -1) % b.rank(y)
    total = b.reduce("ReduceSum", b.op("Mul", dy, y), [axis], keepdims=True)
    return [b.op("Mul", y, b.op("Sub", dy, total))]


@rule("LogSoftmax")
def log_softmax(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = log softmax(x) along axis:  dx = dy − e^y · Σ_axis dy."""
    y, dy = node.outputs[0], dys[0]
    axis = node.attributes.get_int("axis", -1) % b.rank(y)
    total = b.reduce("ReduceSum", dy, [axis], keepdims=True)
    return [b.op("Sub", dy, b.op("Mul", b.op("Exp", y), total))]


@rule("Abs", piecewise_linear=True)
def abs_(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = |x|:  dx = dy · sign(x)  (0 at x = 0, as torch)."""
    return [b.op("Mul", dys[0], b.op("Sign", node.inputs[0]))]


def _positive(b: GraphBuilder, x: ir.Value) -> ir.Value:
    return b.op("Greater", x, b.scalar(0.0, x))


@rule("Elu")
def elu(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = x if x > 0 else α(eˣ − 1):  dx = dy if x > 0 else dy·(y + α)."""
    x, y = node.inputs[0], node.outputs[0]
    alpha = node.attributes.get_float("alpha", 1.0)
    return [b.op("Where", _positive(b, x), dys[0], b.op("Mul", dys[0], b.op("Add", y, b.scalar(alpha, y))))]


@rule("Selu")
def selu(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = γ·x if x > 0 else γ·α(eˣ − 1):  dx = γ·dy if x > 0 else dy·(y + γα)."""
    x, y = node.inputs[0], node.outputs[0]
    alpha = node.attributes.get_float("alpha", 1.67326319217681884765625)
    gamma = node.attributes.get_float("gamma", 1.05070102214813232421875)
    return [b.op("Where", _positive(b, x), b.op("Mul", dys[0], b.scalar(gamma, y)),
                 b.op("Mul", dys[0], b.op("Add", y, b.scalar(gamma * alpha, y))))]


@rule("Celu")
def celu(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = max(0, x) + min(0, α(e^(x/α) − 1)):  dx = dy if x > 0 else dy·e^(x/α) = dy·(y/α + 1)."""
    x, y = node.inputs[0], node.outputs[0]
    alpha = node.attributes.get_float("alpha", 1.0)
    slope = b.op("Add", b.op("Mul", y, b.scalar(1.0 / alpha, y)), b.scalar(1.0, y))
    return [b.op("Where", _positive(b, x), dys[0], b.op("Mul", dys[0], slope))]


@rule("PRelu", piecewise_linear=True)
def prelu(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = x if x > 0 else s·x (s broadcast):  dx = dy if x > 0 else s·dy (the slope is a weight)."""
    if needs[1]:
        raise ExportError(f"PRelu node '{node.name}': a slope that depends on the target is not supported")
    x, slope = node.inputs
    return [b.op("Where", _positive(b, x), dys[0], b.op("Mul", dys[0], slope)), None]


@rule("Softplus")
def softplus(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = ln(1 + eˣ):  dx = dy · σ(x)."""
    return [b.op("Mul", dys[0], b.op("Sigmoid", node.inputs[0]))]


@rule("Mish")
def mish(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = x·tanh(softplus(x)):  dx = dy·(t + x·σ(x)·(1 − t²)), t = tanh(softplus(x))."""
    x = node.inputs[0]
    t = b.op("Tanh", b.op("Softplus", x))
    slope = b.op("Add", t, b.op("Mul", b.op("Mul", x, b.op("Sigmoid", x)),
                                 b.op("Sub", b.scalar(1.0, x), b.op("Mul", t, t))))
    return [b.op("Mul", dys[0], slope)]


@rule("Softsign")
def softsign(b: GraphBuilder, node: ir.Node, dys: Grads, needs: Sequence[bool]) -> Grads:
    """y = x/(1 + |x|):  dx = dy / (1 + |x|)²."""
    x = node.inputs[0]
    denominator = b.op("Add", b.scalar(1.0, x), b.op("Abs", x))
    return [b.op("Div", dys[0], b.op("Mul", denominator, denominator))]
