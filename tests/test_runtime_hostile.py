"""The runtime against tampered models and odd numbers: a graph whose metadata is inconsistent is
refused when it is loaded (one line, exit 2 in the CLI, before any image is read); non-finite
inputs and non-integer classes are refused; heatmaps are never NaN."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli
from onnxcam.runtime import ClassIndexError, Explainer, ModelError

TINY = Path(__file__).parent / "data" / "tiny.cam.onnx"
GOOD = {"layout": "NCHW", "color": "RGB", "size": [32, 32], "resize": 36, "scale": 1 / 255,
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def tampered(tmp_path: Path, **props: str) -> Path:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(TINY))
    meta = {p.key: p.value for p in model.metadata_props} | props
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "tampered.cam.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("change,needle", [
    ({"size": [0, 32]}, "size must be an integer"), ({"size": [-3, 32]}, "size must be an integer"),
    ({"resize": 0}, "resize"), ({"resize": 10**9}, "resize"), ({"mean": [0.5, 0.5]}, "mean and std"),
    ({"std": [0, 1, 1]}, "zeros"), ({"scale": float("nan")}, "scale"), ({"size": [16, 32]}, "does not fit"),
    ({"mean": [0.5], "std": [1.0]}, "does not fit"),
])
def test_tampered_preprocessing_is_refused_at_load(tmp_path: Path, change: dict, needle: str) -> None:
    path = tampered(tmp_path, **{"onnxcam.preprocess": json.dumps({**GOOD, **change})})
    with pytest.raises(ModelError, match=needle):
        Explainer(path)
    photo = tmp_path / "a.png"
    Image.new("RGB", (40, 40)).save(photo)
    r = run_cli("explain", path, photo, "--out", tmp_path / "o")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert not (tmp_path / "o").exists()  # nothing was touched


@pytest.mark.parametrize("props,needle", [
    ({"onnxcam.image_input": "class_index"}, "image input 'class_index' not found"),
    ({"onnxcam.labels": json.dumps(["cat"] * 9)}, "9 names for 10 classes"),
    ({"onnxcam.labels": "{"}, "not valid JSON"),
    ({"onnxcam.head_piecewise_linear": "maybe"}, "'true' or 'false'"),
    ({"onnxcam.raw_input": "true"}, "not uint8"),
    ({"onnxcam.heatmap_method": "gradcam"}, "no 'heatmap' output"),
    ({"onnxcam.input_gradient_switches": json.dumps({"input_gradients": "input_gradients_enabled"})},
     "does not have"),
    ({"onnxcam.format": "2"}, "format '2' is not supported"),
])
def test_inconsistent_metadata_is_refused_at_load(tmp_path: Path, props: dict, needle: str) -> None:
    with pytest.raises(ModelError, match=needle):
        Explainer(tampered(tmp_path, **props))


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(TINY, providers=["CPUExecutionProvider"])


def test_non_finite_inputs_are_refused(explainer: Explainer) -> None:
    x = np.zeros((2, 3, 32, 32), np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        x[1, 0, 3, 3] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            explainer.explain(x)


@pytest.mark.parametrize("value", [True, 3.7, "3", 2**70, [1.5, 2], np.array([1.0, 2.0]), [True, 1]])
def test_class_index_must_be_integers_in_range(explainer: Explainer, value) -> None:
    with pytest.raises(ClassIndexError):
        explainer.explain(np.zeros((2, 3, 32, 32), np.float32), class_index=value)


def test_integer_classes_of_every_form_are_taken(explainer: Explainer) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for value in (3, np.int64(3), np.array(3), [3, 3], np.array([3, 3], np.uint8)):
        assert explainer.explain(x, class_index=value).class_index.tolist() == [3, 3]


def test_heatmaps_are_never_nan(explainer: Explainer) -> None:
    """Huge (finite) inputs overflow float32 inside the network; the maps must stay in [0, 1]."""
    x = np.full((1, 3, 32, 32), 3e38, np.float32)
    for method in ("gradcam", "gradcam++", "layercam", "eigencam"):
        heatmaps = explainer.explain(x, method=method).heatmaps
        assert np.isfinite(heatmaps).all() and heatmaps.min() >= 0 and heatmaps.max() <= 1
