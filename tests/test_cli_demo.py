"""`onnxcam demo`: export efficientnet-lite0 into a fresh cache, explain scikit-image's photos.

The full run needs the export extra and scikit-image (skipped without them); the message for a
missing extra is tested torch-free in test_cli_explain.py (imports blocked in a subprocess).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxcam.cli.main import main

FAST_METHODS = "gradcam,gradcam++,eigencam,ablationcam"  # Score-CAM is the slow one; `make demo` runs it


def run(*args):
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


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
    pytest.importorskip("onnx")
    pytest.importorskip("skimage")
    pytest.importorskip("efficientnet_lite_pytorch")
    from PIL import Image

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    result = run("demo", "--out", out, "--methods", FAST_METHODS)
    assert result.exit_code == 0, result.output
    cached = list((tmp_path / "cache" / "onnxcam").glob("efficientnet-lite0-*.cam.onnx"))
    assert len(cached) == 1 and "exported in" in result.stdout

    rows = summary(result.stdout)
    assert list(rows) == ["chelsea", "coffee", "astronaut", "rocket"]
    assert rows["coffee"][1:3] == ["967", "espresso"] and float(rows["coffee"][3]) > 0.5

    methods = FAST_METHODS.split(",")
    comparison = out / "comparison.png"
    with Image.open(comparison) as im:
        assert im.width >= (1 + len(methods)) * 200 and im.height >= 4 * 170
        assert im.getextrema() != ((255, 255), (255, 255), (255, 255))
    assert comparison.stat().st_size > 100_000
    for photo in ("chelsea", "coffee", "astronaut", "rocket"):
        with Image.open(out / "photos" / f"{photo}.png") as original:
            size = original.size
        for m in methods:
            with Image.open(out / f"{photo}.{m}.png") as overlay:
                assert overlay.size == size

    start = time.perf_counter()
    again = run("demo", "--out", out, "--methods", "gradcam")
    assert again.exit_code == 0, again.output
    assert "(cached;" in again.stdout and summary(again.stdout)["coffee"][2] == "espresso"
    assert time.perf_counter() - start < 30
