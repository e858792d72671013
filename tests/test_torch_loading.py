"""onnxcam.exporter.torch_loading: SOURCE forms, --weights files and one-line errors."""
from __future__ import annotations

import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torch import nn  # noqa: E402

from onnxcam.exporter.errors import ExportError  # noqa: E402
from onnxcam.exporter.torch_loading import load_torch_source, resolve_target_module  # noqa: E402
from onnxcam.models.labels import imagenet_labels  # noqa: E402
from onnxcam.models.preprocess import IMAGENET  # noqa: E402

pytestmark = pytest.mark.torch


def _error(source: str, weights: str | None = None) -> str:
    with pytest.raises(ExportError) as info:
        load_torch_source(source, weights)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def r18_10class(tmp_path_factory):
    """A fine-tuned-looking resnet18 (10 classes) and its state_dict saved several ways."""
    d = tmp_path_factory.mktemp("weights")
    model = torchvision.models.resnet18(num_classes=10).eval()
    state = model.state_dict()
    files = {
        "plain": d / "plain.pth",
        "wrapped": d / "wrapped.pt",
        "ddp": d / "ddp.pth",
        "whole": d / "whole.pt",
    }
    torch.save(state, files["plain"])
    torch.save({"state_dict": state, "epoch": 7, "optimizer": {}}, files["wrapped"])
    torch.save({"model": {"module." + k: v for k, v in state.items()}}, files["ddp"])
    torch.save(model, files["whole"])
    return model, files


# ---------------------------------------------------------------- source forms


def test_torchvision_source() -> None:
    src = load_torch_source("torchvision:resnet18")
    assert isinstance(src.module, torchvision.models.ResNet) and not src.module.training
    assert src.source == "torchvision:resnet18"
    assert src.default_target_layer == "layer4"
    assert src.preprocess == IMAGENET and src.input_size == (3, 224, 224)
    assert src.labels == imagenet_labels()


def test_torchvision_inception_preprocess() -> None:
    src = load_torch_source("torchvision:inception_v3")
    assert (src.preprocess.size, src.preprocess.resize) == ((299, 299), 342)
    assert src.input_size == (3, 299, 299) and src.default_target_layer == "Mixed_7c"


def test_timm_sources() -> None:
    pytest.importorskip("timm")
    r18 = load_torch_source("timm:resnet18")
    assert r18.preprocess.resize == 235  # floor(224 / crop_pct 0.95), as timm's eval transform
    assert r18.default_target_layer == "layer4" and r18.labels == imagenet_labels()
    vit = load_torch_source("timm:vit_tiny_patch16_224")
    assert vit.preprocess.mean == (0.5, 0.5, 0.5) and vit.preprocess.std == (0.5, 0.5, 0.5)
    assert vit.default_target_layer == "blocks.11.norm1"


def test_registry_source_with_weights_override(tmp_path) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    src = load_torch_source("EfficientNet_Lite0")
    assert src.source == "efficientnet-lite0" and src.default_target_layer == "_head_act"
    assert src.labels == imagenet_labels() and src.preprocess.mean[0] == pytest.approx(127 / 255)
    state = {k: v.clone() for k, v in src.module.state_dict().items()}
    state["_fc.bias"].fill_(0.25)
    torch.save(state, tmp_path / "lite0.pth")
    tuned = load_torch_source("efficientnet-lite0", str(tmp_path / "lite0.pth"))
    assert torch.all(tuned.module._fc.bias == 0.25)


def _write_module(tmp_path, monkeypatch, body: str) -> None:
    (tmp_path / "onnxcam_test_models.py").write_text(textwrap.dedent(body))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "onnxcam_test_models", raising=False)


