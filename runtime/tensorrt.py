"""TensorRT through onnxruntime: one set of settings for onnxcam's own sessions and for Triton.

TensorRT builds an engine per input shape, which takes minutes for a ResNet. onnxcam therefore asks for

- an engine cache and a timing cache in ``cache_dir`` (default ``$XDG_CACHE_HOME/onnxcam/tensorrt``),
  so an engine is built once per machine and model;
- one optimisation profile covering batches 1 … ``max_batch`` of every input whose only dynamic axis
  is the batch (the image, ``class_index``), at the graph's own sizes, so a new batch size does not
  rebuild (a graph of any image size gets no profile: TensorRT then builds per shape, cached);
- fp16 kernels when ``fp16`` is set (TensorRT keeps float32 where fp16 would lose the result).

The same settings become onnxruntime's provider options (:func:`provider_options`; what a user
passes with ``--providers tensorrt:key=value`` wins) and the parameters of the ``tensorrt``
accelerator in a Triton ``config.pbtxt`` (:func:`triton_parameters`), whose onnxruntime backend
passes them to the same provider.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TENSORRT = "TensorrtExecutionProvider"
Shape = Sequence[int | str | None]


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/onnxcam/tensorrt`` (when absolute), else ``~/.cache/onnxcam/tensorrt``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return str(base / "onnxcam" / "tensorrt")


@dataclass(frozen=True)
class TensorRTSettings:
    """What onnxcam asks of TensorRT (see the module docstring)."""

    max_batch: int = 8
    fp16: bool = False
    cache_dir: str | None = None
    workspace_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.workspace_bytes < 1:
            raise ValueError("max_batch and workspace_bytes must be ≥ 1")

    @property
    def cache(self) -> str:
        return self.cache_dir or default_cache_dir()


def profile_shapes(inputs: Sequence[tuple[str, Shape]], max_batch: int) -> dict[str, str]:
    """``trt_profile_{min,opt,max}_shapes``: batch 1, ``max_batch`` and ``max_batch`` of each
    input whose only dynamic axis is the first; {} when another axis is dynamic."""
    batched = []
    for name, shape in inputs:
        rest = list(shape[1:])
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in rest):
            return {}
        if shape and not isinstance(shape[0], int):
            batched.append((name, rest))
    if not batched:
        return {}

    def at(batch: int) -> str:
        return ",".join(f"{name}:" + "x".join(str(d) for d in [batch, *rest]) for name, rest in batched)

    return {"trt_profile_min_shapes": at(1), "trt_profile_opt_shapes": at(max_batch),
            "trt_profile_max_shapes": at(max_batch)}


def _common(settings: TensorRTSettings, inputs: Sequence[tuple[str, Shape]]) -> dict[str, str]:
    return {"trt_engine_cache_enable": "1", "trt_engine_cache_path": settings.cache,
            **profile_shapes(inputs, settings.max_batch)}


def provider_options(settings: TensorRTSettings, inputs: Sequence[tuple[str, Shape]],
                     given: dict[str, str] | None = None) -> dict[str, str]:
    """onnxruntime's TensorRT provider options for ``inputs`` (name, shape); ``given`` wins."""
    options = {**_common(settings, inputs), "trt_timing_cache_enable": "1", "trt_timing_cache_path": settings.cache,
               "trt_fp16_enable": "1" if settings.fp16 else "0", "trt_max_workspace_size": str(settings.workspace_bytes)}
    return {**options, **{k: str(v) for k, v in (given or {}).items()}}


def triton_parameters(settings: TensorRTSettings, inputs: Sequence[tuple[str, Shape]]) -> list[tuple[str, str]]:
    """The ``tensorrt`` accelerator's parameters in Triton's onnxruntime backend (its key names)."""
    return [("precision_mode", "FP16" if settings.fp16 else "FP32"),
            ("max_workspace_size_bytes", str(settings.workspace_bytes)), *_common(settings, inputs).items()]


def with_tensorrt_options(providers: Sequence, settings: TensorRTSettings,
                          inputs: Sequence[tuple[str, Shape]]) -> list:
    """``providers`` (names or (name, options)) with TensorRT's entry given :func:`provider_options`."""
    from onnxcam.runtime.providers import canonical_name

    out = []
    for entry in providers:
        name, given = (entry[0], entry[1]) if isinstance(entry, tuple) else (entry, None)
        out.append((TENSORRT, provider_options(settings, inputs, given)) if canonical_name(name) == TENSORRT else entry)
    return out
