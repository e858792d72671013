"""Find Grad-CAM target layers in arbitrary torch models (torch imported lazily).

The search runs one forward pass on a zero input with forward hooks on every module and
records, in the order the modules *finish* (post-order), each output's shape. The default
target is the last module to finish whose output is a 4-D spatial map ``[N, C, h, w]`` with
``h, w > 1`` and which ran exactly once (a shared module such as one ``ReLU`` reused by several
layers has no single output to explain). Finishing order makes an enclosing container win over
its last child when they output the same tensor (``layer4`` rather than ``layer4.2.relu``).

Vision transformers are recognised by structure instead (their last spatial map is the patch
embedding): the last block's first LayerNorm, as pytorch-grad-cam recommends.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from collections.abc import Sequence

from onnxcam.models.errors import param

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["LayerOutput", "trace_layer_outputs", "spatial_layers", "search_target_layer", "vit_target_layer"]


@dataclass(frozen=True)
class LayerOutput:
    """One module's forward output as seen by the hooks."""

    name: str
    shape: tuple[int, ...] | None  # None when the output is not a single tensor
    calls: int
    kind: str  # the module's class name

    @property
    def is_spatial(self) -> bool:
        """4-D output with both trailing dims > 1 (an NCHW feature map, or NHWC for a few models)."""
        return self.shape is not None and len(self.shape) == 4 and self.shape[2] > 1 and self.shape[3] > 1


def trace_layer_outputs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> list[LayerOutput]:
    """Run ``model`` once on zeros ``[1, *input_size]`` and list every sub-module's output.

    The list is in finishing order, one entry per module (its last call's shape and its call
    count). The root module is left out. The model's training flag is restored afterwards.
    """
    import torch

    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")  # "meta" works too
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    order: list[str] = []
    shapes: dict[str, tuple[int, ...] | None] = {}
    calls: dict[str, int] = {}
    kinds = {n: type(m).__name__ for n, m in model.named_modules()}

    def hook_for(name: str):  # type: ignore[no-untyped-def]
        def hook(_module, _inputs, output) -> None:  # type: ignore[no-untyped-def]
            calls[name] = calls.get(name, 0) + 1
            shapes[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            if name in order:
                order.remove(name)
            order.append(name)

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in model.named_modules() if n]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_size), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [LayerOutput(n, shapes[n], calls[n], kinds[n]) for n in order]


def spatial_layers(
    model: nn.Module, input_size: Sequence[int] = (3, 224, 224), outermost: bool = False
) -> list[str]:
    """Names of modules that ran once and output a spatial map, last-finishing first.

    ``nn.Identity`` placeholders are skipped (their output is their input's). With
    ``outermost=True`` sub-modules of an already listed module are left out (``layer4``,
    ``layer3``, ... rather than ``layer4``, ``layer4.1``, ``layer4.1.bn2``, ...).
    """
    names: list[str] = []
    for o in reversed(trace_layer_outputs(model, input_size)):
        if not o.is_spatial or o.calls != 1 or o.kind == "Identity":
            continue
        if outermost and any(o.name.startswith(n + ".") for n in names):
            continue
        names.append(o.name)
    return names


def vit_target_layer(model: nn.Module) -> str | None:
    """Last transformer block's first LayerNorm for torchvision/timm ViT-style models, else None.

    torchvision ``VisionTransformer``: ``encoder.layers.<last>.ln_1``; timm ViT/DeiT/BEiT/EVA
    (a ``patch_embed`` and a flat ``blocks`` sequence): ``blocks.<last>.norm1``.
    """
    from torch import nn

    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layers", None)
    if hasattr(model, "conv_proj") and isinstance(layers, nn.Sequential) and len(layers) > 0:
        last = list(layers.named_children())[-1][0]
        if hasattr(layers[-1], "ln_1"):
            return f"encoder.layers.{last}.ln_1"
    blocks = getattr(model, "blocks", None)
    if hasattr(model, "patch_embed") and isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0:
        if hasattr(blocks[-1], "norm1"):
            return f"blocks.{len(blocks) - 1}.norm1"
    return None


def search_target_layer(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> str:
    """A sensible default Grad-CAM target for any classifier (see the module docstring).

    Raises:
        ValueError: the model has no module with a spatial output (one-line message).
    """
    vit = vit_target_layer(model)
    if vit is not None:
        return vit
    candidates = spatial_layers(model, input_size)
    if not candidates:
        raise ValueError(
            f"no module outputs a spatial feature map for input {tuple(input_size)}; "
            f"pass {param('target_layer')}"
        )
    return candidates[0]
