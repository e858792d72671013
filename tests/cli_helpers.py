"""The CLI test helper the test files share (no torch, no onnx: base-install tests use it too)."""
from __future__ import annotations

from click.testing import CliRunner, Result

from onnxcam.cli.main import main


def run_cli(*args) -> Result:
    """``onnxcam ARGS...`` in-process, stderr kept apart from stdout, exceptions propagated."""
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
