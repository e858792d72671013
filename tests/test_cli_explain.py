"""`onnxcam explain` on the committed tiny fixture (tests/data/tiny.cam.onnx).

Torch-free on purpose: nothing here imports torch or onnx, so these tests run unchanged in the
base-install virtual environment (numpy, onnxruntime, Pillow, click, tqdm).
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli as run

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny.cam.onnx"
PLAIN = DATA / "plain.onnx"
LABELS = ["apple", "bicycle", "cloud", "dolphin", "espresso", "fern", "guitar", "harbour", "igloo", "jellyfish"]
TABLE_HEADER = ["file", "top1", "label", "score", "explained", "files", "written"]


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def table_rows(result) -> dict[str, list[str]]:
    """The summary table's rows by file (split on runs of 2+ spaces)."""
    import re

    lines = result.stdout.splitlines()
    assert lines[0].split() == TABLE_HEADER, result.stdout
    rows = {}
    for line in lines[2:]:
        if line.startswith("explained "):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return rows


def photo(path: Path, size=(60, 45), seed=0, mode="RGB") -> Path:
    """A smooth random picture (W, H) = size, saved in the format of path's extension."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / (3 + c) + rng.uniform(0, 6)) + np.cos(yy / (4 + c)) for c in range(3)], -1)
    pixels = np.clip((base + 2) / 4 * 255 + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def huge_png(path: Path, width: int = 10_000, height: int = 10_000) -> Path:
    """A PNG whose header claims width x height pixels (100 Mpx) with next to no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    d = tmp_path / "in"
    d.mkdir()
    return [photo(d / "wide.jpg", (90, 45), 1), photo(d / "tall.png", (41, 77), 2),
            photo(d / "grey.png", (50, 50), 3, mode="L")]


def test_fixture_is_small_and_an_explanation_graph() -> None:
    assert TINY.stat().st_size < 300_000
    assert (DATA / "make_tiny.py").is_file()


