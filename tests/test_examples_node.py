"""examples/node: the onnxruntime-node program's heatmap equals the Python runtime's.

Exports torchvision's resnet18 (random weights, 3x64x48 so height and width cannot be mixed up)
with ``--raw-input --heatmap gradcam``, writes a PNG at the model size, installs the example's
npm dependencies (``ONNXRUNTIME_NODE_INSTALL_CUDA=skip npm ci``, only when node_modules is
missing) and runs ``node explain.mjs``. Skips without node/npm unless ONNXCAM_REQUIRE_NODE=1,
which turns their absence (or a failed install) into a failure.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from onnxcam.cli.main import main
from onnxcam.runtime import Explainer
from onnxcam.runtime.postprocess import postprocess

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "examples" / "node"
DATA = Path(__file__).parent / "data"
REQUIRE = os.environ.get("ONNXCAM_REQUIRE_NODE") == "1"
H, W = 64, 48

pytestmark = pytest.mark.torch


def _need(condition: bool, reason: str) -> None:
    if condition:
        return
    if REQUIRE:
        pytest.fail(f"{reason} (ONNXCAM_REQUIRE_NODE=1)")
    pytest.skip(f"{reason}; set ONNXCAM_REQUIRE_NODE=1 to make this a failure")


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    _need(bool(node and npm), "node and npm are not on PATH")
    with _install_lock():  # pytest-xdist workers must not run `npm ci` in the same folder at once
        installed = all((NODE_DIR / "node_modules" / pkg / "package.json").is_file()
                        for pkg in ("onnxruntime-node", "pngjs"))
        if not installed:
            env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL_CUDA": "skip"}
            proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, env=env,
                                  capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, f"npm ci failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return node


@contextlib.contextmanager
def _install_lock():
    try:
        import fcntl
    except ImportError:  # not POSIX: no concurrent workers to guard against here
        yield
        return
    with open(Path(tempfile.gettempdir()) / "onnxcam-examples-node-npm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)  # torchvision's random init
    out = tmp_path_factory.mktemp("node") / "resnet18_raw.cam.onnx"
    result = CliRunner().invoke(main, ["export", "torchvision:resnet18", "-o", str(out), "--input-shape",
                                       f"3,{H},{W}", "--resize", "0", "--raw-input", "--heatmap", "gradcam"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The coffee photo at the model size, as PNG, and its pixels."""
    img = Image.open(DATA / "coffee.jpg").convert("RGB").resize((W, H), Image.BILINEAR)
    path = tmp_path_factory.mktemp("img") / "coffee.png"
    img.save(path)
    return path, np.asarray(img)


def run_node(node: str, graph: Path, image: Path, prefix: Path, *extra: str) -> dict:
    proc = subprocess.run([node, "explain.mjs", str(graph), str(image), str(prefix), *extra], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(Path(f"{prefix}.heatmap.json").read_text())


def explicit_class(explainer: Explainer, pixels: np.ndarray) -> int:
    """A class other than the top-1 whose Grad-CAM map is not all zero (random weights)."""
    logits = explainer.explain(pixels[None], method="gradcam").logits[0]
    for c in np.argsort(-logits)[1:]:
        if explainer.explain(pixels[None], method="gradcam", class_index=int(c)).heatmaps[0].std() > 0.01:
            return int(c)
    raise AssertionError("no class with a non-trivial Grad-CAM map")


@pytest.mark.parametrize("explicit", [False, True], ids=["top1", "explicit-class"])
def test_node_heatmap_equals_runtime(node: str, graph: Path, picture: tuple[Path, np.ndarray], tmp_path: Path,
                                     explicit: bool) -> None:
    image, pixels = picture
    explainer = Explainer(str(graph))
    class_index = explicit_class(explainer, pixels) if explicit else None
    extra = [] if class_index is None else ["--class", str(class_index)]
    out = run_node(node, graph, image, tmp_path / "out" / "coffee", *extra)

    res = explainer.explain(pixels[None], method="gradcam", class_index=class_index)
    heatmap = np.asarray(out["heatmap"], np.float32)
    assert heatmap.shape == (H, W) and out["size"] == [H, W]
    assert heatmap.std() > 0.01  # a real map, not a constant
    np.testing.assert_allclose(heatmap, res.heatmaps[0], rtol=0, atol=1e-4)
    # and the runtime's own numpy Grad-CAM post-processing (not the graph's baked heatmap)
    np.testing.assert_allclose(heatmap, postprocess(res.raw, (H, W))[0], rtol=0, atol=1e-4)
    assert out["target"] == int(res.class_index[0])
    if class_index is not None:
        assert out["target"] == class_index
    logits = np.asarray(out["logits"], np.float32)
    np.testing.assert_allclose(logits, res.logits[0], rtol=1e-4, atol=1e-5)
    assert out["top1"] == int(res.logits[0].argmax())
    assert out["top_logit"] == pytest.approx(float(res.logits[0].max()), rel=1e-4, abs=1e-5)
    assert out["method"] == "gradcam"
    for suffix in ("heatmap.png", "overlay.png"):
        with Image.open(tmp_path / "out" / f"coffee.{suffix}") as png:
            assert png.size == (W, H)


def test_node_refuses_a_graph_without_baked_heatmap(node: str, picture: tuple[Path, np.ndarray],
                                                    tmp_path: Path) -> None:
    proc = subprocess.run([node, "explain.mjs", str(DATA / "tiny.cam.onnx"), str(picture[0]), str(tmp_path / "x")],
                          cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--raw-input --heatmap" in proc.stderr.splitlines()[0]


def test_node_preprocesses_a_photo_as_the_runtime(node: str, graph: Path, tmp_path: Path) -> None:
    """A PNG of another size: the shared ``examples/js/onnxcam.mjs`` resizes it as Pillow does, so
    the heatmap equals the runtime's on its own preprocessing of the file."""
    photo = tmp_path / "coffee-odd.png"
    Image.open(DATA / "coffee.jpg").convert("RGB").resize((97, 130), Image.BICUBIC).save(photo)
    explainer = Explainer(str(graph))
    pixels, _ = explainer.prepare_one(str(photo))
    out = run_node(node, graph, photo, tmp_path / "out" / "odd")
    res = explainer.explain(pixels[None], method="gradcam")
    np.testing.assert_allclose(np.asarray(out["heatmap"], np.float32), res.heatmaps[0], rtol=0, atol=1e-4)
    assert out["target"] == int(res.class_index[0])
