"""Dataset runs on ``pyarrow.fs`` URIs (``runtime.datasets.storage``): inputs and Parquet output
as ``file://`` URIs give what local paths give, and the writer works on a file system that is not
the local disk (pyarrow's in-memory mock standing in for S3/GCS)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pafs = pytest.importorskip("pyarrow.fs")

from cli_helpers import run_cli as run  # noqa: E402
from onnxcam.runtime import Explainer  # noqa: E402
from onnxcam.runtime.datasets import expand_sources, iter_explain, storage  # noqa: E402
from onnxcam.runtime.datasets.parquet import ERRORS, EXPLANATIONS, explain_to_parquet, read_heatmaps  # noqa: E402
from test_datasets import TINY, read, read_errors, write_images  # noqa: E402


def uri(path: Path) -> str:
    return Path(path).resolve().as_uri()


@pytest.fixture()
def photos(tmp_path) -> Path:
    """A folder with a space in its name: 12 images, one broken, one in a sub-directory."""
    root = tmp_path / "my photos"
    write_images(root, 11)
    write_images(root / "sub", 1, seed=3)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


def test_a_uri_directory_and_output_equal_the_local_run(photos, tmp_path) -> None:
    """``explain file://… --parquet file://…`` = the same run on local paths: rows, heatmaps
    (max|Δ| = 0) and the error row, with the paths as URIs."""
    local, remote = tmp_path / "local", tmp_path / "remote"
    a = run("explain", TINY, photos, "--recursive", "--parquet", local, "--shard-size", "5")
    b = run("explain", TINY, uri(photos), "--recursive", "--parquet", uri(remote), "--shard-size", "5")
    assert a.exit_code == b.exit_code == 1, b.stderr
    assert "Traceback" not in b.stderr and b.stderr.count("error:") == 1
    ra, rb = read(local), read(remote)
    assert rb.num_rows == ra.num_rows == 12
    assert rb.column("path").to_pylist() == [uri(Path(p)) for p in ra.column("path").to_pylist()]
    np.testing.assert_array_equal(read_heatmaps(rb), read_heatmaps(ra))
    assert read_errors(remote).column("path").to_pylist() == [uri(photos / "broken.png")]
    again = run("explain", TINY, uri(photos), "--recursive", "--parquet", uri(remote), "--shard-size", "5")
    assert again.exit_code == 1 and "3 shard(s) already done" in again.stdout  # the broken image still counts
    assert "1 image(s) of the shards already done had failed in an earlier run" in again.stderr


def test_uri_globs_lists_and_manifests(photos, tmp_path) -> None:
    """A URI glob (``**`` and ``[…]``), a list and a CSV manifest on a URI, naming paths relative
    to themselves, expand as their local forms do."""
    (photos / "list.txt").write_text("img0001.png\n# a comment\nsub/img0000.png\n")
    (photos / "manifest.csv").write_text("path,class\nimg0002.png,1\nsub/img0000.png,\n")
    sources, errors = expand_sources([f"{uri(photos)}/**/img000[0-1].png", f"{uri(photos)}/list.txt",
                                      f"{uri(photos)}/manifest.csv", f"{uri(photos)}/none/*.png"])
    assert [s.path for s in sources] == [uri(photos / n) for n in
                                         ("img0000.png", "img0001.png", "sub/img0000.png", "img0002.png")]
    assert [s.class_index for s in sources] == [None, None, None, 1]
    assert len(errors) == 1 and "matches no image files" in errors[0]
    missing, errors = expand_sources([uri(tmp_path / "nothing")])
    assert missing == [] and "no such file or directory" in errors[0]


def test_uri_images_explain_like_files(photos) -> None:
    """The engine reads a URI's bytes with onnxcam's own loader: the same heatmap as the file."""
    explainer = Explainer(TINY)
    files = [str(photos / "img0003.png"), str(photos / "broken.png")]
    local = list(iter_explain(explainer, files, ["gradcam"]))
    remote = list(iter_explain(explainer, [uri(Path(f)) for f in files], ["gradcam"]))
    np.testing.assert_array_equal(remote[0].results["gradcam"].heatmaps, local[0].results["gradcam"].heatmaps)
    assert remote[1].error.startswith(uri(photos / "broken.png")) and "not an image" in remote[1].error
    assert remote[1].error.split(": ", 1)[1] == local[1].error.split(": ", 1)[1]


@pytest.fixture()
def mock_fs(monkeypatch):
    """``mock://`` URIs resolve to one in-memory pyarrow file system (no rename on the local disk)."""
    fs = pafs._MockFileSystem()
    real = storage._filesystem

    def resolve(location: str):
        if location.startswith("mock://"):
            return fs, location[len("mock://"):].strip("/")
        return real(location)

    monkeypatch.setattr(storage, "_filesystem", resolve)
    return fs


