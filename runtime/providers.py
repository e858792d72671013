"""Execution providers, chosen once per process, and a session runner.

``providers=None`` means CUDA when it really initialises, else CPU. "Really" is probed: the
provider must be in ``onnxruntime.get_available_providers()`` *and* a session on a tiny
in-memory model must keep it in ``session.get_providers()`` (ORT silently falls back to CPU when
e.g. libcublas is missing). Before a GPU provider is probed, ``onnxruntime.preload_dlls()`` makes
the CUDA / cuDNN libraries of NVIDIA's pip wheels (``onnxcam[cuda]``) loadable. The probe's own
output (ORT's logger writes to file descriptor 2) is captured, never shown, and read for the
reason; ORT's process-wide log level is left alone. A provider that was asked for (or CUDA when a
GPU is visible) and does not work gets one warning line with that reason and the fix, once.
Without a visible GPU the default choice is the CPU at once (no CUDA libraries loaded).
Probe results are cached per (provider, options).
"""
from __future__ import annotations

import contextlib
import functools
import glob
import io
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
import onnxruntime as ort

log = logging.getLogger("onnxcam")

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
ProviderSpec = str | tuple[str, dict[str, Any]]
_ALIASES = {"cpu": CPU, "cuda": CUDA, "gpu": CUDA, "tensorrt": "TensorrtExecutionProvider",
            "trt": "TensorrtExecutionProvider", "rocm": "ROCMExecutionProvider",
            "openvino": "OpenVINOExecutionProvider", "dml": "DmlExecutionProvider",
            "coreml": "CoreMLExecutionProvider"}
_GPU_PROVIDERS = {CUDA, "TensorrtExecutionProvider"}
#: the pip distributions that install the ``onnxruntime`` package (only one may be installed)
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                         "onnxruntime-qnn", "onnxruntime-rocm")
_warned: set[str] = set()


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


@dataclass(frozen=True)
class Probe:
    """Whether a provider works here, and onnxruntime's reason when it does not."""

    name: str
    works: bool
    reason: str | None = None


@contextlib.contextmanager
def _captured_output() -> Iterator[io.StringIO]:
    """Everything written to file descriptor 2 (ORT's C++ logger) and to Python's stdout / stderr
    while the block runs, collected into the yielded buffer instead of shown."""
    buffer = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                yield buffer
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            buffer.write(sink.read().decode("utf-8", "replace"))


def _reason(text: str) -> str | None:
    """The most telling line of ORT's output about a provider that failed (a library it could not
    load, else its first error), without colours and timestamps."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    found = re.search(r"with error: ([^\n]+)", text)
    if found:
        return found.group(1).strip()
    lines = [re.sub(r"^\S+ \S+ \[[EW]:onnxruntime:[^\]]*\] ", "", line).strip()
             for line in text.splitlines() if "rror" in line or "ailed" in line]
    return lines[0][:300] if lines else None


@functools.cache
def _preload_gpu_libraries() -> None:
    """``onnxruntime.preload_dlls()`` once (onnxruntime-gpu ≥ 1.21), quietly."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    with _captured_output():
        try:
            preload()
        except Exception:  # noqa: BLE001  (missing NVIDIA wheels: the probe says why)
            pass


@functools.cache
def _probe(name: str, options: tuple[tuple[str, str], ...]) -> Probe:
    if name == CPU:
        return Probe(name, True)
    if name not in ort.get_available_providers():
        return Probe(name, False, f"not in this onnxruntime build ({', '.join(ort.get_available_providers())})")
    if name in _GPU_PROVIDERS:
        _preload_gpu_libraries()
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    with _captured_output() as output:
        try:
            session = ort.InferenceSession(probe_model_bytes(), opts, providers=[(name, dict(options)), CPU])
        except Exception as exc:  # noqa: BLE001  (any failure means "does not work here")
            return Probe(name, False, " ".join(str(exc).split())[:300] or type(exc).__name__)
    if name in session.get_providers():
        return Probe(name, True)
    return Probe(name, False, _reason(output.getvalue()) or "onnxruntime fell back to the CPU")


