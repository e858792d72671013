"""Turn a torch ``SOURCE`` (contract §2) into an eval-mode module plus what export needs to know.

Forms: ``torchvision:NAME``, ``timm:NAME``, ``package.module:callable``, registry names
(:mod:`onnxcam.models.registry`) and an ``nn.Module`` itself (``from_module``; Hugging Face
models bring their labels from ``config.id2label``). ``--weights`` is a state_dict file. Every failure raises
:class:`~onnxcam.exporter.errors.ExportError` with a one-line message. torch, torchvision and
timm are imported only when needed.
"""
from __future__ import annotations

import difflib
import importlib
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from onnxcam.exporter.errors import ExportError
from onnxcam.models import registry
from onnxcam.models.errors import param
from onnxcam.models.labels import imagenet_labels
from onnxcam.models.preprocess import IMAGENET, Preprocess, imagenet
from onnxcam.models.weights import (
    WeightsError,
    head_classes,
    load_state_dict_strict,
    read_state_dict,
)

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["TorchSource", "from_module", "load_torch_source", "resolve_target_module"]

_CALLABLE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass
class TorchSource:
    """A loaded torch classifier and its defaults.

    ``default_target_layer`` is computed on first access (architecture rule, registry entry, or
    a hooked dummy forward pass at ``input_size``), so a caller with its own target layer never
    pays for, or fails on, the search; change ``input_size`` before reading it if needed.
    """

    module: nn.Module
    source: str
    preprocess: Preprocess
    labels: list[str] | None
    input_size: tuple[int, int, int]
    _find_target: Callable[[nn.Module, tuple[int, int, int]], str] = field(repr=False)
    _target: str | None = field(default=None, repr=False)

    @property
    def default_target_layer(self) -> str:
        """Module name (as in ``named_modules()``) Grad-CAM targets when none is given."""
        if self._target is None:
            try:
                self._target = self._find_target(self.module, self.input_size)
            except ExportError:
                raise
            except Exception as e:
                raise ExportError(
                    f"cannot find a default target layer for {self.source} with input "
                    f"{self.input_size}: {_one_line(e)}; pass {param('target_layer')}"
                ) from None
        return self._target


def load_torch_source(source: str | nn.Module, weights: str | None = None) -> TorchSource:
    """Load ``source`` (see module docstring), apply ``weights`` if given, return it in eval mode.

    Raises:
        ExportError: unknown or unsupported source, missing package, unreadable or
            mismatching weights, or a callable that does not return an ``nn.Module``.
    """
    if not isinstance(source, str):
        _require("torch", "PyTorch", "export")
        from torch import nn

        if not isinstance(source, nn.Module):
            raise ExportError(f"source is a {type(source).__name__}: give a torch.nn.Module, a source name or "
                              "an .onnx file")
        loaded = from_module(source, weights=weights)
        loaded.module.eval()
        return loaded
    src = source.strip()
    if src.lower().endswith(".onnx"):
        raise ExportError(f"{source} is an ONNX file, not a torch source")
    _require("torch", "PyTorch", "export")
    if src.startswith("torchvision:"):
        loaded = _from_torchvision(src, src.split(":", 1)[1].strip(), weights)
    elif src.startswith("timm:"):
        loaded = _from_timm(src, src.split(":", 1)[1].strip(), weights)
    elif _is_registry_name(src):
        loaded = _from_registry(src, weights)
    elif _CALLABLE.match(src):
        loaded = _from_callable(src, weights)
    else:
        close = difflib.get_close_matches(src.lower(), registry.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ExportError(
            f"unknown model source {source!r}{hint}; use torchvision:NAME, timm:NAME, "
            f"package.module:callable, a .onnx file or a registry name "
            f"({', '.join(registry.list_models())})"
        )
    loaded.module.eval()
    return loaded


def resolve_target_module(
    model: nn.Module, name: str, input_size: Sequence[int] = (3, 224, 224)
) -> nn.Module:
    """The sub-module called ``name`` (as in ``model.named_modules()``).

    Raises:
        ExportError: no such module (naming the closest names and a few spatial layers found
            by a dummy forward pass at ``input_size``), or a container that is never called.
    """
    from torch import nn

    modules = dict(model.named_modules())
    module = modules.get(name) if name else None
    if module is not None:
        if type(module).forward is nn.Module.forward:  # a container without forward (ModuleList, ...)
            children = [f"{name}.{c}" for c, _ in module.named_children()]
            raise ExportError(
                f"target layer {name!r} is a {type(module).__name__}, which never runs itself; "
                f"pick one of its children, e.g. {children[-1] if children else name + '.0'}"
            )
        return module
    close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.6)
    try:
        from onnxcam.models.target_search import spatial_layers

        hints = spatial_layers(model, input_size, outermost=True)[:5]
    except Exception:  # the model does not run at input_size: list its top-level children
        hints = [n for n, _ in model.named_children()][-5:]
    did_you_mean = f"; did you mean {', '.join(close)}?" if close else ""
    raise ExportError(
        f"unknown target layer {name!r}{did_you_mean}; spatial layers (last first): {', '.join(hints)}"
    )


