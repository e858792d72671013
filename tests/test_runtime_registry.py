"""The method registry: adding a method is one function and one entry, and every part of onnxcam
sees it (the Explainer, `explain --method`, `info`). Torch-free (base install)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli
from onnxcam.models.formulas import FORMULAS
from onnxcam.runtime import METHODS, Explainer, MethodSpec, register_method
from onnxcam.runtime.registry import KINDS, PICTURES, method_names
from onnxcam.runtime.postprocess import postprocess

TINY = Path(__file__).parent / "data" / "tiny.cam.onnx"


def channel_mean(A, g=None, g2=None, g3=None) -> np.ndarray:
    """The toy method: map = mean_k A_k."""
    return np.asarray(A, np.float32).mean(axis=1)


@pytest.fixture()
def toy_method():
    spec = register_method(MethodSpec("channel-mean", "cam", "mean of the activations over channels",
                                      cam=channel_mean, reads=("activations",), family=False))
    yield spec
    del METHODS[spec.name]


def test_a_registered_method_is_seen_everywhere(toy_method, tmp_path) -> None:
    ex = Explainer(TINY, providers=["CPUExecutionProvider"])
    assert "channel-mean" in ex.available_methods
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    res = ex.explain(x, method="channel-mean")
    activations = ex.run_graph(["activations"], x, np.full(2, -1, np.int64))[0]
    np.testing.assert_allclose(res.heatmaps, postprocess(activations.mean(axis=1), (32, 32)), atol=1e-6)

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(photo)
    explained = run_cli("explain", TINY, photo, "--method", "channel-mean", "--out", tmp_path / "out")
    assert explained.exit_code == 0, explained.stderr
    assert (tmp_path / "out" / "photo.channel-mean.png").is_file()
    info = run_cli("info", TINY, "--json")
    assert "channel-mean" in json.loads(info.stdout)["methods"]
    assert "channel-mean" in run_cli("explain", "--help").stdout


def test_unknown_methods_are_refused_with_the_registry_list() -> None:
    result = run_cli("explain", TINY, "x.png", "--method", "gradcam+++")
    assert result.exit_code == 2 and "choose from gradcam, gradcam++" in result.stderr


def test_registry_entries_are_consistent() -> None:
    assert set(FORMULAS) <= set(METHODS)                    # every closed-form formula has an entry
    assert method_names(bakeable=True) == tuple(FORMULAS)
    assert method_names(family=True) == ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam",
                                         "gradcam-elementwise", "eigencam", "eigengradcam", "scorecam", "ablationcam")
    for spec in METHODS.values():
        assert spec.kind in KINDS and spec.picture in PICTURES and spec.summary
        assert (spec.kind == "input") == (spec.picture != "overlay")
    with pytest.raises(ValueError, match="already registered"):
        register_method(METHODS["gradcam"])
