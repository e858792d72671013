"""onnxcam runtime: heatmaps from an explanation graph with numpy, onnxruntime and Pillow only.

    from onnxcam.runtime import Explainer
    res = Explainer("resnet50.cam.onnx").explain(["cat.jpg"], method="gradcam++")

``METHODS`` is the method registry (name → ``MethodSpec``, see ``runtime.registry``);
``ALL_METHODS`` (the CAM family), ``EXTRA_METHODS`` and ``EVERY_METHOD`` are read from it.
"""
from onnxcam.models.version import __version__  # noqa: F401
from onnxcam.runtime.colormap import colorize, overlay
from onnxcam.runtime.errors import ClassIndexError, ImageError, ModelError, OnnxcamError
from onnxcam.runtime.explainer import Explainer, Explanation
from onnxcam.runtime.images import (Geometry, PreprocessSpec, heatmap_to_original, load_image,
                                    preprocess, preprocess_image)
from onnxcam.runtime.metadata import ModelInfo, read_model_info
from onnxcam.runtime.postprocess import postprocess
from onnxcam.runtime.providers import provider_works, resolve_providers
from onnxcam.runtime.registry import METHODS, MethodSpec, register_method

__all__ = [
    "ALL_METHODS", "EVERY_METHOD", "EXTRA_METHODS", "METHODS", "ClassIndexError", "Explainer", "Explanation",
    "Geometry", "ImageError", "MethodSpec", "ModelError", "ModelInfo", "OnnxcamError", "PreprocessSpec", "colorize",
    "heatmap_to_original", "load_image", "overlay", "postprocess", "preprocess", "preprocess_image",
    "provider_works", "read_model_info", "register_method", "resolve_providers",
]


def __getattr__(name: str) -> tuple[str, ...]:
    from onnxcam.runtime import explainer

    return explainer.__getattr__(name)
