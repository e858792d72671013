"""The Open Inference Protocol (KServe "V2") over HTTP/REST for explanation graphs.

    onnxcam serve resnet50.cam.onnx --port 8000      # then POST /v2/models/resnet50/infer

``protocol`` (tensor JSON / binary codec, error JSON) needs numpy only; ``models`` wraps an
``Explainer`` per graph; ``app`` (Starlette) and the ``onnxcam serve`` command need the
``serve`` extra (starlette, uvicorn). Nothing here is imported by ``onnxcam.runtime`` itself.
"""
from __future__ import annotations

from typing import Any

__all__ = ["create_app", "ModelRegistry", "ServerSettings"]


def __getattr__(name: str) -> Any:  # lazy: importing the package must not need starlette
    if name in ("create_app", "ServerSettings"):
        from onnxcam.runtime.serving import app
        return getattr(app, name)
    if name == "ModelRegistry":
        from onnxcam.runtime.serving.models import ModelRegistry
        return ModelRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
