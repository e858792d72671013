"""Small Hugging Face classifiers built from configs (random weights, nothing downloaded), for
``onnxcam export tests.hf_models:vit`` style sources in the tests."""
from __future__ import annotations

import torch
import transformers

LABELS = {0: "cat", 1: "dog", 2: "teapot", 3: "tiger", 4: "zebra"}


def _seeded(model_class, config):
    torch.manual_seed(0)
    return model_class(config).eval()


def vit() -> torch.nn.Module:
    """ViT: 4 layers, hidden 64, 16-pixel patches of a 96-pixel image (6 × 6 grid + class token)."""
    config = transformers.ViTConfig(image_size=96, patch_size=16, hidden_size=64, num_hidden_layers=4,
                                    num_attention_heads=4, intermediate_size=128, id2label=LABELS)
    return _seeded(transformers.ViTForImageClassification, config)


def convnext() -> torch.nn.Module:
    """ConvNeXt: 4 stages of depth 1, 96-pixel image."""
    config = transformers.ConvNextConfig(image_size=96, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                                         id2label=LABELS)
    return _seeded(transformers.ConvNextForImageClassification, config)


def swin() -> torch.nn.Module:
    """Swin: embed 24, window 3, 4-pixel patches of a 96-pixel image (3 × 3 tokens at the end)."""
    config = transformers.SwinConfig(image_size=96, patch_size=4, embed_dim=24, depths=[1, 1, 2, 1],
                                     num_heads=[1, 2, 3, 4], window_size=3, id2label=LABELS)
    return _seeded(transformers.SwinForImageClassification, config)
