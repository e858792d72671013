"""Default Grad-CAM target layer and preprocessing for torchvision classifiers, by family.

Target layers follow pytorch-grad-cam's conventions (the last feature map before global
pooling), named as in ``model.named_modules()``. Architectures not covered by a family rule, or
models whose rule's module is missing (e.g. a user's modified network), fall back to
:func:`onnxcam.models.target_search.search_target_layer`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING
from collections.abc import Callable, Sequence

from onnxcam.models.preprocess import Preprocess, imagenet
from onnxcam.models.target_search import search_target_layer, vit_target_layer

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["family_target_layer", "default_target_layer", "default_preprocess"]


def _last_index(attr: str) -> Callable[[nn.Module], str | None]:
    """Rule: the last child of ``model.<attr>`` (pytorch-grad-cam's ``model.<attr>[-1]``)."""

    def rule(model: nn.Module) -> str | None:
        seq = getattr(model, attr, None)
        children = list(seq.named_children()) if seq is not None else []
        return f"{attr}.{children[-1][0]}" if children else None

    return rule


def _fixed(name: str) -> Callable[[nn.Module], str | None]:
    return lambda _model: name


# (arch-name prefix, rule) — first match wins, so longer prefixes come first.
_FAMILY_RULES: list[tuple[str, Callable[[nn.Module], str | None]]] = [
    ("resnet", _fixed("layer4")),
    ("resnext", _fixed("layer4")),
    ("wide_resnet", _fixed("layer4")),
    ("vgg", _last_index("features")),
    ("alexnet", _last_index("features")),
    ("densenet", _fixed("features")),
    ("mobilenet_v2", _fixed("features")),
    ("mobilenet_v3", _fixed("features")),
    ("efficientnet", _fixed("features")),
    ("convnext", _fixed("features")),
    ("squeezenet", _fixed("features")),  # the head is Dropout→Conv→ReLU→AvgPool on this map
    ("mnasnet", _fixed("layers")),
    ("regnet", _fixed("trunk_output")),
    ("inception_v3", _fixed("Mixed_7c")),
    ("googlenet", _fixed("inception5b")),
    ("shufflenet", _fixed("conv5")),
    ("maxvit", _last_index("blocks")),  # blocks is a ModuleList: never called itself
    ("swin", _fixed("permute")),  # features is NHWC; permute is the normed map as NCHW
    ("vit_", lambda m: vit_target_layer(m, image_hw=(m.image_size,) * 2)),  # encoder.layers.<last>.ln_1
]


def family_target_layer(arch_name: str, model: nn.Module) -> str | None:
    """The family rule's target for ``arch_name`` if one applies and the module exists, else None."""
    arch = arch_name.strip().lower()
    modules = dict(model.named_modules())
    for prefix, rule in _FAMILY_RULES:
        if arch.startswith(prefix):
            name = rule(model)
            return name if name and name in modules else None
    return None


def default_target_layer(
    arch_name: str, model: nn.Module, input_size: Sequence[int] | None = None
) -> str:
    """Default Grad-CAM target layer for a torchvision classifier.

    Args:
        arch_name: torchvision architecture name (``resnet50``, ``vgg16``, ...).
        model: the built model (family rules read its structure; the fallback runs it).
        input_size: ``(C, H, W)`` for the fallback's dummy forward pass; defaults to the
            architecture's preprocessing size.

    Raises:
        ValueError: no family rule applies and the model has no spatial output.
    """
    name = family_target_layer(arch_name, model)
    if name is not None:
        return name
    if input_size is None:
        input_size = default_preprocess(arch_name, model).input_size
    return search_target_layer(model, input_size)


def default_preprocess(arch_name: str, model: nn.Module | None = None) -> Preprocess:
    """Evaluation preprocessing torchvision documents for ``arch_name``'s ImageNet weights.

    Reads the resize/crop/mean/std of the architecture's weight enum (no download), preferring
    ``IMAGENET1K_V1`` (the original recipe, e.g. 256→224 for ResNet, 342→299 for Inception v3),
    and, for models with a fixed ``image_size`` (ViT), weights at that resolution. Unknown
    architectures get :data:`onnxcam.models.preprocess.IMAGENET` (or the model's ``image_size``).
    """
    fixed = getattr(model, "image_size", None) if model is not None else None
    fixed = fixed if isinstance(fixed, int) else None
    for crop, resize, mean, std in _weight_transforms(arch_name):
        if fixed is None or crop == fixed:
            return Preprocess(size=(crop, crop), resize=resize, mean=mean, std=std)
    if fixed is not None:
        return imagenet(fixed, round(fixed / 0.875))
    if arch_name.strip().lower().startswith("inception"):
        return imagenet(299, 342)
    return imagenet(224, 256)


def _weight_transforms(
    arch_name: str,
) -> list[tuple[int, int, tuple[float, ...], tuple[float, ...]]]:
    """(crop, resize, mean, std) of each weight enum member, IMAGENET1K_V1 first; [] if unknown."""
    try:
        from torchvision.models import get_model_weights

        members = list(get_model_weights(arch_name.strip().lower()))
    except Exception:  # unknown name, or torchvision missing
        return []
    members.sort(key=lambda w: w.name != "IMAGENET1K_V1")
    found = []
    for w in members:
        try:
            t = w.transforms()
            found.append((int(t.crop_size[0]), int(t.resize_size[0]), tuple(t.mean), tuple(t.std)))
        except (AttributeError, IndexError, TypeError):  # a non-ImageClassification transform
            continue
    return found
