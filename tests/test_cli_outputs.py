"""Nothing is lost: no command replaces a file without --overwrite, none writes through a symbolic
link, triton-repo deletes only model directories it wrote, outputs are never read back as inputs,
and one bad image (too thin, too large, a name with a newline) is one error line. Torch-free."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli as run
from onnxcam.models.files import OutputError, write_output

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny.cam.onnx"


def photo(path: Path, size=(40, 48), seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


# -- the writer ---------------------------------------------------------------------------------
def test_write_output_never_replaces_and_never_follows_links(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("precious")
    target = tmp_path / "out.txt"
    write_output(target, b"one")
    with pytest.raises(OutputError, match="exists; pass overwrite=True"):
        write_output(target, b"two")
    write_output(target, b"two", overwrite=True)
    assert target.read_bytes() == b"two"
    link = tmp_path / "link.txt"
    link.symlink_to(outside)
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="symbolic link"):
            write_output(link, b"evil", overwrite=overwrite)
    assert outside.read_text() == "precious"
    with pytest.raises(ZeroDivisionError):  # a failed write leaves nothing behind
        write_output(tmp_path / "half.txt", lambda fh: (fh.write(b"half"), 1 / 0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.txt", "link.txt", "out.txt"]


# -- explain ------------------------------------------------------------------------------------
def test_explain_overwrite_does_not_follow_a_symlink(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    photo(src / "cat.png")
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"precious")
    (out / "cat.gradcam.png").symlink_to(outside)
    r = run("explain", TINY, src, "--out", out, "--overwrite")
    assert r.exit_code == 1 and "symbolic link" in errors(r)[0]
    assert outside.read_bytes() == b"precious"


def test_outputs_inside_an_input_directory_are_not_explained_again(tmp_path: Path) -> None:
    photo(tmp_path / "cat.png")
    out = tmp_path / "out"
    first = run("explain", TINY, tmp_path, "--out", out)
    assert first.exit_code == 0, first.stderr
    second = run("explain", TINY, tmp_path, "--out", out, "--overwrite")
    assert second.exit_code == 0 and "explained 1 of 1 input" in second.stdout  # not cat.gradcam.png too
    same = run("explain", TINY, tmp_path, "--out", tmp_path, "--overwrite")  # --out is the input directory
    assert same.exit_code == 0, same.stderr
    again = run("explain", TINY, tmp_path, "--out", tmp_path, "--overwrite")
    assert "explained 1 of 1 input" in again.stdout
    assert not (tmp_path / "cat.gradcam.gradcam.png").exists()


def test_a_thin_image_is_one_error_line_and_the_batch_goes_on(tmp_path: Path) -> None:
    """A 1×3000 PNG (the short side scaled to the resize size made the canvas explode)."""
    good = photo(tmp_path / "good.png")
    Image.new("RGB", (1, 3000), (200, 10, 10)).save(tmp_path / "tall_1x3000.png")
    Image.new("RGB", (100_000, 1)).save(tmp_path / "wide.png")
    r = run("explain", TINY, good, tmp_path / "tall_1x3000.png", tmp_path / "wide.png", "--out", tmp_path / "o")
    assert r.exit_code == 1 and (tmp_path / "o" / "good.gradcam.png").is_file()
    assert [e for e in errors(r) if "aspect ratio above 50:1" in e and "1x3000" in e]
    assert len(errors(r)) == 2 and "explained 1 of 3 inputs" in r.stdout


def test_a_huge_image_is_explained_in_bounded_memory(tmp_path: Path) -> None:
    """An 88-megapixel PNG (86 KB of zeros, under the bomb limit) took 75 s and 5.9 GB: now its
    overlay is drawn on a ≤ 16-megapixel copy, and the whole run stays under 2.5 GB."""
    Image.new("RGB", (9400, 9400)).save(tmp_path / "zeros.png", compress_level=9)
    # A fresh parent process: RUSAGE_CHILDREN of this worker would include earlier tests' children.
    measure = ("import resource, subprocess, sys; "
               "done = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=300); "
               "sys.stderr.write(done.stderr); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)")
    done = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "onnxcam.cli.main", "explain",
                           str(TINY), str(tmp_path / "zeros.png"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=320)
    assert done.returncode == 0, done.stderr
    peak_mb = int(done.stdout.split()[-1]) / 1024
    with Image.open(tmp_path / "o" / "zeros.gradcam.png") as im:
        assert im.width * im.height <= 4096 * 4096 and im.width == im.height
    assert 0 < peak_mb < 2500, f"peak RSS {peak_mb:.0f} MB"


def test_a_file_name_with_a_newline_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad\nname.png"
    bad.write_bytes(b"not a png")
    r = run("explain", TINY, bad, "--out", tmp_path / "o")
    assert r.exit_code == 1 and len(errors(r)) == 1 and "bad\\nname.png" in errors(r)[0]


@pytest.mark.parametrize("value,needle", [("3.7", "class index"), ("-2", "class index"),
                                          (str(2**70), "out of range")])
def test_class_values(tmp_path: Path, value: str, needle: str) -> None:
    r = run("explain", TINY, photo(tmp_path / "a.png"), "--out", tmp_path / "o", "--class", value)
    assert r.exit_code == 2 and needle in errors(r)[0]


# -- evaluate -----------------------------------------------------------------------------------
def test_evaluate_refuses_to_replace_results_and_to_follow_links(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    photo(data / "a.png")
    out = tmp_path / "out"
    assert run("evaluate", TINY, data, "--metrics", "sparsity", "--out", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = run("evaluate", TINY, data, "--metrics", "gini", "--out", out)
    assert again.exit_code == 2 and "exists; pass --overwrite" in errors(again)[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("precious")
    (out / "metrics.json").unlink()
    (out / "metrics.json").symlink_to(os.path.relpath(outside, out))
    linked = run("evaluate", TINY, data, "--metrics", "gini", "--out", out, "--overwrite")
    assert linked.exit_code == 2 and "symbolic link" in errors(linked)[0]
    assert outside.read_text() == "precious"
    (out / "metrics.json").unlink()
    replaced = run("evaluate", TINY, data, "--metrics", "gini", "--out", out, "--overwrite")
    assert replaced.exit_code == 0 and "gini" in (out / "metrics.json").read_text()


def test_evaluate_into_its_data_directory_does_not_evaluate_its_own_plots(tmp_path: Path) -> None:
    photo(tmp_path / "a.png")
    r = run("evaluate", TINY, tmp_path, "--metrics", "deletion", "--step", "256", "--out", tmp_path / "eval")
    assert r.exit_code == 0
    again = run("evaluate", TINY, tmp_path, "--metrics", "deletion", "--step", "256", "--out", tmp_path,
                "--overwrite")
    assert again.exit_code == 0 and "evaluated 1 of 1 image" in again.stdout


# -- triton-repo --------------------------------------------------------------------------------
def test_triton_repo_names_and_what_overwrite_may_delete(tmp_path: Path) -> None:
    r = run("triton-repo", TINY, "-o", tmp_path, "--name", "abc\n")
    assert r.exit_code == 2 and "use letters, digits" in errors(r)[0]
    precious = tmp_path / "tiny"
    precious.mkdir()
    (precious / "notes.txt").write_text("not a model")
    r = run("triton-repo", TINY, "-o", tmp_path, "--overwrite")
    assert r.exit_code == 2 and "not a model directory written by" in errors(r)[0]
    assert (precious / "notes.txt").read_text() == "not a model"
    assert run("triton-repo", TINY, "-o", tmp_path, "--name", "ours").exit_code == 0
    assert run("triton-repo", TINY, "-o", tmp_path, "--name", "ours", "--overwrite").exit_code == 0