def probe(name: str, options: dict[str, Any] | None = None) -> Probe:
    """Whether provider ``name`` (aliases accepted) with ``options`` really runs here (cached)."""
    return _probe(canonical_name(name), tuple(sorted((str(k), str(v)) for k, v in (options or {}).items())))


def provider_works(name: str) -> bool:
    """True when ``name`` is available and a probe session really runs on it (cached)."""
    return probe(name).works


def gpu_visible() -> bool:
    """An NVIDIA GPU this process could reach: a device node (``/dev/nvidia0``…, WSL 2's
    ``/dev/dxg``, Jetson's ``/dev/nvhost-ctrl-gpu``), the driver's ``/proc/driver/nvidia/gpus``
    or ``nvidia-smi`` on the PATH."""
    nodes = glob.glob("/dev/nvidia[0-9]*") + glob.glob("/proc/driver/nvidia/gpus/*")
    return bool(nodes) or any(os.path.exists(p) for p in ("/dev/dxg", "/dev/nvhost-ctrl-gpu")) \
        or shutil.which("nvidia-smi") is not None


def installed_runtimes() -> list[str]:
    """The installed distributions that provide the ``onnxruntime`` package."""
    found = []
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def _fix(name: str) -> str:
    if name in _GPU_PROVIDERS:
        return "pip install 'onnxcam[cuda]' (CUDA and cuDNN from pip) and check the NVIDIA driver (nvidia-smi)"
    return f"install an onnxruntime build with {name}"


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def _check_one_runtime() -> None:
    runtimes = installed_runtimes()
    if len(runtimes) > 1:
        names = [r.split()[0] for r in runtimes]
        keep = "onnxruntime-gpu" if "onnxruntime-gpu" in names else names[-1]
        others = " ".join(n for n in names if n != keep)
        _warn_once("runtimes", f"warning: {' and '.join(runtimes)} are all installed and share the onnxruntime "
                               f"package, so one silently replaces the other; fix: pip uninstall -y {others} && "
                               f"pip install --force-reinstall {keep}")


def resolve_providers(providers: Sequence[ProviderSpec] | None = None) -> list[ProviderSpec]:
    """The provider list to create sessions with; CPU is always the last fallback.

    None → [CUDA, CPU] when CUDA works, else [CPU]; without a visible GPU (``gpu_visible``)
    CUDA is not even probed, since loading its libraries costs ~0.2 s and ~200 MB of memory for
    nothing (ask for ``"cuda"`` to probe it anyway). An explicit list keeps its order but
    quietly drops providers that are unavailable or fail the probe (logged at INFO).
    Entries are names (aliases 'cuda', 'cpu', 'tensorrt', ... accepted) or (name, options).
    """
    _check_one_runtime()
    if providers is None:
        if not gpu_visible():
            return [CPU]
        cuda = probe(CUDA)
        if not cuda.works:
            _warn_once(CUDA, f"warning: a GPU is visible but CUDA does not work ({cuda.reason}); running on the CPU. "
                             f"Fix: {_fix(CUDA)}")
        return [CUDA, CPU] if cuda.works else [CPU]
    if isinstance(providers, (str, tuple)):
        providers = [providers]
    chosen: list[ProviderSpec] = []
    for entry in providers:
        name, opts = (entry[0], entry[1]) if isinstance(entry, tuple) else (entry, None)
        name = canonical_name(name)
        result = probe(name, opts)
        if not result.works:
            _warn_once(name, f"warning: {name} does not work here ({result.reason}); falling back. Fix: {_fix(name)}")
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

    def run_values(self, outputs: Sequence[str], feeds: dict[str, np.ndarray | ort.OrtValue]) -> list[ort.OrtValue]:
        """Run on OrtValues: the outputs stay where the session made them (GPU memory on CUDA), so
        another session can read them there and only what is needed is copied back (``.numpy()``).
        Unlike IO binding this also takes feeds that override an initializer."""
        values = {name: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v))
                  for name, v in feeds.items()}
        return self.session.run_with_ort_values(list(outputs), values)

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
