"""onnxcam runtime: heatmaps from an explanation graph with numpy, onnxruntime and Pillow only.

    from onnxcam.runtime import Explainer
    res = Explainer("resnet50.cam.onnx").explain(["cat.jpg"], method="gradcam++")
"""
from onnxcam.runtime.colormap import colorize, overlay
from onnxcam.runtime.errors import ClassIndexError, ImageError, ModelError, OnnxcamError
from onnxcam.runtime.explainer import ALL_METHODS, EVERY_METHOD, EXTRA_METHODS, Explainer, Explanation
from onnxcam.runtime.images import (Geometry, PreprocessSpec, heatmap_to_original, load_image,
                                    preprocess, preprocess_image)
from onnxcam.runtime.metadata import ModelInfo, read_model_info
from onnxcam.runtime.methods import METHODS
from onnxcam.runtime.postprocess import postprocess
from onnxcam.runtime.providers import provider_works, resolve_providers

__all__ = [
    "ALL_METHODS", "EVERY_METHOD", "EXTRA_METHODS", "METHODS", "ClassIndexError", "Explainer", "Explanation", "Geometry", "ImageError",
    "ModelError", "ModelInfo", "OnnxcamError", "PreprocessSpec", "colorize", "heatmap_to_original",
    "load_image", "overlay", "postprocess", "preprocess", "preprocess_image", "provider_works",
    "read_model_info", "resolve_providers",
]
