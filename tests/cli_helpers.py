"""The CLI test helper the test files share (no torch, no onnx: base-install tests use it too)."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result
from PIL import Image

from onnxcam.cli.main import main


def run_cli(*args) -> Result:
    """``onnxcam ARGS...`` in-process, stderr kept apart from stdout, exceptions propagated."""
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def explained_overlay_sizes(model: Path, photo: Path, methods: tuple[str, ...], out: Path) -> list[tuple[int, int]]:
    """``onnxcam explain MODEL PHOTO --method …`` (asserting it succeeds) → the (width, height)
    of each overlay it wrote, in the order of ``methods``."""
    result = run_cli("explain", model, photo, "--out", out, *[a for m in methods for a in ("--method", m)])
    assert result.exit_code == 0, result.output + result.stderr
    sizes = []
    for method in methods:
        with Image.open(out / f"{photo.stem}.{method}.png") as im:
            sizes.append(im.size)
    return sizes