def _from_torchvision(src: str, name: str, weights: str | None) -> TorchSource:
    tv = _require("torchvision", "torchvision", "export")
    from onnxcam.models.torchvision_defaults import (
        default_preprocess,
        default_target_layer,
    )

    classifiers = tv.models.list_models(module=tv.models)
    if name not in classifiers:
        if name in tv.models.list_models():
            raise ExportError(f"torchvision model {name!r} is not an image classifier")
        close = difflib.get_close_matches(name.lower(), classifiers, n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ExportError(f"unknown torchvision model {name!r}{hint}")

    def build(**kwargs: Any) -> nn.Module:
        with warnings.catch_warnings():  # googlenet/inception_v3 notice about their random init
            warnings.filterwarnings("ignore", "The default weight initialization", FutureWarning)
            return tv.models.get_model(name, weights=None, **kwargs)

    model, num_classes = _build_with_weights(build, weights, src, 1000)
    pre = default_preprocess(name, model)
    return TorchSource(
        module=model,
        source=src,
        preprocess=pre,
        labels=imagenet_labels() if num_classes == 1000 else None,
        input_size=pre.input_size,
        _find_target=lambda m, size: default_target_layer(name, m, size),
    )


def _from_timm(src: str, name: str, weights: str | None) -> TorchSource:
    timm = _require("timm", "timm", "timm")
    from onnxcam.models.target_search import search_target_layer

    if not timm.is_model(name):
        close = difflib.get_close_matches(name.lower(), timm.list_models(), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ExportError(f"unknown timm model {name!r}{hint}")

    def build(**kwargs: Any) -> nn.Module:
        return timm.create_model(name, pretrained=False, **kwargs)

    default_classes = int(timm.get_pretrained_cfg_value(name, "num_classes") or 1000)
    model, num_classes = _build_with_weights(build, weights, src, default_classes)
    pre = _timm_preprocess(model)
    return TorchSource(
        module=model,
        source=src,
        preprocess=pre,
        labels=imagenet_labels() if num_classes == 1000 else None,
        input_size=pre.input_size,
        _find_target=search_target_layer,
    )


def _from_registry(src: str, weights: str | None) -> TorchSource:
    spec = registry.get_model(src)
    model = spec.build()
    if weights is not None:
        _load_weights(model, weights, src)
    return TorchSource(
        module=model,
        source=spec.name,
        preprocess=spec.preprocess,
        labels=list(spec.labels) if spec.labels is not None else None,
        input_size=spec.preprocess.input_size,
        _find_target=lambda _m, _size: spec.default_target_layer,
    )


def _from_callable(src: str, weights: str | None) -> TorchSource:
    from torch import nn

    mod_name, attr_path = src.split(":", 1)
    cwd_added = os.getcwd() not in sys.path and "" not in sys.path
    if cwd_added:  # let `onnxcam export mymodels:build` find ./mymodels.py like `python -m` would
        sys.path.insert(0, os.getcwd())
    try:
        try:
            obj: Any = importlib.import_module(mod_name)
        except Exception as e:
            raise ExportError(f"cannot import module {mod_name!r}: {_one_line(e)}") from None
        for part in attr_path.split("."):
            if not hasattr(obj, part):
                raise ExportError(f"module {mod_name!r} has no attribute {attr_path!r}")
            obj = getattr(obj, part)
        if not callable(obj):
            raise ExportError(f"{src} is a {type(obj).__name__}, not a callable")
        try:
            model = obj()
        except Exception as e:
            raise ExportError(f"calling {src}() failed: {_one_line(e)}") from None
    finally:
        if cwd_added:
            sys.path.remove(os.getcwd())
    if not isinstance(model, nn.Module):
        raise ExportError(f"{src}() returned a {type(model).__name__}, not a torch.nn.Module")
    return from_module(model, src, weights)


def from_module(model: nn.Module, source: str | None = None, weights: str | None = None) -> TorchSource:
    """A torch classifier given as a module: preprocessing from a timm ``pretrained_cfg`` or a
    Hugging Face ``config`` (``image_size``, ``num_channels``; ImageNet statistics), labels from
    the config's ``id2label``, the default target found by ``search_target_layer``."""
    from onnxcam.models.target_search import search_target_layer

    if weights is not None:
        _load_weights(model, weights, source or type(model).__name__)
    return TorchSource(
        module=model,
        source=source or f"{type(model).__module__}.{type(model).__qualname__}",
        preprocess=(pre := _module_preprocess(model)),
        labels=_config_labels(model),
        input_size=pre.input_size,
        _find_target=search_target_layer,
    )


def _module_preprocess(model: nn.Module) -> Preprocess:
    from torch import nn

    if isinstance(getattr(model, "pretrained_cfg", None), dict):
        return _timm_preprocess(model)
    config = getattr(model, "config", None)
    channels = getattr(config, "num_channels", None) or next(
        (m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    size = getattr(config, "image_size", None)
    hw = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (list, tuple)) else None
    base = IMAGENET if hw is None or len(hw) != 2 else imagenet(hw, math.floor(min(hw) / 0.875))
    return base if channels == 3 else replace(base, mean=(0.0,) * channels, std=(1.0,) * channels)


def _config_labels(model: nn.Module) -> list[str] | None:
    """Class names from a Hugging Face config's ``id2label`` (keys 0 … C−1), else None."""
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if not isinstance(id2label, dict) or not id2label:
        return None
    try:
        names = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        return None
    return [names[i] for i in range(len(names))] if set(names) == set(range(len(names))) else None


def _timm_preprocess(model: nn.Module) -> Preprocess:
    """Preprocess from a timm model's ``pretrained_cfg`` (resize = floor(size / crop_pct), as timm)."""
    cfg = model.pretrained_cfg  # type: ignore[attr-defined]
    _, h, w = cfg.get("input_size", (3, 224, 224))
    crop_pct = cfg.get("crop_pct") or 0.875
    pre = imagenet((h, w), math.floor(min(h, w) / crop_pct))
    mean, std = cfg.get("mean", pre.mean), cfg.get("std", pre.std)
    return Preprocess(size=(h, w), resize=pre.resize, mean=tuple(mean), std=tuple(std))


def _build_with_weights(
    build: Callable[..., nn.Module], weights: str | None, src: str, default_classes: int
) -> tuple[nn.Module, int]:
    """Build, then load ``weights``; a checkpoint whose only difference is the number of
    classes (a fine-tuned head) rebuilds the model with that many classes first."""
    try:
        model = build()
    except Exception as e:
        raise ExportError(f"cannot build {src}: {_one_line(e)}") from None
    if weights is None:
        return model, default_classes
    state = _read_weights(weights)
    n = head_classes(model, state, default_classes)
    if n is not None:
        model = build(num_classes=n)
    _apply_weights(model, state, weights, src)
    return model, n if n is not None else default_classes


def _load_weights(model: nn.Module, weights: str, src: str) -> None:
    _apply_weights(model, _read_weights(weights), weights, src)


def _read_weights(weights: str) -> dict[str, Any]:
    try:
        return read_state_dict(weights)
    except WeightsError as e:
        raise ExportError(str(e)) from None


def _apply_weights(model: nn.Module, state: dict[str, Any], weights: str, src: str) -> None:
    try:
        load_state_dict_strict(model, state, f"weights {weights} for {src}")
    except WeightsError as e:
        raise ExportError(str(e)) from None


def _is_registry_name(src: str) -> bool:
    try:
        registry.get_model(src)
    except KeyError:
        return False
    return True


def _require(module: str, what: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{what} is not installed: pip install 'onnxcam[{extra}]'") from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__