def test_happy_path_writes_overlays_of_the_original_size_and_prints_a_table(tmp_path, photos) -> None:
    out = tmp_path / "out"
    result = run("explain", TINY, *photos, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert error_lines(result) == []
    rows = table_rows(result)
    assert set(rows) == {str(p) for p in photos}
    for p in photos:
        target = out / f"{p.stem}.gradcam.png"
        with Image.open(target) as overlay, Image.open(p) as original:
            assert overlay.size == original.size and overlay.mode == "RGB"
        file, top1, label, score, explained, written = rows[str(p)]
        assert label == LABELS[int(top1)] and explained == top1
        assert 0.0 < float(score) <= 1.0
        assert written == target.name
    assert sorted(f.name for f in out.iterdir()) == sorted(f"{p.stem}.gradcam.png" for p in photos)
    assert result.stdout.splitlines()[-1].startswith("explained 3 of 3 inputs with gradcam: 3 files in ")


def test_overlay_maps_the_heatmap_back_through_resize_and_crop(tmp_path) -> None:
    """A 90x45 grey photo → short side 36 (72x36) → centre crop 32x32 at left 20: the photo's
    outer columns were never seen, so their heatmap is 0 there (turbo's first colour, blended 50/50)."""
    src = tmp_path / "flat.png"
    Image.new("RGB", (90, 45), (128, 128, 128)).save(src)
    out = tmp_path / "out"
    assert run("explain", TINY, src, "--out", out, "--save-npy").exit_code == 0
    with Image.open(out / "flat.gradcam.png") as im:
        pixels = np.asarray(im, dtype=np.int16)
    turbo0 = np.array([0x30, 0x12, 0x3B])
    expected = np.rint(0.5 * 128 + 0.5 * turbo0)
    for x in (0, 1, 88, 89):
        assert np.abs(pixels[:, x] - expected).max() <= 1, x
    heatmap = np.load(out / "flat.gradcam.npy")
    assert heatmap.shape == (32, 32) and heatmap.dtype == np.float32


def test_several_methods_come_from_one_graph_run_per_batch(tmp_path, photos, monkeypatch) -> None:
    from onnxcam.runtime import Explainer

    calls = []
    original = Explainer.explain_many

    def counting(self, x, methods=("gradcam",), class_index=None):
        calls.append((len(x), tuple(methods)))
        return original(self, x, methods=methods, class_index=class_index)

    monkeypatch.setattr(Explainer, "explain_many", counting)
    out = tmp_path / "out"
    methods = ["gradcam", "gradcam++", "eigencam", "scorecam", "ablationcam"]
    result = run("explain", TINY, *photos, "--out", out, "-m", "gradcam,gradcam++", "--method", "eigencam",
                 "-m", "scorecam", "-m", "ablationcam", "--batch-size", "2")
    assert result.exit_code == 0, result.stderr
    assert calls == [(2, tuple(methods)), (1, tuple(methods))]
    for p in photos:
        for m in methods:
            assert (out / f"{p.stem}.{m}.png").is_file()
    written = table_rows(result)[str(photos[0])][-1]
    assert written == ", ".join(f"{photos[0].stem}.{m}.png" for m in methods)


def test_all_methods_and_an_explicit_class(tmp_path, photos) -> None:
    out = tmp_path / "out"
    result = run("explain", TINY, photos[0], "--out", out, "--method", "all", "--class", "4")
    assert result.exit_code == 0, result.stderr
    assert len(list(out.glob("wide.*.png"))) == 10
    file, top1, label, score, explained, written = table_rows(result)[str(photos[0])]
    assert explained == "4" or explained == "4 (espresso)"


def test_save_npy_writes_float32_heatmaps_at_model_resolution(tmp_path, photos) -> None:
    out = tmp_path / "out"
    result = run("explain", TINY, *photos[:2], "--out", out, "--save-npy", "-m", "gradcam,layercam")
    assert result.exit_code == 0, result.stderr
    for p in photos[:2]:
        for m in ("gradcam", "layercam"):
            heatmap = np.load(out / f"{p.stem}.{m}.npy")
            assert heatmap.dtype == np.float32 and heatmap.shape == (32, 32)
            assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0 and heatmap.max() > 0.5
    assert "wide.gradcam.npy" in table_rows(result)[str(photos[0])][-1]


def test_directory_input_is_expanded_sorted_to_its_images(tmp_path, photos) -> None:
    folder = photos[0].parent
    (folder / "notes.txt").write_text("not an image")
    photo(folder / ".hidden.png", seed=9)
    photo(folder / "UPPER.JPG", (40, 30), 4)
    out = tmp_path / "out"
    result = run("explain", TINY, folder, "--out", out)
    assert result.exit_code == 0, result.stderr
    expected = sorted(folder / n for n in ("wide.jpg", "tall.png", "grey.png", "UPPER.JPG"))
    assert list(table_rows(result)) == [str(p) for p in expected]
    assert not (out / ".hidden.gradcam.png").exists() and not (out / "notes.gradcam.png").exists()


def test_bad_inputs_each_get_one_line_and_the_rest_is_explained(tmp_path, photos) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    good_bytes = photos[0].read_bytes()
    corrupt = bad / "corrupt.jpg"
    corrupt.write_bytes(good_bytes[:20] + bytes(range(256)) * 4)
    truncated = bad / "truncated.jpg"
    truncated.write_bytes(good_bytes[: len(good_bytes) // 2])
    empty = bad / "empty.png"
    empty.write_bytes(b"")
    text = bad / "readme.png"
    text.write_text("this is text, not a picture\n")
    bomb = huge_png(bad / "bomb.png")
    missing = bad / "missing.jpg"
    empty_dir = bad / "nothing-here"
    empty_dir.mkdir()
    (empty_dir / "notes.txt").write_text("no images")
    inputs = [photos[0], corrupt, truncated, empty, text, bomb, missing, empty_dir, photos[1]]
    out = tmp_path / "out"
    result = run("explain", TINY, *inputs, "--out", out)
    assert result.exit_code == 1, result.stderr
    errors = error_lines(result)
    assert len(errors) == 7, result.stderr
    for path in (corrupt, truncated, empty, text, bomb, missing, empty_dir):
        line = next(e for e in errors if str(path) in e)
        assert "Traceback" not in line
    by_file = {p: next(e for e in errors if str(p) in e) for p in (empty, text, bomb, missing, empty_dir)}
    assert "empty" in by_file[empty]
    assert "not an image" in by_file[text]
    assert "decompression-bomb" in by_file[bomb] and "megapixels" in by_file[bomb]
    assert "no such file" in by_file[missing]
    assert "no images" in by_file[empty_dir]
    assert "Traceback" not in result.stderr
    assert set(table_rows(result)) == {str(photos[0]), str(photos[1])}
    assert (out / "wide.gradcam.png").is_file() and (out / "tall.gradcam.png").is_file()
    assert "7 failed" in result.stdout.splitlines()[-1]


def test_only_bad_inputs_exit_1_without_a_table(tmp_path) -> None:
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    result = run("explain", TINY, empty_dir, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert len(error_lines(result)) == 1 and "no images" in result.stderr
    assert result.stdout.startswith("explained 0 of 1 input ")


def test_class_index_out_of_range_is_a_usage_error(tmp_path, photos) -> None:
    out = tmp_path / "out"
    result = run("explain", TINY, *photos, "--out", out, "--class", "10")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: class index 10 is out of range: the model has 10 classes (0..9; negative = top-1)"]
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("value", ["dog", "-3", "1.5"])
def test_bad_class_values_are_usage_errors(tmp_path, photos, value) -> None:
    result = run("explain", TINY, photos[0], "--out", tmp_path / "out", "--class", value)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--class" in result.stderr


def test_unknown_method_is_a_usage_error(tmp_path, photos) -> None:
    result = run("explain", TINY, photos[0], "--out", tmp_path / "out", "-m", "gradcam,magiccam")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown method 'magiccam'; choose from gradcam, gradcam++, xgradcam, hirescam, layercam, "
        "gradcam-elementwise, eigencam, eigengradcam, scorecam, ablationcam, gradcam-counterfactual, saliency, "
        "guided-backprop, guided-gradcam, smoothgrad, integrated-gradients (or 'all')"]


def test_a_plain_onnx_model_says_how_to_make_an_explanation_graph(tmp_path, photos) -> None:
    result = run("explain", PLAIN, photos[0], "--out", tmp_path / "out")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not an onnxcam explanation graph" in lines[0]
    assert f"onnxcam export {PLAIN} -o plain.cam.onnx" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["missing", "text"])
def test_an_unreadable_model_is_a_usage_error(tmp_path, photos, kind) -> None:
    model = tmp_path / "model.cam.onnx"
    if kind == "text":
        model.write_text("not a protobuf at all")
    result = run("explain", model, photos[0], "--out", tmp_path / "out")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {model}")


def test_existing_outputs_are_never_overwritten_without_overwrite(tmp_path, photos) -> None:
    out = tmp_path / "out"
    out.mkdir()
    kept = out / "wide.gradcam.png"
    kept.write_bytes(b"keep me")
    result = run("explain", TINY, *photos[:2], "--out", out)
    assert result.exit_code == 1
    assert kept.read_bytes() == b"keep me"
    errors = error_lines(result)
    assert len(errors) == 1 and str(photos[0]) in errors[0] and "--overwrite" in errors[0]
    assert (out / "tall.gradcam.png").is_file()
    assert set(table_rows(result)) == {str(photos[1])}

    before = (out / "tall.gradcam.png").stat().st_mtime_ns
    again = run("explain", TINY, photos[1], "--out", out, "--save-npy")  # the .npy is new, the .png is not
    assert again.exit_code == 1 and not (out / "tall.gradcam.npy").exists()
    assert (out / "tall.gradcam.png").stat().st_mtime_ns == before

    result = run("explain", TINY, *photos[:2], "--out", out, "--overwrite")
    assert result.exit_code == 0, result.stderr
    with Image.open(kept) as im:
        assert im.size == (90, 45)


def test_repeated_stems_get_distinct_outputs(tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    first, second = photo(a / "cat.png", seed=1), photo(b / "cat.jpg", seed=2)
    out = tmp_path / "out"
    result = run("explain", TINY, first, second, first, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert sorted(f.name for f in out.iterdir()) == ["cat-2.gradcam.png", "cat.gradcam.png"]
    assert list(table_rows(result)) == [str(first), str(second)]


def test_output_path_that_is_a_file_is_a_usage_error(tmp_path, photos) -> None:
    out = tmp_path / "out"
    out.write_text("a file")
    result = run("explain", TINY, photos[0], "--out", out)
    assert result.exit_code == 2 and len(error_lines(result)) == 1


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'torchvision', 'onnx', 'onnxscript', 'onnx_ir', 'skimage', 'timm'}:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
sys.meta_path.insert(0, Block())
"""


def test_cli_and_explain_work_with_torch_and_onnx_absent(tmp_path, photos) -> None:
    """`onnxcam.cli` imports and `explain`/`info` run when torch, onnx and scikit-image cannot be imported."""
    out = tmp_path / "out"
    code = BLOCKER + f"""
import json
from click.testing import CliRunner
from onnxcam.cli.main import main
r1 = CliRunner().invoke(main, ["explain", {str(TINY)!r}, {str(photos[0])!r}, "--out", {str(out)!r},
                               "-m", "gradcam++,ablationcam"])
r2 = CliRunner().invoke(main, ["info", {str(TINY)!r}, "--json"])
r3 = CliRunner().invoke(main, ["demo", "--out", {str(tmp_path / 'demo')!r}])
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {{'torch', 'onnx', 'skimage'}})
print(json.dumps({{"codes": [r1.exit_code, r2.exit_code, r3.exit_code], "heavy": heavy,
                  "demo": r3.output, "info": json.loads(r2.stdout)["source"]}}))
"""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0, 0, 2] and report["heavy"] == []
    assert report["info"] == "make_tiny:build"
    assert "pip install 'onnxcam[export]' scikit-image" in report["demo"]
    assert (out / "wide.gradcam++.png").is_file() and (out / "wide.ablationcam.png").is_file()


@pytest.mark.parametrize("method,mode", [("saliency", "plain"), ("guided-gradcam", "guided")])
def test_input_space_method_on_a_graph_without_its_output(tmp_path, method: str, mode: str) -> None:
    out = tmp_path / "out"
    result = run("explain", TINY, DATA, "--method", method, "--out", out)
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1 and method in lines[0] and f"--input-gradients {mode}" in lines[0]
    assert not out.exists()
