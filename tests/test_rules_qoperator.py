"""The operator-oriented quantized rules (``exporter/rules/qoperator.py``) one by one, on tiny
hand-made graphs: image → Conv → target A (float) → QuantizeLinear → the operator under test →
DequantizeLinear → Flatten → Gemm → logits. The reference is ``quantized_reference.head_scores``
(the float operator on the dequantized operands, quantized at onnxruntime's own levels, with the
straight-through gradient), differentiated by torch.autograd; the contract's tolerance applies.
QLinearConv, QLinearAdd, QLinearGlobalAveragePool and QGemm are also covered on real
``quantize_static`` models in test_exporter_quantized.py."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx_ir")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import helper  # noqa: E402

from exporter_helpers import CLASS_INDEX, Net, assert_gradients_close, explanation_graph, stem  # noqa: E402
from quantized_reference import head_scores, quantizer_outputs  # noqa: E402

MS = "com.microsoft"


def _quantize(net: Net, x: str, scale: float, zero: int) -> tuple[str, object, object]:
    s, z = net.param([], values=scale), net.const(zero, dtype=np.uint8)
    return net.op("QuantizeLinear", x, s, z), s, z


def _node(net: Net, op: str, inputs: list, domain: str = "", **attrs) -> str:
    out = net.fresh(op.lower())
    names = [i.name if hasattr(i, "name") else i for i in inputs]
    net.nodes.append(helper.make_node(op, names, [out], name=net.fresh(f"n_{op}"), domain=domain, **attrs))
    return out


def _matmul(net: Net, q, s, z):
    w = net.const(net.rng.integers(0, 255, (7, 5)), dtype=np.uint8)
    ws, wz = net.param([], values=0.02), net.const(128, dtype=np.uint8)
    ys, yz = net.param([], values=0.05), net.const(100, dtype=np.uint8)
    return _node(net, "QLinearMatMul", [q, s, z, w, ws, wz, ys, yz]), ys, yz


def _mul(net: Net, q, s, z):
    other, os_, oz = _quantize(net, "A", 0.04, 120)  # both operands depend on A
    ys, yz = net.param([], values=0.02), net.const(90, dtype=np.uint8)
    return _node(net, "QLinearMul", [q, s, z, other, os_, oz, ys, yz], MS), ys, yz


def _concat(net: Net, q, s, z):
    other, os_, oz = _quantize(net, net.op("Relu", "A"), 0.03, 0)
    ys, yz = net.param([], values=0.04), net.const(110, dtype=np.uint8)
    return _node(net, "QLinearConcat", [ys, yz, q, s, z, other, os_, oz], MS, axis=1), ys, yz


def _add_broadcast(net: Net, q, s, z):
    bias = net.const(net.rng.integers(0, 255, (1, 4, 1, 1)), dtype=np.uint8)
    bs, bz = net.param([], values=0.01), net.const(128, dtype=np.uint8)
    ys, yz = net.param([], values=0.06), net.const(128, dtype=np.uint8)
    return _node(net, "QLinearAdd", [q, s, z, bias, bs, bz, ys, yz], MS), ys, yz


@pytest.mark.parametrize("head", [_matmul, _mul, _concat, _add_broadcast], ids=lambda h: h.__name__.strip("_"))
def test_rule_matches_the_straight_through_reference(head) -> None:
    net = Net(seed=3, image=(3, 6, 7))
    stem(net, "A")
    q, s, z = _quantize(net, "A", 0.05, 128)
    y, ys, yz = head(net, q, s, z)
    real = net.op("DequantizeLinear", y, ys, yz)
    flat = net.op("Flatten", real, axis=1)
    features = int(np.prod(_shape(net, flat)[1:]))
    net.op("Gemm", flat, net.param([5, features], 1 / np.sqrt(features)), net.param([5], 0.1), out="logits", transB=1)
    model = net.model(["logits"])
    model.opset_import.append(helper.make_opsetid(MS, 1))
    graph = explanation_graph(model, "A")

    x = np.random.default_rng(1).standard_normal((3, *net.image)).astype(np.float32)
    names = [n for n in quantizer_outputs(model)]
    with_levels = onnx.ModelProto()
    with_levels.CopyFrom(graph)
    with_levels.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    session = ort.InferenceSession(with_levels.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    values = dict(zip(outputs, session.run(None, {"image": x, "class_index": CLASS_INDEX})))
    a = torch.from_numpy(values["activations"]).requires_grad_()
    logits = head_scores(model, "A", a, "logits", {n: values[n] for n in names})
    assert np.abs(logits.detach().numpy() - values["logits"]).max() <= 1e-4 * np.abs(values["logits"]).max() + 1e-6
    logits[torch.arange(3), torch.from_numpy(values["target"])].sum().backward()
    assert np.abs(a.grad.numpy()).max() > 0, "degenerate test: the reference gradient is all zeros"
    assert_gradients_close(values["gradients"], a.grad.numpy().astype(np.float64))


def _shape(net: Net, name: str) -> tuple[int, ...]:
    """The shape of tensor ``name`` of the graph built so far (one onnxruntime run)."""
    model = net.model([name])
    model.opset_import.append(helper.make_opsetid(MS, 1))
    model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": np.zeros((2, *net.image), np.float32)})[0].shape
