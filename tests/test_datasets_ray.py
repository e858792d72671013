"""The Ray engine (``--engine ray``) against the local one on the same images: the same rows,
heatmaps and error rows, and a dataset Ray Data reads back as fixed-shape tensors. One local Ray
(``ray.init(num_cpus=2)``, fractional CPUs per actor) for the whole test: it takes seconds to start."""
from __future__ import annotations

import json

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from cli_helpers import run_cli as run  # noqa: E402
from onnxcam.runtime import Explainer  # noqa: E402
from onnxcam.runtime.datasets import expand_sources  # noqa: E402
from onnxcam.runtime.datasets.parquet import EXPLANATIONS, explain_to_parquet, read_heatmaps  # noqa: E402
from onnxcam.runtime.datasets.ray_engine import RayOptions  # noqa: E402
from test_datasets import TINY, read, read_errors, write_images  # noqa: E402

METHODS = ["gradcam", "layercam"]


def test_ray_equals_local(tmp_path) -> None:
    images = write_images(tmp_path / "img", 40)
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "img" / "empty.jpg").write_bytes(b"")
    sources, _ = expand_sources([str(tmp_path / "img")])
    assert len(sources) == len(images) + 2
    explainer = Explainer(str(TINY), batch_size=8)
    local = explain_to_parquet(explainer, sources, tmp_path / "local", METHODS, shard_size=16)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = explain_to_parquet(explainer, sources, tmp_path / "ray", METHODS, shard_size=16,
                                    ray=RayOptions(actors=2, cpus_per_actor=0.5))
        assert (on_ray.explained, on_ray.failed) == (local.explained, local.failed) == (40, 2)
        a, b = read(tmp_path / "local"), read(tmp_path / "ray")
        assert a.drop_columns(["heatmap"]).equals(b.drop_columns(["heatmap"]))
        assert np.max(np.abs(read_heatmaps(a) - read_heatmaps(b))) <= 1e-6
        assert read_errors(tmp_path / "local").equals(read_errors(tmp_path / "ray"))
        parts = sorted(p.name for p in (tmp_path / "ray" / EXPLANATIONS).glob("part-*"))
        assert parts == [f"part-0000{i}.parquet" for i in range(3)]

        back = ray.data.read_parquet(str(tmp_path / "ray" / EXPLANATIONS)).take(2)
        assert np.asarray(back[0]["heatmap"]).shape == (32, 32)

        cli = run("explain", TINY, tmp_path / "img", "--parquet", tmp_path / "cli", "--engine", "ray",
                  "-m", "gradcam", "--actors", "1", "--shard-size", "16", "--pictures")
        assert cli.exit_code == 1 and "2 failed" in cli.stdout, cli.stderr
        assert (read(tmp_path / "cli").num_rows, read_errors(tmp_path / "cli").num_rows) == (40, 2)
        local_cli = run("explain", TINY, tmp_path / "img", "--parquet", tmp_path / "cli-local", "-m", "gradcam",
                        "--shard-size", "16", "--pictures")
        assert local_cli.exit_code == 1, local_cli.stderr
        assert read(tmp_path / "cli").column("picture").equals(read(tmp_path / "cli-local").column("picture"))

        # evaluate: the same per-image rows and the same summary (within 1e-6) on Ray
        args = ["evaluate", TINY, tmp_path / "img", "-m", "gradcam", "-m", "layercam", "--metrics",
                "confidence_change,deletion,gini", "--step", "256", "--shard-size", "16"]
        local_eval = run(*args, "--out", tmp_path / "eval-local", "--parquet", tmp_path / "eval-local-pq")
        ray_eval = run(*args, "--out", tmp_path / "eval-ray", "--parquet", tmp_path / "eval-ray-pq",
                       "--engine", "ray", "--actors", "2")
        assert local_eval.exit_code == ray_eval.exit_code == 1, ray_eval.stderr
        want = json.loads((tmp_path / "eval-local" / "metrics.json").read_text())
        got = json.loads((tmp_path / "eval-ray" / "metrics.json").read_text())
        assert want.keys() == got.keys()
        for method in want:
            for metric, value in want[method].items():
                assert got[method][metric] == pytest.approx(value, abs=1e-6), (method, metric)
        rows = [pq.read_table(tmp_path / d / "scores").sort_by([("index", "ascending"), ("method", "ascending")])
                for d in ("eval-local-pq", "eval-ray-pq")]
        assert rows[0].select(["index", "path", "method", "class_index"]).equals(
            rows[1].select(["index", "path", "method", "class_index"]))
        assert read_errors(tmp_path / "eval-local-pq").equals(read_errors(tmp_path / "eval-ray-pq"))

        # a manifest's own ground truth (boxes per row) reaches the Ray workers
        manifest = tmp_path / "manifest.csv"
        manifest.write_text("path,boxes\n" + "".join(f'img/{p.name},"[[2, 2, 20, 30]]"\n' for p in images[:6]))
        args = ["evaluate", TINY, manifest, "-m", "gradcam", "--metrics", "pointing_game,energy_pointing_game",
                "--shard-size", "4"]
        local_gt = run(*args, "--out", tmp_path / "gt-local", "--parquet", tmp_path / "gt-local-pq")
        ray_gt = run(*args, "--out", tmp_path / "gt-ray", "--parquet", tmp_path / "gt-ray-pq", "--engine", "ray")
        assert local_gt.exit_code == ray_gt.exit_code == 0, ray_gt.stderr
        want = json.loads((tmp_path / "gt-local" / "metrics.json").read_text())["gradcam"]
        got = json.loads((tmp_path / "gt-ray" / "metrics.json").read_text())["gradcam"]
        assert got == pytest.approx(want, abs=1e-6)
    finally:
        ray.shutdown()
