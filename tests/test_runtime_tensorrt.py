"""TensorRT settings (``runtime.tensorrt``): the profile for the dynamic batch, the caches, options
a user gives winning, the Explainer's session created with them (onnxruntime stood in for: no GPU
here), and the same settings as the ``optimization`` block of a Triton config."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from onnxcam.runtime import Explainer
from onnxcam.runtime import providers as prov
from onnxcam.runtime.tensorrt import (
    TENSORRT,
    TensorRTSettings,
    profile_shapes,
    provider_options,
    triton_parameters,
    with_tensorrt_options,
)

TINY = Path(__file__).parent / "data" / "tiny.cam.onnx"
REAL_SESSION = ort.InferenceSession
IMAGE = ("input", ["N", 3, 32, 32])
CLASSES = ("class_index", ["N"])


def test_a_profile_covers_batches_up_to_the_maximum() -> None:
    assert profile_shapes([IMAGE, CLASSES], 16) == {
        "trt_profile_min_shapes": "input:1x3x32x32,class_index:1",
        "trt_profile_opt_shapes": "input:16x3x32x32,class_index:16",
        "trt_profile_max_shapes": "input:16x3x32x32,class_index:16"}
    assert profile_shapes([("input", ["N", 3, "H", "W"]), CLASSES], 8) == {}  # any image size: per shape
    assert profile_shapes([("input", [2, 3, 32, 32])], 8) == {}  # a fixed batch needs none


def test_provider_options_with_caches_and_the_user_s_options_winning(tmp_path) -> None:
    settings = TensorRTSettings(max_batch=4, cache_dir=str(tmp_path))
    options = provider_options(settings, [IMAGE], {"trt_fp16_enable": 1, "trt_engine_cache_path": "/elsewhere"})
    assert options["trt_engine_cache_enable"] == options["trt_timing_cache_enable"] == "1"
    assert options["trt_timing_cache_path"] == str(tmp_path) and options["trt_engine_cache_path"] == "/elsewhere"
    assert options["trt_fp16_enable"] == "1" and options["trt_profile_max_shapes"] == "input:4x3x32x32"
    assert dict(triton_parameters(TensorRTSettings(fp16=True), [IMAGE]))["precision_mode"] == "FP16"
    assert with_tensorrt_options(["cuda", ("tensorrt", {"a": "b"})], settings, [IMAGE])[0] == "cuda"
    with pytest.raises(ValueError):
        TensorRTSettings(max_batch=0)


class _TensorRTSession:
    """onnxruntime.InferenceSession as on a TensorRT machine: records its providers, runs on CPU."""

    created: list = []

    def __init__(self, model, options=None, providers=None):
        self.created.append(providers)
        self._session = REAL_SESSION(model, options, providers=[prov.CPU])
        self._providers = [p[0] if isinstance(p, tuple) else p for p in providers]

    def get_providers(self):
        return self._providers

    def get_provider_options(self):
        return {}

    def __getattr__(self, name):
        return getattr(self._session, name)


def test_the_explainer_gives_tensorrt_its_cache_and_profile(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(prov, "probe", lambda name, options=None: prov.Probe(prov.canonical_name(name), True))
    monkeypatch.setattr(prov, "_check_one_runtime", lambda: None)
    _TensorRTSession.created = []
    monkeypatch.setattr(prov.ort, "InferenceSession", _TensorRTSession)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    explainer = Explainer(TINY, providers=[("tensorrt", {"trt_fp16_enable": "1"}), "cuda"], batch_size=4)
    last = _TensorRTSession.created[-1]
    name, options = last[0]
    assert name == TENSORRT and last[1:] == [prov.CUDA, prov.CPU]
    shape = "x".join(str(d) for d in explainer.info.image_shape[1:])
    assert options["trt_profile_max_shapes"] == f"{explainer.info.image_input}:4x{shape},class_index:4"
    assert options["trt_engine_cache_path"] == str(tmp_path / "onnxcam" / "tensorrt")
    assert options["trt_fp16_enable"] == "1"  # given with the provider: kept
    x = np.random.default_rng(0).random((2, *explainer.info.image_shape[1:]), np.float32)
    assert explainer.explain(x, method="gradcam").heatmaps.shape[0] == 2


def test_triton_config_gets_the_tensorrt_block(tmp_path) -> None:
    pytest.importorskip("tritonclient.grpc")
    from cli_helpers import run_cli
    from test_cli_triton_repo import parse_config

    result = run_cli("triton-repo", TINY, "-o", tmp_path / "repo", "--tensorrt", "--fp16", "--kind", "KIND_GPU")
    assert result.exit_code == 0, result.stderr
    cfg = parse_config(tmp_path / "repo" / "tiny")
    (accelerator,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert accelerator.parameters["trt_engine_cache_enable"] == "1"
    assert accelerator.parameters["trt_profile_max_shapes"].endswith(f"class_index:{cfg.max_batch_size}")
    cpu = run_cli("triton-repo", TINY, "-o", tmp_path / "cpu", "--tensorrt")
    assert cpu.exit_code == 2 and "KIND_GPU" in cpu.stderr and len(cpu.stderr.strip().splitlines()) == 1
    assert run_cli("triton-repo", TINY, "-o", tmp_path / "x", "--fp16").exit_code == 2
