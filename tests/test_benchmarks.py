"""The benchmark scripts keep working: each parses its options, the load test runs end to end on
the tiny graph without a failed request, and the GPU check, where there is no working CUDA, is the
dry run that names what it skipped. (Their numbers are read by people, never asserted here.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from onnxcam.runtime.providers import CUDA, probe

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))
TINY = Path(__file__).parent / "data" / "tiny.cam.onnx"


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=BENCHMARKS, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_parses_its_options(script: str) -> None:
    done = _run(script, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")


def test_the_load_test_serves_every_request() -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("tritonclient")
    done = _run("serve_load.py", "--model", str(TINY), "--clients", "3", "--requests", "12", "--baseline-calls", "4",
                "--max-batch-size", "4")
    assert done.returncode == 0, done.stderr
    served = next(line for line in done.stdout.splitlines() if line.startswith("| onnxcam serve over HTTP"))
    assert served.split("|")[5].strip() == "0"  # failed requests
    assert "CPU ms per image: plain inference" in done.stdout


@pytest.mark.skipif(probe(CUDA).works, reason="CUDA works here: the full check takes minutes")
def test_the_gpu_check_is_a_dry_run_without_cuda() -> None:
    done = _run("gpu_check.py", "--runs", "1")
    assert done.returncode == 0, done.stderr
    assert "CPUExecutionProvider       works" in done.stdout
    assert "dry run: CUDA does not work here" in done.stdout and "serving checks" in done.stdout
