"""``onnxcam evaluate MODEL MANIFEST``: images and their ground truth from a CSV manifest (path,
class, boxes, mask; ``runtime.metrics.truth``) give the same metrics as the same images in a
folder with a boxes file and masks; a bad cell is one error line; a row without ground truth
fails alone. Torch-free (the base install); the URI test needs pyarrow."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cli_helpers import run_cli as run
from test_cli_evaluate import FAST, TINY, error_lines, make_images, mask_for

METRICS = ["--metrics", "pointing_game,energy_pointing_game,topk_iou,confidence_change,sparsity"]


def write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "class", "boxes", "mask"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    """The same three images as a folder (boxes.json + a mask) and as a manifest in another folder."""
    images = make_images(tmp_path / "folder")
    mask = mask_for(images[0])
    boxes = {"img1.png": [[2, 2, 20, 30]], "img2.png": [[2, 2, 20, 30], [10, 10, 30, 40]]}
    (tmp_path / "folder" / "boxes.json").write_text(json.dumps(boxes))
    (tmp_path / "lists").mkdir()
    manifest = write_manifest(tmp_path / "lists" / "val.csv", [
        {"path": f"../folder/{images[0].name}", "class": "", "boxes": "", "mask": f"../folder/{mask.name}"},
        {"path": f"../folder/{images[1].name}", "class": "", "boxes": json.dumps(boxes["img1.png"]), "mask": ""},
        {"path": f"../folder/{images[2].name}", "class": "", "boxes": json.dumps(boxes["img2.png"]), "mask": ""},
    ])
    return tmp_path / "folder", manifest


def test_a_manifest_gives_the_folder_s_metrics(dataset, tmp_path: Path) -> None:
    folder, manifest = dataset
    a = run("evaluate", TINY, folder, "-m", "gradcam", *METRICS, *FAST, "--out", tmp_path / "a")
    b = run("evaluate", TINY, manifest, "-m", "gradcam", *METRICS, *FAST, "--out", tmp_path / "b")
    assert a.exit_code == b.exit_code == 0, b.stderr
    assert json.loads((tmp_path / "b" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert run("evaluate", TINY, manifest, "-m", "gradcam", *FAST, "--out", tmp_path / "c").exit_code == 0
    assert "pointing_game" in json.loads((tmp_path / "c" / "metrics.json").read_text())["gradcam"]  # ground truth seen


def test_a_bad_boxes_cell_is_one_error_line(tmp_path: Path) -> None:
    images = make_images(tmp_path / "img", 1)
    manifest = write_manifest(tmp_path / "m.csv", [{"path": f"img/{images[0].name}", "boxes": "[[1, 2, 3]]"}])
    result = run("evaluate", TINY, manifest, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "row 2" in result.stderr and "4 finite numbers" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert run("evaluate", TINY, manifest, "--boxes", manifest, "--out", tmp_path / "o2").exit_code == 2


def test_a_row_without_ground_truth_fails_alone(tmp_path: Path) -> None:
    images = make_images(tmp_path / "img", 2)
    manifest = write_manifest(tmp_path / "m.csv", [
        {"path": f"img/{images[0].name}", "boxes": "[[2, 2, 20, 30]]"},
        {"path": f"img/{images[1].name}", "class": "3"},
    ])
    result = run("evaluate", TINY, manifest, "--metrics", "pointing_game", *FAST, "--out", tmp_path / "out")
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert images[1].name in line and "no ground truth" in line
    assert "evaluated 1 of 2 images" in result.stdout


def test_a_manifest_and_its_images_on_a_uri(dataset, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    folder, manifest = dataset
    a = run("evaluate", TINY, manifest, "-m", "gradcam", *METRICS, *FAST, "--out", tmp_path / "a")
    b = run("evaluate", TINY, manifest.resolve().as_uri(), "-m", "gradcam", *METRICS, *FAST, "--out", tmp_path / "b")
    assert a.exit_code == b.exit_code == 0, b.stderr
    assert json.loads((tmp_path / "b" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "a" / "metrics.json").read_text())


def test_images_with_one_name_in_two_folders_keep_apart_in_the_csv(tmp_path: Path) -> None:
    a, b = make_images(tmp_path / "a", 1), make_images(tmp_path / "b", 2)[1:]
    (b[0]).rename(tmp_path / "b" / a[0].name)  # another picture, the same file name
    manifest = write_manifest(tmp_path / "m.csv", [{"path": f"{d}/{a[0].name}"} for d in ("a", "b")])
    outs = [tmp_path / "local"]
    assert run("evaluate", TINY, manifest, "-m", "gradcam", *FAST, "--out", outs[0]).exit_code == 0
    try:
        import pyarrow  # noqa: F401
        outs.append(tmp_path / "sharded")
        assert run("evaluate", TINY, manifest, "-m", "gradcam", *FAST, "--out", outs[1],
                   "--parquet", tmp_path / "pq").exit_code == 0
    except ImportError:  # the base install: the Parquet run is checked with the dev install
        pass
    for out in outs:
        rows = list(csv.DictReader((out / "per_image.csv").open()))
        assert [r["image"] for r in rows] == [f"a/{a[0].name}", f"b/{a[0].name}"]
        assert rows[0]["confidence_change"] != rows[1]["confidence_change"]


def test_relative_names() -> None:
    from onnxcam.runtime.datasets.sources import relative_names

    assert relative_names(["d/x.png", "d/y.png"]) == ["x.png", "y.png"]
    assert relative_names(["d/cat/1.jpg", "d/dog/1.jpg", "d/1.jpg"]) == ["cat/1.jpg", "dog/1.jpg", "1.jpg"]
    assert relative_names(["s3://b/k/a.png", "s3://b/j/a.png"]) == ["k/a.png", "j/a.png"]
    assert relative_names(["one.png"]) == ["one.png"] and relative_names([]) == []
    assert relative_names(["/d/x.png", "/d/x.png"]) == ["x.png", "x.png"]  # the same file twice
