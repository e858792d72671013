"""Whole datasets: the local engine (``onnxcam.runtime.datasets``) and ``onnxcam explain --parquet``
on the committed tiny graph — every good image explained exactly as ``Explainer`` does, every
broken one an error row, shards that resume after a kill."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from cli_helpers import run_cli as run  # noqa: E402
from onnxcam.runtime import Explainer  # noqa: E402
from onnxcam.runtime.datasets import Source, expand_sources, iter_explain  # noqa: E402
from onnxcam.runtime.datasets.parquet import ERRORS, EXPLANATIONS, RUN_FILE, read_heatmaps  # noqa: E402
from test_cli_explain import huge_png  # noqa: E402

TINY = Path(__file__).parent / "data" / "tiny.cam.onnx"
METHODS = ("gradcam", "gradcam++")


def write_images(folder: Path, count: int, seed: int = 0, size: tuple[int, int] = (30, 40)) -> list[Path]:
    """``count`` random RGB PNGs of slightly different sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, paths = np.random.default_rng(seed), []
    for i in range(count):
        shape = (size[0] + i % 7, size[1] + i % 5, 3)
        paths.append(folder / f"img{i:04d}.png")
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, list[Path], list[Path]]:
    """200 good images and 5 broken ones (truncated, empty, text, a decompression bomb, a
    directory named like an image) in one folder."""
    root = tmp_path_factory.mktemp("dataset")
    good = write_images(root, 200)
    truncated = root / "truncated.png"
    truncated.write_bytes(good[0].read_bytes()[:60])
    empty = root / "empty.png"
    empty.write_bytes(b"")
    text = root / "text.png"
    text.write_text("not a picture\n")
    bomb = huge_png(root / "bomb.png")
    directory = root / "x.jpg"
    directory.mkdir()
    return root, good, [truncated, empty, text, bomb, directory]


def read(out: Path) -> pa.Table:
    """The explanations table of a run, in input order."""
    return pq.read_table(out / EXPLANATIONS).sort_by([("index", "ascending"), ("method", "ascending")])


def read_errors(out: Path) -> pa.Table:
    return pq.read_table(out / ERRORS).sort_by("index")


def test_a_folder_with_broken_images(folder, tmp_path) -> None:
    """195+ explained images (two rows each), the 5 broken ones as error rows, exit 1; every
    heatmap equal to ``Explainer.explain_many`` on the same image (max|Δ| = 0)."""
    root, good, bad = folder
    out = tmp_path / "out"
    result = run("explain", TINY, root, "--parquet", out, *[a for m in METHODS for a in ("-m", m)],
                 "--shard-size", "64", "-b", "8")
    assert result.exit_code == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 5 and "Traceback" not in result.stderr
    failed = read_errors(out)
    assert sorted(failed.column("path").to_pylist()) == sorted(str(p) for p in bad)
    assert all(e.startswith(p) for p, e in zip(failed.column("path").to_pylist(), failed.column("error").to_pylist()))
    rows = read(out)
    assert rows.num_rows == 2 * len(good)
    assert sorted(set(rows.column("path").to_pylist())) == sorted(str(p) for p in good)
    assert sorted(p.name for p in out.iterdir()) == [RUN_FILE, ERRORS, EXPLANATIONS]
    assert sorted(p.name for p in (out / EXPLANATIONS).iterdir()) == [f"part-0000{i}.parquet" for i in range(4)]

    explainer = Explainer(str(TINY), batch_size=8)
    heatmaps = read_heatmaps(rows)
    paths, methods = rows.column("path").to_pylist(), rows.column("method").to_pylist()
    for start in range(0, len(good), 8):  # the engine's batches: 8 good images in input order
        batch = [str(p) for p in good[start:start + 8]]
        want = explainer.explain_many(explainer.prepare(batch)[0], methods=list(METHODS))
        for j, path in enumerate(batch):
            for method in METHODS:
                k = next(i for i, (p, m) in enumerate(zip(paths, methods)) if p == path and m == method)
                assert np.max(np.abs(heatmaps[k] - want[method].heatmaps[j])) == 0, (path, method)
    first = rows.slice(0, 1).to_pylist()[0]
    assert (first["height"], first["width"]) == Image.open(first["path"]).size[::-1]
    assert len(first["top_classes"]) == 5 and first["label"] == explainer.labels[first["class_index"]]


def test_sources_from_globs_lists_and_manifests(tmp_path) -> None:
    images = write_images(tmp_path / "a" / "b", 6)
    (tmp_path / "list.txt").write_text("# two of them\na/b/img0000.png\na/b/img0001.png\n")
    (tmp_path / "manifest.csv").write_text("path,class\na/b/img0002.png,3\na/b/img0003.png,\n")
    sources, errors = expand_sources([str(tmp_path / "list.txt"), str(tmp_path / "manifest.csv"),
                                      str(tmp_path / "**" / "*.png"), str(tmp_path / "nothing*.png")])
    assert [Path(s.path).resolve() for s in sources] == [p.resolve() for p in images]
    assert [s.class_index for s in sources[:4]] == [None, None, 3, None]
    assert len(errors) == 1 and "matches no image files" in errors[0]
    recursive, _ = expand_sources([str(tmp_path)], recursive=True)
    assert len(recursive) == 6
    _, errors = expand_sources([str(tmp_path)])
    assert errors == [f"{tmp_path}: directory has no images"]