def test_parquet_output_on_a_non_local_file_system_resumes(photos, mock_fs) -> None:
    """The sharded writer on an in-memory file system: whole shards, no temporary files left, a
    lost shard rewritten alone on the rerun, a different run refused."""
    explainer = Explainer(TINY)
    sources, _ = expand_sources([str(photos)])
    first = explain_to_parquet(explainer, sources, "mock://bucket/run", ["gradcam"], shard_size=4)
    assert (first.explained, first.failed) == (11, 1)
    names = [i.path for i in mock_fs.get_file_info(pafs.FileSelector("bucket/run", recursive=True))]
    assert not [n for n in names if n.endswith(".tmp")]
    table = pq.read_table(f"bucket/run/{EXPLANATIONS}", filesystem=mock_fs)
    mock_fs.delete_file(f"bucket/run/{EXPLANATIONS}/part-00001.parquet")
    again = explain_to_parquet(explainer, sources, "mock://bucket/run", ["gradcam"], shard_size=4)
    assert (again.explained, again.failed, again.skipped_shards) == (4, 0, 2)
    back = pq.read_table(f"bucket/run/{EXPLANATIONS}", filesystem=mock_fs).sort_by("index")
    np.testing.assert_array_equal(read_heatmaps(back), read_heatmaps(table.sort_by("index")))
    assert pq.read_table(f"bucket/run/{ERRORS}", filesystem=mock_fs).num_rows == 1
    from onnxcam.models.files import OutputError

    with pytest.raises(OutputError, match="holds another run"):
        explain_to_parquet(explainer, sources, "mock://bucket/run", ["gradcam++"], shard_size=4)


def test_a_bad_uri_is_one_error_line(tmp_path) -> None:
    result = run("explain", TINY, "nosuchscheme://x/y.png", "--parquet", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "nosuchscheme://x/y.png" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("pattern", "name", "matches"), [
    ("*.jpg", "a.jpg", True), ("*.jpg", "d/a.jpg", False), ("**/*.jpg", "a.jpg", True),
    ("**/*.jpg", "d/e/a.jpg", True), ("d/?.png", "d/ab.png", False), ("[a-c]1.png", "b1.png", True),
    ("[!a]1.png", "a1.png", False), ("a+b(1).png", "a+b(1).png", True),
])
def test_uri_glob_patterns(pattern, name, matches) -> None:
    assert bool(storage._glob_regex(pattern).match(name)) is matches


def test_evaluate_writes_its_rows_to_a_uri(tmp_path) -> None:
    """``evaluate --parquet file://…``: the rows land under the URI and the summary equals the
    plain evaluation's."""
    import json

    write_images(tmp_path / "img", 6)
    args = ["evaluate", TINY, tmp_path / "img", "-m", "gradcam", "--metrics", "confidence_change,sparsity"]
    plain = run(*args, "--out", tmp_path / "plain")
    kept = run(*args, "--out", tmp_path / "kept", "--parquet", uri(tmp_path / "rows dir"), "--shard-size", "4")
    assert plain.exit_code == kept.exit_code == 0, kept.stderr
    assert json.loads((tmp_path / "kept" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert pq.read_table(tmp_path / "rows dir" / "scores").num_rows == 6
