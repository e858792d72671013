"""Quantized classifiers: QDQ (torch fake-quant export, onnxruntime ``quantize_static`` with int8
or uint8 activations) and ``quantize_dynamic`` (DynamicQuantizeLinear, ConvInteger, MatMulInteger).

The explanation graph keeps the source's integer forward nodes, its logits equal the source's
within the contract's 1e-4 (resnet18 with int8 activations: within 5 % of the largest score, a
quantization level: onnxruntime runs the int8 groups it cannot rewrite to uint8 for its x64
kernels — a tensor with two readers, at each residual connection — in float, while the exporter
rewrites them all, exactly, so more of the explanation graph runs on integer kernels),
its metadata says the gradients are straight-through, and its gradients equal torch.autograd
through the same head read with fake quantization at the same scales and zero points
(``quantized_reference``: forward through onnxruntime's own quantized levels), differentiated
at the graph's own activations.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
quantization = pytest.importorskip("onnxruntime.quantization")

import onnxruntime as ort  # noqa: E402
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from torch import nn  # noqa: E402

from exporter_helpers import assert_gradients_close  # noqa: E402
from onnxcam.cli.main import main  # noqa: E402
from onnxcam.exporter import export  # noqa: E402
from onnxcam.models.contract import GraphMetadata  # noqa: E402
from quantized_reference import head_scores, quantizer_outputs, target_levels  # noqa: E402

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                 "QLinearConv", "QLinearAdd", "QLinearGlobalAveragePool", "QGemm"}


class SmallNet(nn.Module):
    """conv → relu → conv (stride 2) → relu → mean → linear, optionally fake-quantized as
    quantization-aware training does (activations per tensor, weights per output channel)."""

    def __init__(self, fake_quant: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1, stride=2)
        self.fc = nn.Linear(6, 5)
        self.fake_quant = fake_quant
        for name in ("conv1", "conv2"):  # per output channel, as constants of the exported graph
            self.register_buffer(f"{name}_scale", getattr(self, name).weight.detach().abs().amax((1, 2, 3)) / 127)

    def _act(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, scale, 0, -128, 127) if self.fake_quant else x

    def _weight(self, name: str) -> torch.Tensor:
        w = getattr(self, name).weight
        if not self.fake_quant:
            return w
        return torch.fake_quantize_per_channel_affine(w, getattr(self, f"{name}_scale"),
                                                      torch.zeros(len(w), dtype=torch.int32), 0, -128, 127)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(nn.functional.conv2d(self._act(x, 0.03), self._weight("conv1"), self.conv1.bias,
                                            padding=1))
        b = torch.relu(nn.functional.conv2d(self._act(a, 0.01), self._weight("conv2"), self.conv2.bias,
                                            padding=1, stride=2))
        return self.fc(self._act(b, 0.004).mean((2, 3)))


class Calibration(quantization.CalibrationDataReader):
    def __init__(self, size: int) -> None:
        self.batches = iter([{"input": np.random.default_rng(i).standard_normal((1, 3, size, size)).astype(np.float32)}
                             for i in range(4)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def _torch_to_onnx(model: nn.Module, path: Path, size: int) -> Path:
    torch.onnx.export(model.eval(), (torch.randn(2, 3, size, size),), str(path), input_names=["input"],
                      output_names=["logits"], dynamo=False, dynamic_axes={"input": {0: "N"}}, opset_version=17)
    return path


def _quantized(kind: str, tmp_path: Path, model: nn.Module, size: int) -> Path:
    """The ONNX file of ``model`` quantized as ``kind`` says."""
    if kind == "fake-quant":
        return _torch_to_onnx(model, tmp_path / "fake_quant.onnx", size)
    source = _torch_to_onnx(model, tmp_path / "float.onnx", size)
    out = tmp_path / f"{kind}.onnx"
    if kind.startswith(("static", "qoperator")):
        activations = quantization.QuantType.QUInt8 if kind.endswith("-u8") else quantization.QuantType.QInt8
        form = quantization.QuantFormat.QOperator if kind.startswith("qoperator") else quantization.QuantFormat.QDQ
        if kind.startswith("qoperator"):  # its quantizer needs the shapes inferred (and Conv biases found)
            quant_pre_process(str(source), str(source))
        quantization.quantize_static(str(source), str(out), Calibration(size), quant_format=form,
                                     per_channel=True, activation_type=activations)
    else:
        quantization.quantize_dynamic(str(source), str(out), weight_type=quantization.QuantType.QInt8)
    return out


def _early_target(model: onnx.ModelProto) -> str:
    """The tensor after the first convolution that a QDQ model dequantizes (outside every
    DequantizeLinear → op → QuantizeLinear group, so onnxruntime still fuses them all), or the
    float tensor a dynamic model's second quantizer reads, or an operator-oriented model's first
    QLinearConv output (its int8 / uint8 levels)."""
    qlinear = [n for n in model.graph.node if n.op_type == "QLinearConv"]
    if qlinear:
        return qlinear[0].output[0]
    quantizers = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear")
                  and n.input[0] not in {i.name for i in model.graph.initializer}]
    second = quantizers[1]
    if second.op_type == "DynamicQuantizeLinear":
        return second.input[0]
    return next(n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == second.output[0])


def _int8_quantizers(model: onnx.ModelProto) -> list[str]:
    points = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    return [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
            and n.input[2] in points]


def _check(path: Path, target: str | None, size: int, exact: bool) -> GraphMetadata:
    """Export at ``target``, compare with the source (within the contract's 1e-4 when ``exact``,
    else 5 % of the largest score: see the module docstring) and with the reference."""
    source = onnx.load(str(path))
    graph = export(str(path), target, mean=[0, 0, 0], std=[1, 1, 1])
    meta = GraphMetadata.from_props({p.key: p.value for p in graph.metadata_props})
    assert meta.head_piecewise_linear
    quantized = Counter(n.op_type for n in source.graph.node if n.op_type in QUANTIZED_OPS)
    assert quantized and Counter(n.op_type for n in graph.graph.node if n.op_type in QUANTIZED_OPS) >= quantized

    x = np.random.default_rng(1).standard_normal((3, 3, size, size)).astype(np.float32)
    class_index = np.array([-1, 2, 4], np.int64)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x, "class_index": class_index})))
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    error, scale = np.abs(out["logits"] - plain).max(), np.abs(plain).max()
    assert error <= (1e-4 if exact else 5e-2) * scale, f"max|Δ scores| = {error:.3g} (max|S| = {scale:.3g})"
    if "head_logits" in out:  # the head alone on the (dequantized) activations gives the same scores
        head = session.run(["head_logits"], {"input": x, "class_index": class_index,
                                             "head_activations": out["activations"]})[0]
        assert np.abs(head - out["logits"]).max() <= 1e-4 * scale
    # the levels the explanation graph quantized to, read with its quantizers as outputs (which
    # may change what onnxruntime fuses, and a level by one: the reference's scores are compared
    # within a level or two, the gradients at the contract's tolerance)
    with_levels = onnx.ModelProto()
    with_levels.CopyFrom(graph)
    names = [n for n in quantizer_outputs(source) if n in {o for node in graph.graph.node for o in node.output}]
    with_levels.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    session = ort.InferenceSession(with_levels.SerializeToString(), providers=["CPUExecutionProvider"])
    levels = dict(zip(names, session.run(names, {"input": x, "class_index": class_index})))
    int8 = set(_int8_quantizers(source))  # the graph holds their levels as uint8, shifted by 128
    levels = {n: v.astype(np.int16) - 128 if n in int8 and v.dtype == np.uint8 else v for n, v in levels.items()}

    a = torch.from_numpy(out["activations"]).requires_grad_()
    target = target_levels(source, meta.target_layer, a)  # the real activations of a quantized target as levels
    logits = head_scores(source, meta.target_layer, target, source.graph.output[0].name, levels)
    error = np.abs(logits.detach().numpy() - out["logits"]).max()  # a level or two apart, as above
    assert error <= 5e-2 * scale, f"the reference's scores: max|Δ| = {error:.3g} (max|S| = {scale:.3g})"
    logits[torch.arange(3), torch.from_numpy(out["target"])].sum().backward()
    want = a.grad.numpy().astype(np.float64)
    assert np.abs(want).max() > 0, "degenerate test: the reference gradient is all zeros"
    assert_gradients_close(out["gradients"], want)
    return meta


@pytest.mark.parametrize("kind", ["fake-quant", "static-s8", "static-u8", "dynamic", "qoperator-s8", "qoperator-u8"])
@pytest.mark.parametrize("where", ["early", "default"])
def test_gradients_are_straight_through(kind: str, where: str, tmp_path: Path) -> None:
    path = _quantized(kind, tmp_path, SmallNet(fake_quant=kind == "fake-quant"), 16)
    target = _early_target(onnx.load(str(path))) if where == "early" else None
    meta = _check(path, target, 16, exact=True)
    assert meta.straight_through or where == "default"  # the default target may have no quantizer after it
    if where == "early":  # `onnxcam info` says so
        graph = tmp_path / "model.cam.onnx"
        onnx.save(export(str(path), target, mean=[0, 0, 0], std=[1, 1, 1]), str(graph))
        shown = CliRunner().invoke(main, ["info", str(graph), "--json"])
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output)["gradients_straight_through"] is True


@pytest.mark.parametrize("kind", ["static-s8", "static-u8", "dynamic", "qoperator-s8", "qoperator-u8"])
def test_resnet18(kind: str, tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    path = _quantized(kind, tmp_path, torchvision.models.resnet18(weights=None), 224)
    meta = _check(path, None, 224, exact=kind != "static-s8")
    assert meta.target_layout.layout == "NCHW"
