"""fp16 classifiers (onnxconverter-common's ``convert_float_to_float16``, fp16 input and scores):
the exporter probes with the model's own dtypes, the reverse pass runs in the model's dtype and
the graph's ``activations`` / ``gradients`` / powers come out float32; the gradients are within
1e-2·max|g| of float64 torch.autograd at the graph's own activations (fp16 keeps ~3 digits)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
onnx = pytest.importorskip("onnx")
float16 = pytest.importorskip("onnxconverter_common.float16")

import onnxruntime as ort  # noqa: E402
from test_exporter_torchvision import calibrate_batchnorm  # noqa: E402

from PIL import Image  # noqa: E402

from onnxcam.exporter import export  # noqa: E402
from onnxcam.runtime import Explainer  # noqa: E402
from onnxcam.exporter.verify import torch_reference  # noqa: E402

LAYER4_OUTPUT = "/layer4/layer4.1/relu_1/Relu_output_0"  # torch.onnx's name for layer4's output


@pytest.mark.parametrize("keep_io_types", [False, True], ids=["fp16 input", "fp16 inside"])
def test_fp16_resnet18_gradients(keep_io_types: bool, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    calibrate_batchnorm(model, 224)
    torch.onnx.export(model.eval(), (torch.randn(1, 3, 224, 224),), str(tmp_path / "float.onnx"), dynamo=False,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "N"}},
                      opset_version=17)
    half = float16.convert_float_to_float16(onnx.load(str(tmp_path / "float.onnx")), keep_io_types=keep_io_types)
    onnx.save(half, str(tmp_path / "half.onnx"))
    graph = export(str(tmp_path / "half.onnx"), LAYER4_OUTPUT)

    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    image_type = np.float32 if keep_io_types else np.float16
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(image_type)
    class_index = np.array([-1, 7, 409], np.int64)
    names = ["logits", "target", "activations", "gradients", "gradients_pow3"]
    out = dict(zip(names, session.run(names, {session.get_inputs()[0].name: x, "class_index": class_index})))
    assert all(out[n].dtype == np.float32 for n in ("logits", "activations", "gradients", "gradients_pow3"))

    model64 = copy.deepcopy(model).double()
    reference = torch_reference(model64, "layer4", 0, x.astype(np.float64), class_index,
                                out["activations"].astype(np.float64))
    logit_scale = np.abs(reference["logits"]).max()
    assert np.abs(out["logits"] - reference["logits"]).max() <= 1e-2 * logit_scale
    scale = np.abs(reference["gradients"]).max()
    assert scale > 0
    assert np.abs(out["gradients"] - reference["gradients"]).max() <= 1e-2 * scale
    np.testing.assert_allclose(out["gradients_pow3"], out["gradients"].astype(np.float64) ** 3, rtol=1e-5, atol=1e-30)
    chosen = out["target"]
    assert (chosen[1:] == class_index[1:]).all()

    onnx.save(graph, str(tmp_path / "half.cam.onnx"))  # the runtime feeds the image input's own dtype
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(photo)
    heatmap = Explainer(tmp_path / "half.cam.onnx").explain(str(photo), "gradcam++").heatmaps[0]
    assert heatmap.shape == (224, 224) and np.isfinite(heatmap).all() and heatmap.max() > 0
