"""Execution-provider choice (quiet CUDA probe, CPU fallback) and the session runner."""
from __future__ import annotations

import glob

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


def test_cuda_probe_is_quiet_and_honest(capfd):
    provider_works.cache_clear()
    works = provider_works(CUDA)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    if not glob.glob("/dev/nvidia[0-9]*"):  # no GPU device here: CUDA cannot work
        assert works is False
    assert provider_works(CPU) is True and provider_works("NoSuchExecutionProvider") is False


def test_resolve_none_prefers_cuda_only_when_it_works(monkeypatch):
    monkeypatch.setattr(prov, "provider_works", lambda name: name == CPU)
    assert resolve_providers(None) == [CPU]
    monkeypatch.setattr(prov, "provider_works", lambda name: name in (CPU, CUDA))
    assert resolve_providers(None) == [CUDA, CPU]


def test_explicit_providers_keep_order_drop_broken_ones_and_end_with_cpu(monkeypatch):
    monkeypatch.setattr(prov, "provider_works", lambda name: name in (CPU, CUDA))
    assert resolve_providers(["cuda"]) == [CUDA, CPU]
    assert resolve_providers([("CUDAExecutionProvider", {"device_id": 1}), "cpu"]) == [(CUDA, {"device_id": 1}), CPU]
    assert resolve_providers("tensorrt") == [CPU]
    monkeypatch.setattr(prov, "provider_works", lambda name: name == CPU)
    assert resolve_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [CPU]


def test_runner_threads_and_io_binding_on_cpu():
    plain = Runner(probe_model_bytes(), providers=[CPU], intra_op_threads=1)
    assert plain.providers == [CPU] and plain.device == "cpu" and plain.io_binding is False
    assert plain.session.get_session_options().intra_op_num_threads == 1
    bound = Runner(probe_model_bytes(), providers=["cpu"], io_binding=True)
    x = np.array([-1.5], np.float32)
    assert bound.run(["y"], {"x": x})[0].tolist() == plain.run(["y"], {"x": x})[0].tolist() == [-1.5]
    with pytest.raises(ValueError, match="intra_op_threads"):
        Runner(probe_model_bytes(), intra_op_threads=-2)


def test_asking_for_cuda_without_a_gpu_falls_back_quietly(capfd):
    if provider_works(CUDA):
        pytest.skip("CUDA works on this machine")
    runner = Runner(probe_model_bytes(), providers=["CUDAExecutionProvider"])
    assert runner.providers == [CPU] and runner.io_binding is False
    out, err = capfd.readouterr()
    assert out == "" and err == ""
