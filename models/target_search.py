"""Find Grad-CAM target layers in arbitrary torch models (torch imported lazily).

The search runs one forward pass on a zero input with forward hooks on every module and
records, in the order the modules *finish* (post-order), each output's shape. The default
target is the last module to finish whose output is a 4-D spatial map ``[N, C, h, w]`` with
``h, w > 1`` and which ran exactly once (a shared module such as one ``ReLU`` reused by several
layers has no single output to explain). Finishing order makes an enclosing container win over
its last child when they output the same tensor (``layer4`` rather than ``layer4.2.relu``).

Token outputs ``[N, T, D]`` whose tokens are a grid of the image (``models.grids``) count as
maps too. In a transformer whose blocks run on tokens, the default is the last block's first
norm (timm ``blocks.<last>.norm1``, torchvision ``encoder.layers.<last>.ln_1``, Hugging Face
``…layer.<last>.layernorm_before``) when the tokens have a prefix (a class token), as
pytorch-grad-cam recommends: after it, the class token alone reaches the scores, so later
token outputs have no gradient on the grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from collections.abc import Sequence

from onnxcam.models.errors import param
from onnxcam.models.grids import token_grid

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

    def token_prefix(self, image_hw: Sequence[int]) -> int | None:
        """For a 3-D output ``[N, T, D]`` whose tokens are a grid (more than one patch) of the
        image, the number of prefix tokens; else None."""
        if self.shape is None or len(self.shape) != 3:
            return None
        found = token_grid(self.shape[1], (int(image_hw[0]), int(image_hw[1])))
        return found[0] if found is not None and found[1][0] * found[1][1] > 1 else None

    def is_tokens(self, image_hw: Sequence[int]) -> bool:
        return self.token_prefix(image_hw) is not None

    def is_map(self, image_hw: Sequence[int]) -> bool:
        return self.is_spatial or self.is_tokens(image_hw)


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
    """Names of modules that ran once and output a spatial map or image tokens, last-finishing first.

    ``nn.Identity`` placeholders are skipped (their output is their input's). With
    ``outermost=True`` sub-modules of an already listed module are left out (``layer4``,
    ``layer3``, ... rather than ``layer4``, ``layer4.1``, ``layer4.1.bn2``, ...).
    """
    return _map_layers(trace_layer_outputs(model, input_size), input_size[1:], outermost)


def _map_layers(outputs: list[LayerOutput], image_hw: Sequence[int], outermost: bool = False) -> list[str]:
    names: list[str] = []
    for o in reversed(outputs):
        if not o.is_map(image_hw) or o.calls != 1 or o.kind == "Identity":
            continue
        if outermost and any(o.name.startswith(n + ".") for n in names):
            continue
        names.append(o.name)
    return names


_BLOCK_FIRST_NORMS = ("norm1", "ln_1", "layernorm_before")


def vit_target_layer(model: nn.Module, outputs: list[LayerOutput] | None = None,
                     image_hw: Sequence[int] = (224, 224)) -> str | None:
    """The last transformer block's first norm when it outputs image tokens with prefix tokens,
    else None (see the module docstring). ``outputs``: the traced layer outputs (traced at
    ``image_hw`` when None)."""
    if outputs is None:
        outputs = trace_layer_outputs(model, (3, *image_hw))
    for o in reversed(outputs):
        if o.name.rsplit(".", 1)[-1] in _BLOCK_FIRST_NORMS and o.calls == 1 and o.token_prefix(image_hw):
            return o.name
    return None


def search_target_layer(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> str:
    """A sensible default Grad-CAM target for any classifier (see the module docstring).

    Raises:
        ValueError: the model has no module with a spatial output (one-line message).
    """
    outputs = trace_layer_outputs(model, input_size)
    vit = vit_target_layer(model, outputs, input_size[1:])
    if vit is not None:
        return vit
    candidates = _map_layers(outputs, input_size[1:])
    if not candidates:
        raise ValueError(
            f"no module outputs a spatial feature map for input {tuple(input_size)}; "
            f"pass {param('target_layer')}"
        )
    return candidates[0]
