"""The served models: one ``Explainer`` per explanation graph, its V2 metadata and inference.

Each model takes its graph's image input (name, datatype and shape read from the onnxruntime
session, so FP32 for ordinary graphs and UINT8 for ``--raw-input`` ones) and an optional
``class_index`` INT64 ``[N]``; request parameters ``method`` (any method the graph supports,
default ``gradcam``) and ``class_index`` (an int or one int per image; negative = top-1). It
answers ``heatmap`` FP32 ``[N, H, W]``, ``logits`` FP32 ``[N, C]`` and ``target`` INT64 ``[N]``.
``infer`` is called from worker threads: onnxruntime sessions may ``run`` concurrently and the
``Explainer`` keeps no per-request state.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np

from onnxcam.models.contract import CLASS_INPUT
from onnxcam.runtime.errors import OnnxcamError
from onnxcam.runtime.explainer import class_indices
from onnxcam.runtime.serving.protocol import DATATYPES, ORT_TO_V2, InferRequest, ProtocolError

VERSION = "1"

OUTPUTS = ("heatmap", "logits", "target")
DEFAULT_METHOD = "gradcam"
PLATFORM = "onnxruntime_onnx"


def model_name(path: str | Path) -> str:
    """The served name of a graph file: its name without ``.onnx`` and then ``.cam``."""
    name = Path(path).name
    for suffix in (".onnx", ".cam"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name


def _dims(shape: Sequence[Any]) -> list[int]:
    return [int(d) if isinstance(d, int) and d > 0 else -1 for d in shape]


class ServedModel:
    """One explanation graph behind the protocol."""

    def __init__(self, name: str, explainer: Any) -> None:
        self.name, self.explainer = name, explainer
        info = explainer.info
        node = next(i for i in info.inputs if i.name == info.image_input)
        datatype = ORT_TO_V2.get(node.type)
        if datatype is None:
            raise OnnxcamError(f"{info.path}: image input type {node.type} cannot be served")
        self.image_input, self.image_datatype = info.image_input, datatype
        self.image_shape = _dims(node.shape)
        height, width = info.input_size or (-1, -1)
        self.output_shapes = {"heatmap": [-1, int(height), int(width)],
                              "logits": [-1, int(info.num_classes or -1)], "target": [-1]}
        self.methods: tuple[str, ...] = tuple(explainer.available_methods)
        self.batcher: Any = None  # a serving.batching.Batcher while the server batches requests

    # -- metadata ----------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """The V2 model metadata response."""
        return {
            "name": self.name, "versions": [VERSION], "platform": PLATFORM,
            "inputs": [{"name": self.image_input, "datatype": self.image_datatype, "shape": self.image_shape},
                       {"name": CLASS_INPUT, "datatype": "INT64", "shape": [-1]}],
            "outputs": [{"name": "heatmap", "datatype": "FP32", "shape": self.output_shapes["heatmap"]},
                        {"name": "logits", "datatype": "FP32", "shape": self.output_shapes["logits"]},
                        {"name": "target", "datatype": "INT64", "shape": [-1]}],
        }

    def _signature(self) -> str:
        return (f"'{self.image_input}' {self.image_datatype} {self.image_shape} and optionally "
                f"'{CLASS_INPUT}' INT64 [-1]")

    # -- inference ---------------------------------------------------------------------------
    def _image(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        unknown = [n for n in inputs if n not in (self.image_input, CLASS_INPUT)]
        if unknown:
            raise ProtocolError(f"unknown input '{unknown[0]}' for model '{self.name}'; it takes {self._signature()}")
        if self.image_input not in inputs:
            raise ProtocolError(f"missing input '{self.image_input}'; model '{self.name}' takes {self._signature()}")
        x = inputs[self.image_input]
        if x.dtype != DATATYPES[self.image_datatype]:
            raise ProtocolError(f"input '{self.image_input}' must be {self.image_datatype}, got "
                                f"{_v2_name(x.dtype)}")
        want = self.image_shape
        if x.ndim != len(want) or any(w > 0 and w != d for w, d in zip(want, x.shape)) or x.shape[0] < 1:
            raise ProtocolError(f"input '{self.image_input}' has shape {list(x.shape)}; model "
                                f"'{self.name}' expects {want} (-1: any size, batch ≥ 1)")
        return x

    def _classes(self, request: InferRequest, n: int) -> int | list[int] | np.ndarray | None:
        param = request.parameters.get("class_index")
        tensor = request.inputs.get(CLASS_INPUT)
        if param is not None and tensor is not None:
            raise ProtocolError(f"give the class either as the '{CLASS_INPUT}' input or as the parameter, not both")
        if tensor is not None:
            if tensor.dtype != DATATYPES["INT64"] or tensor.shape != (n,):
                raise ProtocolError(f"input '{CLASS_INPUT}' must be INT64 [{n}] (one per image), got "
                                    f"{_v2_name(tensor.dtype)} {list(tensor.shape)}")
            return tensor
        if param is None:
            return None
        if not _is_int(param):
            raise ProtocolError(f"parameter 'class_index' must be an integer (one class for every image; per-image "
                                f"classes go in the '{CLASS_INPUT}' input), got {param!r}")
        return param

    def _method(self, request: InferRequest) -> str:
        method = request.parameters.get("method", DEFAULT_METHOD)
        if not isinstance(method, str) or method not in self.methods:
            raise ProtocolError(f"unknown method {method!r} for model '{self.name}'; choose from "
                                f"{', '.join(self.methods)}")
        return method

    def _requested(self, request: InferRequest) -> list[tuple[str, bool]]:
        if request.outputs is None:
            return [(name, request.binary_output) for name in OUTPUTS]
        names = [o.name for o in request.outputs]
        for name in names:
            if name not in OUTPUTS:
                raise ProtocolError(f"unknown output '{name}'; model '{self.name}' has {', '.join(OUTPUTS)}")
        if len(set(names)) != len(names):
            raise ProtocolError("an output is requested twice")
        return [(o.name, o.binary) for o in request.outputs]

    def infer(self, request: InferRequest) -> list[tuple[str, np.ndarray, bool]]:
        """Validate ``request`` and explain it: ``(name, array, binary)`` per requested output.

        Raises ``ProtocolError`` (400) for anything the client got wrong."""
        x = self._image(request.inputs)
        classes = self._classes(request, len(x))
        method, wanted = self._method(request), self._requested(request)
        try:
            if self.batcher is None:
                res = self.explainer.explain(x, method=method, class_index=classes)
            else:  # one class per image, checked here, so that a bad one fails this request only
                per_image = class_indices(classes, len(x), self.explainer.info.num_classes)
                res = self.batcher.explain(x, per_image, method)
        except (OnnxcamError, ValueError) as exc:  # class index out of range, non-finite input, ...
            raise ProtocolError(str(exc)) from None
        arrays = {"heatmap": np.asarray(res.heatmaps, np.float32), "logits": np.asarray(res.logits, np.float32),
                  "target": np.asarray(res.class_index, np.int64)}
        return [(name, arrays[name], binary) for name, binary in wanted]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _v2_name(dtype: np.dtype) -> str:
    return next((k for k, v in DATATYPES.items() if v == dtype), str(dtype))


class ModelRegistry:
    """The served models by name (file stem without ``.cam``), all loaded up front."""

    def __init__(self, models: Sequence[ServedModel]) -> None:
        self.models: dict[str, ServedModel] = {}
        for model in models:
            if model.name in self.models:
                raise OnnxcamError(f"two models would be served as '{model.name}'; rename one file")
            self.models[model.name] = model

    @classmethod
    def load(cls, paths: Sequence[str | Path], providers: Sequence[Any] | None = None,
             intra_op_threads: int | None = None, batch_size: int = 16) -> ModelRegistry:
        """Load every graph (raises ``OnnxcamError`` naming the file that fails)."""
        from onnxcam.runtime.explainer import Explainer

        names = [model_name(p) for p in paths]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise OnnxcamError(f"two models would be served as '{dupes[0]}'; rename one file")
        return cls([ServedModel(name, Explainer(p, providers=providers, intra_op_threads=intra_op_threads,
                                                batch_size=batch_size)) for name, p in zip(names, paths)])

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The model called ``name`` (and ``version``, only "1" exists); ``ProtocolError`` 404 otherwise."""
        model = self.models.get(name)
        if model is None:
            raise ProtocolError(f"unknown model '{name}'; serving {', '.join(sorted(self.models)) or 'nothing'}", 404)
        if version not in (None, "", VERSION):
            raise ProtocolError(f"model '{name}' has no version '{version}' (only '{VERSION}')", 404)
        return model
