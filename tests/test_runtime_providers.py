"""Execution-provider choice (quiet CUDA probe, CPU fallback) and the session runner."""
from __future__ import annotations

import glob
import logging
import os

import numpy as np
import onnxruntime as ort
import pytest

from onnxcam.runtime import providers as prov
from onnxcam.runtime.providers import CPU, CUDA, Runner, probe_model_bytes, provider_works, resolve_providers


def test_probe_model_runs_and_is_valid_onnx():
    sess = ort.InferenceSession(probe_model_bytes(), providers=[CPU])
    assert sess.run(None, {"x": np.array([2.5], np.float32)})[0].tolist() == [2.5]
    onnx = pytest.importorskip("onnx")
    onnx.checker.check_model(onnx.load_from_string(probe_model_bytes()), full_check=True)


@pytest.fixture(autouse=True)
def fresh_probes():
    """Every test probes afresh and may warn again."""
    prov._probe.cache_clear()
    prov._preload_gpu_libraries.cache_clear()
    prov._warned.clear()
    yield
    prov._probe.cache_clear()
    prov._preload_gpu_libraries.cache_clear()
    prov._warned.clear()


def _probes(working: set[str]):
    return lambda name, options=None: prov.Probe(prov.canonical_name(name), prov.canonical_name(name) in working,
                                                 None if prov.canonical_name(name) in working else "no device")


def test_cuda_probe_is_quiet_and_honest(capfd):
    works = provider_works(CUDA)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    if not glob.glob("/dev/nvidia[0-9]*"):  # no GPU device here: CUDA cannot work
        assert works is False
    assert provider_works(CPU) is True and provider_works("NoSuchExecutionProvider") is False


def test_resolve_none_prefers_cuda_only_when_it_works(monkeypatch):
    monkeypatch.setattr(prov, "gpu_visible", lambda: True)
    monkeypatch.setattr(prov, "probe", _probes({CPU}))
    assert resolve_providers(None) == [CPU]
    monkeypatch.setattr(prov, "probe", _probes({CPU, CUDA}))
    assert resolve_providers(None) == [CUDA, CPU]


def test_without_a_visible_gpu_the_default_is_the_cpu_without_a_probe(monkeypatch):
    def no_probe(name, options=None):
        raise AssertionError(f"probed {name}")

    monkeypatch.setattr(prov, "gpu_visible", lambda: False)
    monkeypatch.setattr(prov, "probe", no_probe)
    monkeypatch.setattr(prov, "_preload_gpu_libraries", no_probe)
    assert resolve_providers(None) == [CPU]