def test_a_manifest_class_is_explained(tmp_path) -> None:
    images = write_images(tmp_path / "img", 3)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,class\n" + "".join(f"img/{p.name},{c}\n" for p, c in zip(images, (7, 2, 9))))
    out = tmp_path / "out"
    assert run("explain", TINY, manifest, "--parquet", out).exit_code == 0
    assert read(out).column("class_index").to_pylist() == [7, 2, 9]


def test_the_engine_streams_in_order_with_errors_in_place(folder) -> None:
    root, good, bad = folder
    explainer = Explainer(str(TINY), batch_size=4)
    sources = [Source(str(p)) for p in [good[0], bad[0], good[1], bad[1], good[2]]]
    items = list(iter_explain(explainer, sources, ["gradcam"], workers=2, prefetch=1))
    assert [i.index for i in items] == list(range(5))
    assert [i.error is None for i in items] == [True, False, True, False, True]
    assert items[1].error.startswith(str(bad[0]))


def test_another_run_into_the_same_directory_is_refused(tmp_path) -> None:
    write_images(tmp_path / "img", 4)
    out = tmp_path / "out"
    assert run("explain", TINY, tmp_path / "img", "--parquet", out).exit_code == 0
    before = (out / EXPLANATIONS / "part-00000.parquet").read_bytes()
    again = run("explain", TINY, tmp_path / "img", "--parquet", out, "-m", "layercam")
    assert again.exit_code == 2 and "holds another run" in again.stderr
    assert (out / EXPLANATIONS / "part-00000.parquet").read_bytes() == before
    replaced = run("explain", TINY, tmp_path / "img", "--parquet", out, "-m", "layercam", "--overwrite")
    assert replaced.exit_code == 0
    assert set(read(out).column("method").to_pylist()) == {"layercam"}


