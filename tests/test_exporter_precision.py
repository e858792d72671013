"""``export --precision fp16`` (``exporter.precision``): the forward pass in float16, the outputs
float32. On torchvision's resnet18 (random weights, calibrated BatchNorm): gradients within 1e-2
(relative to max|g|) of float64 torch.autograd at the graph's own activations, and Grad-CAM++ maps
within 1e-2 of the float64 reference map and of the float32 graph's; an fp32 ONNX source converts
the same way, an fp16 one is refused with one line."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxconverter_common")

import onnxruntime as ort  # noqa: E402
from cli_helpers import run_cli  # noqa: E402
from test_exporter_torchvision import calibrate_batchnorm  # noqa: E402

from onnxcam.exporter import ExportError, export  # noqa: E402
from onnxcam.exporter.verify import torch_reference  # noqa: E402
from onnxcam.runtime.methods import closed_form  # noqa: E402
from onnxcam.runtime.postprocess import postprocess  # noqa: E402

NAMES = ["logits", "target", "activations", "gradients", "gradients_pow2", "gradients_pow3"]
LAYER4_OUTPUT = "/layer4/layer4.1/relu_1/Relu_output_0"  # torch.onnx's name for layer4's output


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    calibrate_batchnorm(model, 224)
    return model.eval()


def run(graph: onnx.ModelProto, x: np.ndarray, class_index: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(NAMES, session.run(NAMES, {session.get_inputs()[0].name: x, "class_index": class_index})))


def gradcam_plusplus(A: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The Grad-CAM++ map, post-processed, from A and g (g2, g3 = g², g³: a piecewise-linear head)."""
    return postprocess(closed_form("gradcam++", A, g, g ** 2, g ** 3), (224, 224))


def test_fp16_gradients_and_gradcam_plusplus_maps(resnet18) -> None:
    half = export(resnet18, "layer4", input_shape=(3, 224, 224), precision="fp16")
    inputs = {i.name for i in half.graph.input}  # head_activations stays the contract's float32 input
    weights = [i for i in half.graph.initializer if len(i.dims) == 4 and i.name not in inputs]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)  # the convolutions are fp16
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    class_index = np.array([-1, 7, 409], np.int64)
    out = run(half, x, class_index)
    assert all(out[n].dtype == np.float32 for n in NAMES if n != "target")

    reference = torch_reference(copy.deepcopy(resnet18).double(), "layer4", 0, x.astype(np.float64), class_index,
                                out["activations"].astype(np.float64))
    for name in ("logits", "gradients"):
        scale = np.abs(reference[name]).max()
        assert np.abs(out[name] - reference[name]).max() <= 1e-2 * scale, name
    assert (out["target"] == reference["target"]).all()

    ours = gradcam_plusplus(out["activations"], out["gradients"])
    exact = gradcam_plusplus(reference["activations"], reference["gradients"])
    assert np.abs(ours - exact).max() <= 1e-2
    fp32 = run(export(resnet18, "layer4", input_shape=(3, 224, 224)), x, class_index)
    assert np.abs(ours - gradcam_plusplus(fp32["activations"], fp32["gradients"])).max() <= 1e-2


def test_an_onnx_source_converts_and_an_fp16_one_is_refused(resnet18, tmp_path: Path) -> None:
    path = tmp_path / "r18.onnx"
    torch.onnx.export(resnet18, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}}, opset_version=17)
    half = export(str(path), LAYER4_OUTPUT, precision="fp16")
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    out = run(half, x, np.array([-1], np.int64))
    fp32 = run(export(str(path), LAYER4_OUTPUT), x, np.array([-1], np.int64))
    assert np.abs(out["gradients"] - fp32["gradients"]).max() <= 1e-2 * np.abs(fp32["gradients"]).max()
    from onnxconverter_common.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(path), keep_io_types=True), tmp_path / "half.onnx")
    with pytest.raises(ExportError, match="converts float32 classifiers"):
        export(str(tmp_path / "half.onnx"), LAYER4_OUTPUT, precision="fp16")


def test_the_cli_takes_precision(tmp_path: Path) -> None:
    out = tmp_path / "r18.cam.onnx"
    result = run_cli("export", "torchvision:resnet18", "-o", out, "--input-shape", "3,64,64", "--precision", "fp16")
    assert result.exit_code == 0, result.stderr
    graph = onnx.load(out).graph
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    bad = run_cli("export", "torchvision:resnet18", "-o", tmp_path / "x.cam.onnx", "--precision", "fp8")
    assert bad.exit_code == 2 and "fp8" in bad.stderr
