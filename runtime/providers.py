"""Execution providers, chosen once per process, and a session runner.

``providers=None`` means CUDA when it really initialises, else CPU. "Really" is probed
quietly: the provider must be listed by ``onnxruntime.get_available_providers()`` *and* a
session on a tiny in-memory model must keep it in ``session.get_providers()`` (ORT silently
falls back to CPU when e.g. libcublas is missing). During the probe ORT's default logger is
set to severity 4 (fatal only) and Python-level prints of onnxruntime are captured, so a CPU
machine prints nothing; afterwards the default logger is reset to ORT's default (2, warning). Probe results are cached per process.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
from typing import Any
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

log = logging.getLogger("onnxcam")

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
ProviderSpec = str | tuple[str, dict[str, Any]]
_ALIASES = {"cpu": CPU, "cuda": CUDA, "gpu": CUDA, "tensorrt": "TensorrtExecutionProvider",
            "trt": "TensorrtExecutionProvider", "rocm": "ROCMExecutionProvider",
            "openvino": "OpenVINOExecutionProvider", "dml": "DmlExecutionProvider",
            "coreml": "CoreMLExecutionProvider"}
_ORT_DEFAULT_SEVERITY = 2


def _field(num: int, payload: bytes | str | int) -> bytes:
    """One protobuf field: varint (wire type 0) for ints, length-delimited (2) otherwise."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)
    if isinstance(payload, int):
        return varint(num << 3) + varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return varint((num << 3) | 2) + varint(len(data)) + data


def probe_model_bytes() -> bytes:
    """A serialized ONNX model y = Identity(x), x float32 [1] (opset 17), built without onnx."""
    def value_info(name: str) -> bytes:
        shape = _field(2, _field(1, _field(1, 1)))          # TensorShapeProto{dim{dim_value: 1}}
        tensor_type = _field(1, _field(1, 1) + shape)      # TypeProto{tensor_type{elem_type: FLOAT}}
        return _field(1, name) + _field(2, tensor_type)
    node = _field(1, "x") + _field(2, "y") + _field(4, "Identity")
    graph = _field(1, node) + _field(2, "probe") + _field(11, value_info("x")) + _field(12, value_info("y"))
    return _field(1, 8) + _field(7, graph) + _field(8, _field(1, "") + _field(2, 17))


def canonical_name(provider: str) -> str:
    """'cuda' → 'CUDAExecutionProvider' etc.; full names pass through."""
    return _ALIASES.get(provider.lower(), provider)


@functools.cache
def provider_works(name: str) -> bool:
    """True when ``name`` is available and a probe session really runs on it (cached)."""
    if name == CPU:
        return True
    if name not in ort.get_available_providers():
        return False
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    ort.set_default_logger_severity(4)
    try:  # ORT's Python layer also print()s an "EP Error" banner before falling back
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            sess = ort.InferenceSession(probe_model_bytes(), opts, providers=[name, CPU])
        return name in sess.get_providers()
    except Exception:  # noqa: BLE001  (any failure means "does not work here")
        return False
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)


def resolve_providers(providers: Sequence[ProviderSpec] | None = None) -> list[ProviderSpec]:
    """The provider list to create sessions with; CPU is always the last fallback.

    None → [CUDA, CPU] when CUDA works, else [CPU]. An explicit list keeps its order but
    quietly drops providers that are unavailable or fail the probe (logged at INFO).
    Entries are names (aliases 'cuda', 'cpu', 'tensorrt', ... accepted) or (name, options).
    """
    if providers is None:
        return [CUDA, CPU] if provider_works(CUDA) else [CPU]
    if isinstance(providers, (str, tuple)):
        providers = [providers]
    chosen: list[ProviderSpec] = []
    for entry in providers:
        name, opts = (entry[0], entry[1]) if isinstance(entry, tuple) else (entry, None)
        name = canonical_name(name)
        if not provider_works(name):
            log.info("execution provider %s does not work here; skipped", name)
            continue
        chosen.append((name, opts) if opts else name)
    if CPU not in [c[0] if isinstance(c, tuple) else c for c in chosen]:
        chosen.append(CPU)
    return chosen


class Runner:
    """One onnxruntime session plus the way to run it.

    On CUDA (or when ``io_binding=True``) it runs through IO binding: inputs bound from host
    memory with ``bind_cpu_input``, outputs allocated on the session's device and copied back
    with ``copy_outputs_to_cpu``; on CPU it uses plain ``session.run``. Feeds that override
    an initializer (e.g. ``head_activations`` with its empty default) cannot be IO-bound (ORT
    only binds true graph inputs), so such calls also go through ``session.run``.
    """

    def __init__(self, model: str | bytes, providers: Sequence[ProviderSpec] | None = None,
                 intra_op_threads: int | None = None, io_binding: bool | None = None, spinning: bool = True) -> None:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # e.g. "initializer appears in graph inputs" is expected
        if not spinning:  # idle intra-op threads sleep instead of spinning: other threads (decoders) get the cores
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if intra_op_threads is not None:
            if int(intra_op_threads) < 0:
                raise ValueError(f"intra_op_threads must be ≥ 0, got {intra_op_threads}")
            opts.intra_op_num_threads = int(intra_op_threads)
        self.session = ort.InferenceSession(model, opts, providers=resolve_providers(providers))
        self.providers: list[str] = self.session.get_providers()
        self.device = "cuda" if self.providers[0] == CUDA else "cpu"
        options = self.session.get_provider_options().get(self.providers[0], {})
        self.device_id = int(options.get("device_id", 0) or 0)
        self.io_binding = (self.device == "cuda") if io_binding is None else bool(io_binding)
        self._bindable = {i.name for i in self.session.get_inputs()}

    def run(self, outputs: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the session and return the requested ``outputs`` as numpy arrays, in order."""
        if not self.io_binding or not self._bindable.issuperset(feeds):
            return self.session.run(list(outputs), feeds)
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in outputs:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