def test_callable_source_found_in_cwd(tmp_path, monkeypatch) -> None:
    _write_module(tmp_path, monkeypatch, """
        import torch.nn as nn
        def gray():
            return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).train()
        def broken():
            return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(5, 2))
        def not_a_module():
            return [1, 2]
        def explodes():
            raise RuntimeError("no GPU here")
    """)
    src = load_torch_source("onnxcam_test_models:gray")
    assert not src.module.training and src.labels is None
    assert src.input_size == (1, 224, 224) and src.preprocess.channels == 1
    assert src.default_target_layer == "3"  # the second ReLU: last spatial map before pooling
    broken = load_torch_source("onnxcam_test_models:broken")  # loads; only the search fails
    with pytest.raises(ExportError, match="cannot find a default target layer.*target_layer="):
        broken.default_target_layer
    assert "returned a list, not a torch.nn.Module" in _error("onnxcam_test_models:not_a_module")
    assert "RuntimeError: no GPU here" in _error("onnxcam_test_models:explodes")
    assert "has no attribute 'nope'" in _error("onnxcam_test_models:nope")


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize("form", ["plain", "wrapped", "ddp", "whole"])
def test_weights_forms_and_fine_tuned_head(r18_10class, form: str) -> None:
    model, files = r18_10class
    src = load_torch_source("torchvision:resnet18", str(files[form]))
    assert src.module.fc.out_features == 10 and src.labels is None
    for key, value in model.state_dict().items():
        assert torch.equal(src.module.state_dict()[key], value), key
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(src.module(x), model(x))


def test_weights_errors(tmp_path) -> None:
    assert _error("torchvision:resnet18", str(tmp_path / "nope.pth")) == (
        f"weights file not found: {tmp_path / 'nope.pth'}")
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    msg = _error("torchvision:resnet18", str(tmp_path / "r34.pth"))
    assert "do not match the model" in msg and "unexpected keys (layer1.2.conv1.weight" in msg
    mobilenet = torchvision.models.mobilenet_v3_small().state_dict()
    torch.save({k: v for k, v in mobilenet.items() if not k.startswith("classifier.3")}, tmp_path / "mb.pth")
    msg = _error("torchvision:mobilenet_v3_small", str(tmp_path / "mb.pth"))
    assert "2 missing keys (classifier.3.weight, classifier.3.bias)" in msg
    widened = dict(mobilenet, **{"features.0.0.weight": torch.zeros(16, 4, 3, 3)})
    torch.save(widened, tmp_path / "wide.pth")
    msg = _error("torchvision:mobilenet_v3_small", str(tmp_path / "wide.pth"))
    assert "shape mismatches (features.0.0.weight: file (16, 4, 3, 3) vs model (16, 3, 3, 3))" in msg
    (tmp_path / "text.pth").write_text("not a checkpoint")
    assert "cannot read weights file" in _error("torchvision:resnet18", str(tmp_path / "text.pth"))
    torch.save([1, 2, 3], tmp_path / "list.pth")
    assert "holds no state_dict (found a list)" in _error("torchvision:resnet18", str(tmp_path / "list.pth"))


# ---------------------------------------------------------------- source errors


def test_unknown_torchvision_name_suggests_close_matches() -> None:
    msg = _error("torchvision:resnet51")
    assert msg.startswith("unknown torchvision model 'resnet51'; did you mean") and "resnet50" in msg
    assert "not an image classifier" in _error("torchvision:fasterrcnn_resnet50_fpn")


def test_timm_missing_and_unknown(monkeypatch) -> None:
    pytest.importorskip("timm")
    assert "unknown timm model 'resnet5O'; did you mean resnet50" in _error("timm:resnet5O")
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    assert _error("timm:resnet18") == "timm is not installed: pip install 'onnxcam[timm]'"


def test_unknown_source_and_registry_name_list_known_names() -> None:
    msg = _error("efficientnet-lite")
    assert "did you mean efficientnet-lite0?" in msg and "torchvision:NAME" in msg
    assert "cannot import module 'no_such_pkg.models'" in _error("no_such_pkg.models:build")
    assert _error("net.onnx") == "net.onnx is an ONNX file, not a torch source"


def test_resolve_target_module() -> None:
    model = torchvision.models.resnet18().eval()
    assert resolve_target_module(model, "layer4.1") is model.layer4[1]
    with pytest.raises(ExportError) as info:
        resolve_target_module(model, "layer5")
    assert str(info.value) == (
        "unknown target layer 'layer5'; did you mean layer4, layer3, layer2?; "
        "spatial layers (last first): layer4, layer3, layer2, layer1, maxpool")
    holder = nn.Module()
    holder.blocks = nn.ModuleList([nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)])
    with pytest.raises(ExportError, match="is a ModuleList, which never runs itself.*blocks.1"):
        resolve_target_module(holder, "blocks")
