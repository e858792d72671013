"""`onnxcam info` on the committed fixtures. Torch-free: no torch / onnx imports here."""
from __future__ import annotations

import json
from pathlib import Path


from cli_helpers import run_cli as run  # noqa: E402

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny.cam.onnx"


def test_info_describes_the_graph() -> None:
    result = run("info", TINY)
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in text.splitlines()
             if ":" in line and not line.startswith("  ")}
    assert lines["source"] == "make_tiny:build"
    assert lines["target layer"] == "features"
    assert "input        float    [batch, 3, 32, 32]" in text
    assert "class_index  int64    [N]" in text
    for name, shape in [("logits", "[N, 10]"), ("target", "[N]"), ("activations", "[N, 16, 16, 16]"),
                        ("gradients", "[N, 16, 16, 16]"), ("gradients_pow2", "[N, 16, 16, 16]"),
                        ("gradients_pow3", "[N, 16, 16, 16]")]:
        assert any(line.split() and line.split()[0] == name and line.endswith(shape) for line in text.splitlines()), name
    assert lines["preprocessing"].startswith("NCHW RGB, short side → 36, centre crop 32x32")
    assert "mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]" in lines["preprocessing"]
    assert lines["classes"] == "10; labels: 10 class names"
    assert lines["input gradients"] == "none"
    assert lines["piecewise linear"].startswith("yes")
    assert lines["ablationcam head"] == "present (head_activations → head_logits)"
    assert lines["providers"] == "CPUExecutionProvider"
    assert "scorecam" in lines["methods"] and "ablationcam" in lines["methods"]


def test_info_json() -> None:
    result = run("info", TINY, "--json", "--providers", "cpu")
    assert result.exit_code == 0, result.stderr
    d = json.loads(result.stdout)
    assert d["format"] == "1" and d["source"] == "make_tiny:build" and d["target_layer"] == "features"
    assert d["image_input"] == "input"
    assert [i["name"] for i in d["inputs"]] == ["input", "class_index"]
    assert {o["name"] for o in d["outputs"]} >= {"logits", "target", "activations", "gradients",
                                                 "gradients_pow2", "gradients_pow3"}
    assert d["preprocess"] == {"layout": "NCHW", "color": "RGB", "size": [32, 32], "resize": 36,
                               "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert d["num_classes"] == 10 and d["labels"] == 10
    assert d["head_piecewise_linear"] is True and d["ablationcam_head"] is True
    assert d["providers"] == ["CPUExecutionProvider"]


def test_info_on_a_plain_model_says_how_to_make_one() -> None:
    result = run("info", DATA / "plain.onnx")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "onnxcam export" in lines[0] and "not an onnxcam explanation graph" in lines[0]


def test_info_on_a_missing_file(tmp_path) -> None:
    result = run("info", tmp_path / "nope.cam.onnx")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.cam.onnx'}: no such model file"