def test_gpu_visible_reads_device_nodes_the_driver_and_nvidia_smi(monkeypatch):
    monkeypatch.setattr(prov.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(prov.os.path, "exists", lambda path: False)
    monkeypatch.setattr(prov.shutil, "which", lambda name: None)
    assert prov.gpu_visible() is False
    monkeypatch.setattr(prov.os.path, "exists", lambda path: path == "/dev/dxg")  # WSL 2
    assert prov.gpu_visible() is True
    monkeypatch.setattr(prov.os.path, "exists", lambda path: False)
    monkeypatch.setattr(prov.glob, "glob", lambda pattern: ["/dev/nvidia0"] if pattern.startswith("/dev/") else [])
    assert prov.gpu_visible() is True


def test_explicit_providers_keep_order_drop_broken_ones_and_end_with_cpu(monkeypatch):
    monkeypatch.setattr(prov, "probe", _probes({CPU, CUDA}))
    assert resolve_providers(["cuda"]) == [CUDA, CPU]
    assert resolve_providers([("CUDAExecutionProvider", {"device_id": 1}), "cpu"]) == [(CUDA, {"device_id": 1}), CPU]
    assert resolve_providers("tensorrt") == [CPU]
    monkeypatch.setattr(prov, "probe", _probes({CPU}))
    assert resolve_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [CPU]


class _FallingBackSession:
    """An InferenceSession whose CUDA provider fails the way a missing CUDA 13 library makes it."""

    def __init__(self, *args, **kwargs) -> None:
        os.write(2, b"\x1b[1;31m2026-12-01 [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] Failed "
                    b"to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open "
                    b"shared object file: No such file or directory\n\x1b[m")
        print("EP Error: falling back")

    def get_providers(self) -> list[str]:
        return [CPU]


def _cuda_that_fails(monkeypatch) -> list:
    preloaded, severities = [], []
    monkeypatch.setattr(prov.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(prov.ort, "InferenceSession", _FallingBackSession)
    monkeypatch.setattr(prov.ort, "preload_dlls", lambda *a, **k: preloaded.append(True), raising=False)
    monkeypatch.setattr(prov.ort, "set_default_logger_severity", severities.append)
    monkeypatch.setattr(prov, "installed_runtimes", lambda: ["onnxruntime-gpu 1.31.1"])
    return [preloaded, severities]


def test_cuda_asked_for_but_broken_warns_once_with_the_reason(monkeypatch, caplog, capfd):
    preloaded, severities = _cuda_that_fails(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="onnxcam"):
        assert resolve_providers(["cuda"]) == [CPU]
        assert resolve_providers([("cuda", {"device_id": 0})]) == [CPU]  # another probe, the same warning
        assert resolve_providers(["cuda"]) == [CPU]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "libcublasLt.so.13: cannot open shared object file" in warnings[0] and "onnxcam[cuda]" in warnings[0]
    assert preloaded == [True]  # preload_dlls before the first GPU probe, once
    assert severities == []  # ORT's process-wide log level is never touched
    out, err = capfd.readouterr()
    assert "EP Error" not in out + err and "libcublasLt" not in out + err  # the probe's own output is captured


def test_cuda_broken_with_a_gpu_visible_warns_without_one_stays_quiet(monkeypatch, caplog):
    _cuda_that_fails(monkeypatch)
    monkeypatch.setattr(prov, "gpu_visible", lambda: False)
    with caplog.at_level(logging.WARNING, logger="onnxcam"):
        assert resolve_providers(None) == [CPU]
    assert not caplog.records
    monkeypatch.setattr(prov, "gpu_visible", lambda: True)
    with caplog.at_level(logging.WARNING, logger="onnxcam"):
        assert resolve_providers(None) == [CPU]
    assert len(caplog.records) == 1 and "a GPU is visible but CUDA does not work" in caplog.records[0].getMessage()


def test_two_onnxruntime_distributions_are_reported_with_the_fix(monkeypatch, caplog):
    monkeypatch.setattr(prov, "installed_runtimes", lambda: ["onnxruntime 1.31.1", "onnxruntime-gpu 1.31.1"])
    with caplog.at_level(logging.WARNING, logger="onnxcam"):
        resolve_providers([CPU])
        resolve_providers([CPU])
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "pip uninstall -y onnxruntime && pip install --force-reinstall onnxruntime-gpu" in message


def test_runner_threads_and_io_binding_on_cpu():
    plain = Runner(probe_model_bytes(), providers=[CPU], intra_op_threads=1)
    assert plain.providers == [CPU] and plain.device == "cpu" and plain.io_binding is False
    assert plain.session.get_session_options().intra_op_num_threads == 1
    bound = Runner(probe_model_bytes(), providers=["cpu"], io_binding=True)
    x = np.array([-1.5], np.float32)
    assert bound.run(["y"], {"x": x})[0].tolist() == plain.run(["y"], {"x": x})[0].tolist() == [-1.5]
    with pytest.raises(ValueError, match="intra_op_threads"):
        Runner(probe_model_bytes(), intra_op_threads=-2)


def test_asking_for_cuda_without_a_gpu_falls_back_with_one_warning(capfd, caplog):
    if provider_works(CUDA):
        pytest.skip("CUDA works on this machine")
    with caplog.at_level(logging.WARNING, logger="onnxcam"):
        runner = Runner(probe_model_bytes(), providers=["CUDAExecutionProvider"])
        Runner(probe_model_bytes(), providers=["CUDAExecutionProvider"])
    assert runner.providers == [CPU] and runner.io_binding is False
    assert len(caplog.records) == 1 and "CUDAExecutionProvider does not work here (" in caplog.records[0].getMessage()
    out, err = capfd.readouterr()
    assert out == "" and "onnxruntime" not in err
