"""The built wheel carries what a typed, licensed, versioned package needs: ``py.typed`` for each
of the four packages, the LICENSE, the dataset subpackage, and ``__version__`` equal to the
distribution's version."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_has_py_typed_license_and_every_package(tmp_path) -> None:
    pytest.importorskip("setuptools")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next(tmp_path.glob("onnxcam-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("exporter", "runtime", "cli", "models"):
        assert f"onnxcam/{package}/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), [n for n in names if "dist-info" in n]
    assert "onnxcam/runtime/datasets/engine.py" in names and "onnxcam/models/version.py" in names


def test_version_is_the_distribution_version() -> None:
    from importlib import metadata

    import onnxcam.cli
    import onnxcam.runtime

    assert onnxcam.runtime.__version__ == onnxcam.cli.__version__ == metadata.version("onnxcam")
