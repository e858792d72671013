"""`onnxcam evaluate` on the tiny fixture graph with small generated images (torch-free)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli as run  # noqa: E402

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny.cam.onnx"
FAST = ["--step", "256"]  # 32×32 inputs: 5 points per deletion / insertion curve


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def make_images(folder: Path, n: int = 3, size=(40, 48)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def mask_for(path: Path, size=(40, 48), value: int = 1, box=(5, 10, 25, 30)) -> Path:
    m = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = value
    out = path.with_name(f"{path.stem}_mask.png")
    Image.fromarray(m).save(out)
    return out


def test_outputs_for_two_methods(tmp_path):
    imgs = make_images(tmp_path / "data")
    mask_for(imgs[0])
    mask_for(imgs[1], value=3, box=(0, 0, 20, 20))
    (tmp_path / "data" / "boxes.json").write_text(json.dumps({"img2.png": [[2, 2, 20, 30], [10, 10, 30, 40]]}))
    out = tmp_path / "out"
    r = run("evaluate", TINY, tmp_path / "data", "--methods", "gradcam,gradcam++", "--out", out, *FAST)
    assert r.exit_code == 0, r.stderr
    assert error_lines(r) == []
    summary = json.loads((out / "metrics.json").read_text())
    assert list(summary) == ["gradcam", "gradcam++"]
    want = {"confidence_change", "drop_topk", "average_drop", "increase_in_confidence", "deletion", "insertion",
            "topk_iou", "pointing_game", "energy_pointing_game", "box_localisation", "sparsity", "gini"}
    assert set(summary["gradcam"]) == want | {"win_vs_gradcam++"}
    assert set(summary["gradcam++"]) == want | {"win_vs_gradcam"}
    for m in summary.values():
        assert all(isinstance(v, float) for v in m.values())
        assert 0 <= m["pointing_game"] <= 1 and 0 <= m["energy_pointing_game"] <= 1
        assert 0 <= m["average_drop"] <= 100
    a, b = summary["gradcam"]["win_vs_gradcam++"], summary["gradcam++"]["win_vs_gradcam"]
    assert a + b <= 100 + 1e-9
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 6 and {r["method"] for r in rows} == {"gradcam", "gradcam++"}
    assert [r["image"] for r in rows if r["method"] == "gradcam"] == ["img0.png", "img1.png", "img2.png"]
    md = (out / "metrics.md").read_text()
    assert "| gradcam++ |" in md and "deletion ↓" in md and md in r.stdout
    for m in ("gradcam", "gradcampp"):
        with Image.open(out / f"curves_{m}.png") as im:
            assert im.size == (640, 420) and im.mode == "RGB"
    assert "evaluated 3 of 3 images" in r.stdout


def test_summary_equals_the_library_metrics(tmp_path):
    from onnxcam.runtime import Explainer
    from onnxcam.runtime.metrics import auc, cam_mult_scores, deletion_curve, gini, remove_top_percent
    imgs = make_images(tmp_path / "data", n=4)
    out = tmp_path / "out"
    r = run("evaluate", TINY, tmp_path / "data", "--metrics", "confidence_change,drop_topk,deletion,gini",
            "--out", out, "--batch-size", "3", *FAST)
    assert r.exit_code == 0, r.stderr
    ex = Explainer(TINY, providers=["CPUExecutionProvider"])
    res = ex.explain(imgs, "gradcam")
    x, _ = ex.prepare(imgs)
    y, o, _ = cam_mult_scores(ex, x, res.heatmaps)
    got = json.loads((out / "metrics.json").read_text())["gradcam"]
    assert set(got) == {"confidence_change", "drop_topk", "deletion", "gini"}
    assert got["confidence_change"] == pytest.approx(float(np.mean(o - y)), abs=1e-6)
    assert got["drop_topk"] == pytest.approx(float(np.mean(remove_top_percent(ex, x, res.heatmaps, 25,
                                                                                relative=True))), abs=1e-5)
    assert got["deletion"] == pytest.approx(float(np.mean(auc(deletion_curve(ex, x, res.heatmaps, step=256)))),
                                            abs=1e-6)
    assert got["gini"] == pytest.approx(float(np.mean(gini(res.heatmaps))), abs=1e-6)
    assert not list(out.glob("curves_*.png")) or (out / "curves_gradcam.png").exists()


def test_bad_inputs_get_one_line_each_and_the_rest_is_evaluated(tmp_path):
    data = tmp_path / "data"
    imgs = make_images(data, n=5)
    mask_for(imgs[0])                                # good
    mask_for(imgs[1], size=(20, 20))                 # wrong size
    (data / "img4.png").write_bytes(b"not a png")    # unreadable
    (data / "boxes.csv").write_text("file,x_min,y_min,x_max,y_max\nimg2.png,0,0,100,10\n")  # outside 40x48
    # img3: no ground truth at all
    out = tmp_path / "out"
    r = run("evaluate", TINY, data, "--metrics", "pointing_game,gini", "--out", out, "--tolerance", "15")
    assert r.exit_code == 1
    errs = error_lines(r)
    assert len(errs) == 4, errs
    assert any("img1.png" in e and "mask img1_mask.png is 20x20, the image is 40x48" in e for e in errs)
    assert any("img2.png" in e and "outside the 40x48 image" in e for e in errs)
    assert any("img3.png" in e and "no ground truth" in e for e in errs)
    assert any("img4.png" in e for e in errs)
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert [r["image"] for r in rows] == ["img0.png"]
    assert "evaluated 1 of 5 images" in r.stdout and "4 failed" in r.stdout


def test_mask_value_selects_the_object(tmp_path):
    data = tmp_path / "data"
    make_images(data, n=1)
    trimap = np.full((48, 40), 2, np.uint8)  # like the Oxford pet trimaps: 0 = object, 2 elsewhere
    trimap[10:30, 5:25] = 0
    Image.fromarray(trimap).save(data / "img0_mask.png")
    out = tmp_path / "out"
    r = run("evaluate", TINY, data, "--metrics", "energy_pointing_game", "--out", out, "--mask-value", "0")
    assert r.exit_code == 0, r.stderr
    inside = json.loads((out / "metrics.json").read_text())["gradcam"]["energy_pointing_game"]
    r = run("evaluate", "--overwrite", TINY, data, "--metrics", "energy_pointing_game", "--out", out, "--mask-value", "2")
    outside = json.loads((out / "metrics.json").read_text())["gradcam"]["energy_pointing_game"]
    assert inside + outside == pytest.approx(1.0, abs=1e-5)
    r = run("evaluate", "--overwrite", TINY, data, "--metrics", "energy_pointing_game", "--out", out, "--mask-value", "7")
    assert r.exit_code == 1 and "no object pixels" in error_lines(r)[0]
    r = run("evaluate", "--overwrite", TINY, data, "--metrics", "energy_pointing_game", "--out", out, "--mask-value", "7",
            "--mask-value", "img0=2")  # per image beats the default
    assert r.exit_code == 0
    assert json.loads((out / "metrics.json").read_text())["gradcam"]["energy_pointing_game"] == pytest.approx(outside)
    r = run("evaluate", "--overwrite", TINY, data, "--out", out, "--mask-value", "img0=x")
    assert r.exit_code == 2 and "--mask-value takes" in error_lines(r)[0]


def test_limit_and_empty_folder_and_usage_errors(tmp_path):
    data = tmp_path / "data"
    make_images(data, n=3)
    out = tmp_path / "out"
    r = run("evaluate", TINY, data, "--metrics", "sparsity", "--out", out, "--limit", "2")
    assert r.exit_code == 0 and "evaluated 2 of 2 images" in r.stdout
    assert len(list(csv.DictReader((out / "per_image.csv").open()))) == 2

    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("evaluate", TINY, empty, "--out", tmp_path / "out-empty")
    assert r.exit_code == 1 and len(error_lines(r)) == 1 and "has no images" in error_lines(r)[0]

    for args, needle in [
        (("evaluate", TINY, data / "missing"), "not a directory"),
        (("evaluate", TINY, data, "--metrics", "accuracy"), "unknown metric 'accuracy'"),
        (("evaluate", TINY, data, "--methods", "nope"), "unknown method 'nope'"),
        (("evaluate", DATA / "plain.onnx", data), "not an onnxcam explanation graph"),
    ]:
        r = run(*args, "--out", out)
        assert r.exit_code == 2, (args, r.stderr)
        assert len(error_lines(r)) == 1 and needle in error_lines(r)[0]
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    r = run("evaluate", TINY, data, "--boxes", bad, "--out", out)
    assert r.exit_code == 2 and "unreadable boxes file" in error_lines(r)[0]


def test_metrics_import_without_torch_onnx_scipy(tmp_path):
    import subprocess
    import sys
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'onnx', 'scipy', 'matplotlib', 'cv2'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import onnxcam.runtime.metrics, onnxcam.runtime.metrics.plot, onnxcam.cli.evaluate_cmd\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "ok", r.stderr


def test_road_metrics_in_the_cli_equal_the_library(tmp_path):
    from onnxcam.runtime import Explainer
    from onnxcam.runtime.metrics import road_combined, road_morf
    imgs = make_images(tmp_path / "data", n=2)
    out = tmp_path / "out"
    r = run("evaluate", TINY, tmp_path / "data", "--metrics", "road", "--road-noise", "0", "--out", out)
    assert r.exit_code == 0, r.stderr
    got = json.loads((out / "metrics.json").read_text())["gradcam"]
    assert set(got) == {"road_morf", "road_lerf", "road_combined"}
    ex = Explainer(TINY, providers=["CPUExecutionProvider"])
    res = ex.explain(imgs, "gradcam")
    x, _ = ex.prepare(imgs)
    assert got["road_morf"] == pytest.approx(float(road_morf(ex, x, res.heatmaps, noise=0).mean()), abs=1e-6)
    assert got["road_combined"] == pytest.approx(float(road_combined(ex, x, res.heatmaps, noise=0).mean()), abs=1e-6)


def test_coco_json_and_pascal_voc_xml_boxes(tmp_path):
    data = tmp_path / "data"
    make_images(data, n=3)
    coco = {"images": [{"id": 7, "file_name": "train/img0.png"}, {"id": 8, "file_name": "img1.png"}],
            "annotations": [{"image_id": 7, "bbox": [5, 10, 20, 20]}, {"image_id": 8, "bbox": [0, 0, 40, 48]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    (data / "img2.xml").write_text("<annotation><object><name>x</name><bndbox><xmin>6</xmin><ymin>11</ymin>"
                                   "<xmax>25</xmax><ymax>30</ymax></bndbox></object></annotation>")
    out = tmp_path / "out"
    r = run("evaluate", TINY, data, "--boxes", tmp_path / "coco.json", "--metrics", "energy_pointing_game",
            "--out", out)
    assert r.exit_code == 0, r.stderr
    rows = {row["image"]: float(row["energy_pointing_game"]) for row in csv.DictReader((out / "per_image.csv").open())}
    assert rows["img1.png"] == pytest.approx(1.0)          # the whole image
    (tmp_path / "same.json").write_text(json.dumps({"img0.png": [5, 10, 25, 30], "img1.png": [0, 0, 1, 1],
                                                    "img2.png": [5, 10, 25, 30]}))
    r = run("evaluate", "--overwrite", TINY, data, "--boxes", tmp_path / "same.json", "--metrics", "energy_pointing_game",
            "--out", tmp_path / "out2")
    same = {row["image"]: float(row["energy_pointing_game"])
            for row in csv.DictReader((tmp_path / "out2" / "per_image.csv").open())}
    assert rows["img0.png"] == pytest.approx(same["img0.png"], abs=1e-6)  # COCO [x, y, w, h]
    assert rows["img2.png"] == pytest.approx(same["img2.png"], abs=1e-6)  # VOC 1-based inclusive
    assert rows["img0.png"] != pytest.approx(rows["img2.png"], abs=1e-3)
    (data / "img2.xml").write_text("<annotation><object/></annotation>")
    r = run("evaluate", "--overwrite", TINY, data, "--boxes", tmp_path / "coco.json", "--metrics", "pointing_game", "--out", out)
    assert r.exit_code == 1 and "no object/bndbox" in error_lines(r)[0]


def test_sanity_metrics_in_the_cli(tmp_path):
    pytest.importorskip("onnx")
    from onnxcam.runtime import Explainer
    from onnxcam.runtime.metrics.sanity import model_randomisation
    imgs = make_images(tmp_path / "data", n=2)
    out = tmp_path / "out"
    r = run("evaluate", TINY, tmp_path / "data", "--metrics", "sanity", "--randomise-layers", "2", "--out", out)
    assert r.exit_code == 0, r.stderr
    got = json.loads((out / "metrics.json").read_text())["gradcam"]
    ex = Explainer(TINY, providers=["CPUExecutionProvider"])
    x, _ = ex.prepare(imgs)
    want = model_randomisation(TINY, x, "gradcam", steps=[2], seed=0)
    assert got["randomisation_spearman"] == pytest.approx(float(want.spearman[-1].mean()), abs=1e-6)
    assert got["randomisation_ssim"] == pytest.approx(float(want.ssim[-1].mean()), abs=1e-6)