def test_a_killed_run_resumes_with_the_missing_shards_only(tmp_path) -> None:
    """SIGTERM once a few shards are written; the rerun writes the others (the finished shards
    are not touched) and the union equals an uninterrupted run."""
    images = tmp_path / "img"
    write_images(images, 300, size=(120, 160))
    args = [sys.executable, "-m", "onnxcam.cli.main", "explain", str(TINY), str(images), "-m", "scorecam",
            "-m", "gradcam", "--shard-size", "15", "-b", "4", "--parquet"]
    out = tmp_path / "killed"
    process = subprocess.Popen(args + [str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / EXPLANATIONS / "part-00002.parquet").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert process.returncode == 130 and b"run the same command again" in process.stderr.read()
    done = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / EXPLANATIONS).glob("part-*.parquet")}
    assert 3 <= len(done) < 20, f"the run was not killed halfway ({len(done)} of 20 shards)"
    resumed = subprocess.run(args + [str(out)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "shard(s) already done" in resumed.stdout
    for name, (mtime, content) in done.items():
        path = out / EXPLANATIONS / name
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content
    whole = tmp_path / "whole"
    assert subprocess.run(args + [str(whole)], capture_output=True, timeout=300).returncode == 0
    assert len(list((out / EXPLANATIONS).glob("part-*.parquet"))) == 20
    assert read(out).equals(read(whole))
    assert not [p for p in out.rglob(".*")], "a temporary file was left behind"


def test_the_dataset_reads_back_as_fixed_shape_tensors(tmp_path) -> None:
    pd = pytest.importorskip("pandas")
    write_images(tmp_path / "img", 3)
    out = tmp_path / "out"
    assert run("explain", TINY, tmp_path / "img", "--parquet", out).exit_code == 0
    table = pq.read_table(out / EXPLANATIONS)
    assert isinstance(table.schema.field("heatmap").type, pa.FixedShapeTensorType)
    assert read_heatmaps(table).shape == (3, 32, 32)
    frame = pd.read_parquet(out / EXPLANATIONS)
    assert len(frame) == 3 and np.asarray(frame["heatmap"].iloc[0]).size == 32 * 32


def test_a_manifest_class_out_of_range_fails_that_image_only(tmp_path) -> None:
    images = write_images(tmp_path / "img", 3)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,class\n" + "".join(f"img/{p.name},{c}\n" for p, c in zip(images, (1, 10, 2))))
    out = tmp_path / "out"
    result = run("explain", TINY, manifest, "--parquet", out)
    assert result.exit_code == 1 and "class 10 is out of range (the model has 10 classes)" in result.stderr
    assert read(out).column("class_index").to_pylist() == [1, 2]
    assert read_errors(out).column("index").to_pylist() == [1]


def test_evaluate_keeps_per_image_rows_and_resumes_with_the_same_summary(tmp_path) -> None:
    """``evaluate --parquet``: the summary equals a plain evaluate's; after a shard is lost the
    rerun rewrites that shard only and the summary (over every shard) is unchanged."""
    import json

    images = write_images(tmp_path / "img", 12)
    (tmp_path / "img" / "bad.png").write_bytes(b"xx")
    args = ["evaluate", TINY, tmp_path / "img", "-m", "gradcam", "-m", "layercam", "--metrics",
            "confidence_change,deletion,sparsity", "--step", "256"]
    plain = run(*args, "--out", tmp_path / "plain")
    assert plain.exit_code == 1, plain.stderr
    kept = run(*args, "--out", tmp_path / "kept", "--parquet", tmp_path / "pq", "--shard-size", "5")
    assert kept.exit_code == 1, kept.stderr
    want = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert json.loads((tmp_path / "kept" / "metrics.json").read_text()) == want
    scores = pq.read_table(tmp_path / "pq" / "scores")
    assert scores.num_rows == 2 * len(images) and {"deletion", "curve_deletion", "drop"} <= set(scores.column_names)
    assert read_errors(tmp_path / "pq").column("path").to_pylist() == [str(tmp_path / "img" / "bad.png")]

    shards = sorted((tmp_path / "pq" / "scores").glob("part-*.parquet"))
    untouched = {p: p.stat().st_mtime_ns for p in shards[1:]}
    shards[0].unlink()
    again = run(*args, "--out", tmp_path / "again", "--parquet", tmp_path / "pq", "--shard-size", "5")
    assert again.exit_code == 1 and "shard(s) of" in again.stderr
    assert json.loads((tmp_path / "again" / "metrics.json").read_text()) == want
    assert shards[0].exists() and all(p.stat().st_mtime_ns == t for p, t in untouched.items())


def test_a_killed_evaluation_resumes_to_the_same_summary(tmp_path) -> None:
    """``evaluate --parquet`` on SIGTERM: exit 130 with the resume line, whole shards only; the
    rerun finishes and its summary equals an uninterrupted evaluation's."""
    import json

    write_images(tmp_path / "img", 120, size=(120, 160))
    args = [sys.executable, "-m", "onnxcam.cli.main", "evaluate", str(TINY), str(tmp_path / "img"), "-m", "gradcam",
            "--metrics", "deletion,sparsity", "--step", "512", "--shard-size", "5", "-b", "4"]
    out = tmp_path / "rows"
    process = subprocess.Popen(args + ["--out", str(tmp_path / "a"), "--parquet", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "scores" / "part-00001.parquet").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert process.returncode == 130 and b"run the same command again" in process.stderr.read()
    written = len(list((out / "scores").glob("part-*.parquet")))
    assert 2 <= written < 24, f"the run was not killed halfway ({written} of 24 shards)"
    resumed = subprocess.run(args + ["--out", str(tmp_path / "a"), "--parquet", str(out)], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run(args + ["--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    assert json.loads((tmp_path / "a" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert not [p for p in out.rglob(".*")], "a temporary file was left behind"


def test_pictures_are_the_explain_command_s_pictures(tmp_path) -> None:
    """``--pictures``: each row's PNG shows what ``onnxcam explain`` draws for that image and method
    (input-space pictures go through the same ``method_picture``)."""
    import io

    write_images(tmp_path / "img", 3, size=(50, 70))
    out = tmp_path / "pq"
    assert run("explain", TINY, tmp_path / "img", "--parquet", out, "--pictures", "-m", "gradcam",
               "-m", "layercam").exit_code == 0
    assert run("explain", TINY, tmp_path / "img", "-o", tmp_path / "png", "-m", "gradcam", "-m", "layercam").exit_code == 0
    rows = read(out).to_pylist()
    assert len(rows) == 6
    for row in rows:
        want = np.asarray(Image.open(tmp_path / "png" / f"{Path(row['path']).stem}.{row['method']}.png"))
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(row["picture"]))), want)


def test_a_rerun_of_a_finished_run_still_counts_its_failed_images(tmp_path) -> None:
    """Every shard done, two images had failed: the rerun writes nothing, says so in one line and
    exits 1 (the dataset has holes); explain and evaluate alike."""
    write_images(tmp_path / "img", 6)
    (tmp_path / "img" / "bad.png").write_bytes(b"xx")
    (tmp_path / "img" / "worse.png").write_text("not a picture")
    for command in ("explain", "evaluate"):
        out = tmp_path / f"{command}-pq"
        args = [command, TINY, tmp_path / "img", "--parquet", out, "--shard-size", "4"]
        report = ["--metrics", "sparsity", "--out"] if command == "evaluate" else []
        first = run(*args, *report, *([tmp_path / "report1"] if report else []))
        assert first.exit_code == 1 and first.stderr.count("error:") == 2, first.stderr
        shards = {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet")}
        again = run(*args, *report, *([tmp_path / "report2"] if report else []))
        assert again.exit_code == 1, again.stderr
        assert "2 image(s) of the shards already done had failed in an earlier run" in again.stderr
        assert {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet")} == shards
