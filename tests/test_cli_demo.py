"""`onnxcam demo`: export efficientnet-lite0 into a fresh cache, explain scikit-image's photos.

One cached graph (``--input-gradients both``) serves the CAM overlays and the Guided Grad-CAM /
Integrated Gradients pictures; a cached graph without the input-gradient outputs or without their
switch is exported again.

The full run needs the export extra and scikit-image (skipped without them); the message for a
missing extra is tested torch-free in test_cli_explain.py (imports blocked in a subprocess).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from cli_helpers import run_cli as run  # noqa: E402

FAST_METHODS = "gradcam,gradcam++,eigencam,ablationcam"  # Score-CAM is the slow one; `make demo` runs it
INPUT_METHODS = "guided-gradcam,integrated-gradients"  # input-space pictures


def summary(stdout: str) -> dict[str, list[str]]:
    rows, lines = {}, stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == ["photo", "top1", "label", "score"])
    for line in lines[start + 2:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_demo_exports_once_and_writes_the_comparison(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("skimage")
    pytest.importorskip("efficientnet_lite_pytorch")
    import numpy as np
    from PIL import Image

    import onnxcam.exporter
    from onnxcam.cli.demo_cmd import cached_model_path

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with_ig = cached_model_path()
    assert with_ig.parent == tmp_path / "cache" / "onnxcam"
    out = tmp_path / "demo"
    result = run("demo", "--out", out, "--methods", f"{FAST_METHODS},{INPUT_METHODS}")
    assert result.exit_code == 0, result.output
    cached = sorted((tmp_path / "cache" / "onnxcam").glob("efficientnet-lite0-*.cam.onnx"))
    assert cached == [with_ig] and result.stdout.count("exported in") == 1
    graph = onnx.load(str(with_ig), load_external_data=False)
    assert {"input_gradients", "guided_gradients"} <= {o.name for o in graph.graph.output}
    assert {"input_gradients_enabled", "guided_gradients_enabled"} <= {i.name for i in graph.graph.input}
    assert "integrated-gradients: " in result.stdout and "steps x 4 photos" in result.stdout

    rows = summary(result.stdout)
    assert list(rows) == ["chelsea", "coffee", "astronaut", "rocket"]
    assert rows["coffee"][1:3] == ["967", "espresso"] and float(rows["coffee"][3]) > 0.5

    methods = FAST_METHODS.split(",")
    comparison = out / "comparison.png"
    with Image.open(comparison) as im:
        assert im.width >= (1 + len(methods) + 2) * 200 and im.height >= 4 * 170
        assert im.getextrema() != ((255, 255), (255, 255), (255, 255))
    assert comparison.stat().st_size > 100_000
    for photo in ("chelsea", "coffee", "astronaut", "rocket"):
        with Image.open(out / "photos" / f"{photo}.png") as original:
            size = original.size
        for m in methods:
            with Image.open(out / f"{photo}.{m}.png") as overlay:
                assert overlay.size == size
        # input-space pictures at the model input (224x224 centre crop), as `onnxcam explain` writes them
        with Image.open(out / f"{photo}.guided-gradcam.png") as im:
            guided = np.asarray(im.convert("RGB"), np.float32)
        assert guided.shape == (224, 224, 3) and 5 < guided.std() and 100 < guided.mean() < 160  # grey = 0
        with Image.open(out / f"{photo}.integrated-gradients.png") as im:
            signed = np.asarray(im.convert("RGB"), np.int32)
        assert signed.shape == (224, 224, 3)
        red = (signed[..., 0] - signed[..., 2] > 60).mean()  # diverging map: red +, blue −
        blue = (signed[..., 2] - signed[..., 0] > 60).mean()
        assert red > 0.01 and blue > 0.01 and len(np.unique(signed.reshape(-1, 3), axis=0)) > 50

    # A cached graph without the input-gradient outputs, or with them but without their switch,
    # is exported again (here by a stand-in exporter that copies the good graph back: no second
    # real export).
    good = tmp_path / "good-ig.cam.onnx"
    good.write_bytes(with_ig.read_bytes())
    without_outputs = onnx.load(str(good))
    del without_outputs.graph.output[-2:]
    without_switch = onnx.load(str(good))
    kept = [p for p in without_switch.metadata_props if p.key != "onnxcam.input_gradient_switches"]
    del without_switch.metadata_props[:]
    without_switch.metadata_props.extend(kept)
    calls = []

    def fake_export(model, out, overwrite=False, **kwargs):
        calls.append((model, kwargs))
        Path(out).write_bytes(good.read_bytes())

    monkeypatch.setattr(onnxcam.exporter, "export", fake_export)
    for stale_graph, why in ((without_outputs, "input_gradients"), (without_switch, "_enabled switch")):
        onnx.save(stale_graph, str(with_ig))
        calls.clear()
        stale = run("demo", "--out", out, "--methods", "gradcam", "--overwrite")
        assert stale.exit_code == 0, stale.output
        assert "unusable" in stale.output + stale.stderr and why in stale.output + stale.stderr
        assert calls == [("efficientnet-lite0", {"input_gradients": "both"})]
        assert with_ig.read_bytes() == good.read_bytes()
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    start = time.perf_counter()
    refused = run("demo", "--out", out, "--methods", "gradcam")  # the first run's files are kept
    assert refused.exit_code == 2 and "exists; pass --overwrite" in refused.stderr
    again = run("demo", "--out", out, "--methods", "gradcam", "--overwrite")
    assert again.exit_code == 0, again.output
    assert "(cached;" in again.stdout and summary(again.stdout)["coffee"][2] == "espresso"
    assert time.perf_counter() - start < 30
