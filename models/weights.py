"""Read PyTorch state_dict files and load them strictly, with one-line mismatch reports.

torch is imported inside the functions. Errors are :class:`WeightsError` (a ``ValueError``)
so callers can turn them into their own user-facing error type.
"""
from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["WeightsError", "read_state_dict", "head_classes", "load_state_dict_strict", "with_metadata"]

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile
_SHOW = 3


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the model (one-line message)."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.pt``/``.pth`` file into a flat ``{name: tensor}`` dict on the CPU.

    Accepts a plain state_dict, one wrapped under ``state_dict``/``model``/``model_state_dict``/
    ``module`` (training checkpoints), or a whole pickled ``nn.Module`` (its ``state_dict()``).
    Files are first read with ``weights_only=True``; only a file that needs full unpickling (a
    pickled module) is read again without that restriction: it is the user's own file.
    ``module.`` / ``_orig_mod.`` prefixes carried by every key are removed. The state_dict's
    ``_metadata`` (per-module versions that ``_load_from_state_dict`` reads, e.g. MNASNet's) is
    kept, with the same prefixes removed.
    """
    import torch
    from torch import nn

    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file not found: {p}")
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:
            raise WeightsError(
                f"cannot read weights file {p} (a pickled module needs its class importable; "
                f"saving model.state_dict() avoids that): {_one_line(e)}"
            ) from None
    except Exception as e:
        raise WeightsError(
            f"cannot read weights file {p} (not a PyTorch .pt/.pth file?): {_one_line(e)}"
        ) from None
    for _ in range(3):
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
            key = next((k for k in _WRAPPER_KEYS if k in obj), None)
            if key is not None:
                obj = obj[key]
                continue
        break
    if not isinstance(obj, Mapping) or not obj or not _is_tensor_dict(obj):
        raise WeightsError(
            f"weights file {p} holds no state_dict (found {_describe(obj)}); expected a dict of "
            f"tensors, optionally under 'state_dict' or 'model', or a pickled nn.Module"
        )
    state, metadata = dict(obj), dict(getattr(obj, "_metadata", None) or {})
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
            stem = prefix.rstrip(".")
            metadata = {("" if k == stem else k[len(prefix):]): v for k, v in metadata.items()
                        if k == stem or k.startswith(prefix)}
    return with_metadata(state, metadata)


def with_metadata(state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None) -> dict:
    """``state`` as an ordered dict carrying ``metadata`` as its ``_metadata`` attribute, the form
    ``nn.Module.load_state_dict`` reads module versions from."""
    out = OrderedDict(state)
    if metadata:
        out._metadata = OrderedDict(metadata)  # type: ignore[attr-defined]
    return out


def head_classes(model: nn.Module, state: Mapping[str, torch.Tensor], num_classes: int) -> int | None:
    """The class count of a fine-tuned checkpoint, if that is its only difference from ``model``.

    Returns ``n`` when every key matches except tensors whose first dimension is
    ``num_classes`` in the model and ``n`` in ``state`` (classifier weights and biases, the
    Inception auxiliary head included); otherwise ``None``.
    """
    own = model.state_dict()
    if set(own) != set(state):
        return None
    counts = set()
    for k, t in own.items():
        s = state[k]
        if tuple(s.shape) == tuple(t.shape):
            continue
        if s.dim() != t.dim() or s.dim() == 0 or t.shape[0] != num_classes or s.shape[1:] != t.shape[1:]:
            return None
        counts.add(int(s.shape[0]))
    return counts.pop() if len(counts) == 1 else None


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], label: str) -> None:
    """``model.load_state_dict(state, strict=True)``, reporting mismatches in one line.

    Args:
        label: how to name the weights in messages, e.g. ``"weights r50.pth for torchvision:resnet50"``.

    Raises:
        WeightsError: missing, unexpected or differently shaped tensors (the first few of each).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(t.shape)}"
        for k, t in own.items()
        if k in state and tuple(state[k].shape) != tuple(t.shape)
    ]
    parts = [
        f"{len(items)} {what} ({_first(items)})"
        for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if items
    ]
    if parts:
        raise WeightsError(f"{label} do not match the model: {'; '.join(parts)}")
    try:
        # a file without module versions (a hand-built dict) gets the model's own
        metadata = getattr(state, "_metadata", None) or getattr(own, "_metadata", None)
        model.load_state_dict(with_metadata(state, metadata), strict=True)
    except (RuntimeError, ValueError) as e:  # dtypes, a module's own version check, ...
        raise WeightsError(f"{label} do not load: {_one_line(e)}") from None


def _is_tensor_dict(obj: Mapping[Any, Any]) -> bool:
    import torch

    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _first(items: list[str]) -> str:
    more = f", ... {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)[:4]
        return f"a {type(obj).__name__} with keys {keys}" if keys else f"an empty {type(obj).__name__}"
    return f"a {type(obj).__name__}"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__
