"""Default target layers and preprocessing: torchvision family rules and the generic search."""
from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torch import nn  # noqa: E402

from onnxcam.models.target_search import search_target_layer, spatial_layers, trace_layer_outputs  # noqa: E402
from onnxcam.models.torchvision_defaults import (  # noqa: E402
    default_preprocess,
    default_target_layer,
    family_target_layer,
)

pytestmark = pytest.mark.torch


def _build(name: str, device: str = "cpu") -> nn.Module:
    with warnings.catch_warnings(), torch.device(device):
        warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception init notice
        return torchvision.models.get_model(name, weights=None).eval()


# Small models: built for real; the family rule must agree with the hooked forward search.
SMALL = {
    "resnet18": "layer4",
    "densenet121": "features",
    "mobilenet_v2": "features",
    "mobilenet_v3_small": "features",
    "efficientnet_b0": "features",
    "regnet_y_400mf": "trunk_output",
    "googlenet": "inception5b",
    "shufflenet_v2_x0_5": "conv5",
    "mnasnet0_5": "layers",
}

# Big models: built on the meta device (no memory, no init cost); the name must resolve.
BIG = {
    "resnet50": "layer4",
    "resnext50_32x4d": "layer4",
    "wide_resnet50_2": "layer4",
    "vgg11": "features.20",
    "vgg16": "features.30",
    "vgg19_bn": "features.52",
    "alexnet": "features.12",
    "densenet201": "features",
    "convnext_tiny": "features",
    "efficientnet_v2_s": "features",
    "mobilenet_v3_large": "features",
    "inception_v3": "Mixed_7c",
    "vit_b_16": "encoder.layers.encoder_layer_11.ln_1",
    "swin_t": "permute",
    "maxvit_t": "blocks.3",
}


@pytest.mark.parametrize("arch, expected", sorted(SMALL.items()))
def test_family_rule_agrees_with_search_on_small_models(arch: str, expected: str) -> None:
    model = _build(arch)
    assert default_target_layer(arch, model) == expected  # rule only: no forward pass
    # 112×112 keeps the final maps spatial (≥ 3×3) at a quarter of the cost of 224×224.
    assert spatial_layers(model, (3, 112, 112))[0] == expected


@pytest.mark.parametrize("arch, expected", sorted(BIG.items()))
def test_family_rule_names_resolve_on_big_models(arch: str, expected: str) -> None:
    model = _build(arch, "meta")
    assert default_target_layer(arch, model) == expected
    assert expected in dict(model.named_modules())


def test_squeezenet_targets_features_not_the_conv_classifier() -> None:
    model = _build("squeezenet1_1")
    assert default_target_layer("squeezenet1_1", model) == "features"
    # The search alone would pick the 1000-channel class-score map inside the classifier.
    outs = {o.name: o for o in trace_layer_outputs(model, (3, 112, 112))}
    assert search_target_layer(model, (3, 112, 112)) == "classifier.2"
    assert outs["classifier.2"].shape[1] == 1000 and outs["features"].shape[1] == 512


def test_vgg_target_is_computed_from_the_model() -> None:
    model = _build("vgg11", "meta")
    model.features = model.features[:-1]  # a user's trimmed VGG
    assert default_target_layer("vgg11", model) == "features.19"


@pytest.mark.parametrize(
    "arch, size, resize",
    [("resnet50", 224, 256), ("inception_v3", 299, 342), ("efficientnet_b4", 380, 384),
     ("vit_b_16", 224, 256), ("not_a_model", 224, 256)],
)
def test_default_preprocess(arch: str, size: int, resize: int) -> None:
    p = default_preprocess(arch)
    assert (p.size, p.resize) == ((size, size), resize)
    assert p.mean == (0.485, 0.456, 0.406) and p.std == (0.229, 0.224, 0.225)


def test_default_preprocess_follows_fixed_vit_resolution() -> None:
    model = _build("vit_h_14", "meta")  # weights=None builds it at 224; its weights are 518/224
    assert default_preprocess("vit_h_14", model).size == (224, 224)


class _SharedRelu(nn.Module):
    """conv → shared relu → conv → shared relu → pool → fc: the shared ReLU must not be chosen."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


def test_search_skips_shared_modules_and_1x1_outputs() -> None:
    model = _SharedRelu()
    assert search_target_layer(model, (3, 32, 32)) == "conv2"
    assert spatial_layers(model, (3, 32, 32)) == ["conv2", "conv1"]
    assert default_target_layer("my_custom_net", model, (3, 32, 32)) == "conv2"
    # a family name whose rule module is missing (a user's own "resnet") also falls back
    assert family_target_layer("resnet_custom", model) is None
    assert default_target_layer("resnet_custom", model, (3, 32, 32)) == "conv2"
    assert model.training  # training flag restored after the dummy forward


def test_search_fails_clearly_without_spatial_outputs() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ValueError, match="no module outputs a spatial feature map"):
        search_target_layer(mlp, (3, 2, 2))
