"""The models the exporter is tested on, one source of truth for the zoo tests and for the
README's "Supported models" table (``python tests/zoo.py`` prints it; a test keeps it in sync).

Each entry: source, input size, (default target, its layout), more targets with theirs, family.
"""
from __future__ import annotations

from pathlib import Path

CNNS = [  # test_exporter_torchvision.py: NCHW targets
    ("torchvision:resnet18", 224, ("layer4", "NCHW"), [("layer3", "NCHW")], "CNN"),
    ("torchvision:resnet50", 224, ("layer4", "NCHW"), [("layer4.0", "NCHW")], "CNN"),
    ("torchvision:vgg16", 224, ("features.30", "NCHW"), [("features.24", "NCHW")], "CNN"),
    ("torchvision:vgg16_bn", 224, ("features.43", "NCHW"), [("features.33", "NCHW")], "CNN"),
    ("torchvision:densenet121", 224, ("features", "NCHW"), [("features.denseblock3", "NCHW")], "CNN"),
    ("torchvision:mobilenet_v2", 224, ("features", "NCHW"), [("features.14", "NCHW")], "CNN"),
    ("torchvision:mobilenet_v3_large", 224, ("features", "NCHW"), [("features.12", "NCHW")], "CNN"),
    ("torchvision:efficientnet_b0", 224, ("features", "NCHW"), [("features.5", "NCHW")], "CNN"),
    ("torchvision:convnext_tiny", 224, ("features", "NCHW"), [("features.5", "NCHW")], "CNN"),
    ("torchvision:regnet_y_400mf", 224, ("trunk_output", "NCHW"), [("trunk_output.block3", "NCHW")], "CNN"),
    ("torchvision:squeezenet1_1", 224, ("features", "NCHW"), [("features.9", "NCHW")], "CNN"),
    ("torchvision:inception_v3", 299, ("Mixed_7c", "NCHW"), [("Mixed_7b", "NCHW")], "CNN"),
]

TRANSFORMERS = [  # test_exporter_zoo.py: token, channels-last and NCHW targets
    ("torchvision:vit_b_16", 224, ("encoder.layers.encoder_layer_11.ln_1", "tokens"),
     [("encoder.layers.encoder_layer_6", "tokens")], "ViT"),
    ("torchvision:swin_t", 224, ("permute", "NCHW"), [("features", "NHWC"), ("features.5", "NHWC")], "Swin"),
    ("torchvision:swin_v2_t", 256, ("permute", "NCHW"), [("features.5", "NHWC")], "Swin"),
    ("torchvision:maxvit_t", 224, ("blocks.3", "NCHW"), [("blocks.2", "NCHW")], "hybrid"),
    ("timm:vit_tiny_patch16_224", 224, ("blocks.11.norm1", "tokens"), [("blocks.6.norm1", "tokens")], "ViT"),
    ("timm:deit_tiny_distilled_patch16_224", 224, ("blocks.11.norm1", "tokens"), [("blocks.5", "tokens")],
     "ViT (class + distillation token)"),
    ("timm:vit_little_patch16_reg4_gap_256", 256, ("blocks.13.norm1", "tokens"), [("blocks.8.norm1", "tokens")],
     "ViT (register tokens)"),
    ("timm:swin_tiny_patch4_window7_224", 224, ("norm", "NHWC"), [("layers.3.blocks.1.norm2", "tokens")], "Swin"),
    ("timm:mixer_b16_224", 224, ("norm", "tokens"), [("blocks.6", "tokens")], "MLP-Mixer"),
    ("timm:levit_128s", 224, ("stages", "tokens"), [("stages.1", "tokens")], "hybrid"),
    ("timm:pvt_v2_b0", 224, ("stages", "NCHW"), [("stages.2", "NCHW")], "hierarchical ViT"),
    ("timm:efficientformerv2_s0", 224, ("norm", "NCHW"), [("stages.2", "NCHW")], "hybrid"),
    ("timm:poolformer_s12", 224, ("stages", "NCHW"), [("stages.2", "NCHW")], "MetaFormer"),
    ("timm:coatnet_0_rw_224", 224, ("norm", "NCHW"), [("stages.2", "NCHW")], "hybrid"),
    ("timm:mobilevitv2_050", 256, ("stages", "NCHW"), [("stages.3", "NCHW")], "hybrid"),
    ("timm:edgenext_xx_small", 256, ("stages", "NCHW"), [("stages.2", "NCHW")], "hybrid"),
]

OTHERS = [  # family, example, default target, how it is checked
    ("Hugging Face transformers", "`ViTForImageClassification`, `ConvNextForImageClassification`, "
     "`SwinForImageClassification` via `package.module:callable`", "last `layernorm_before` / last stage / "
     "`swin.layernorm`", "`--verify`, labels from `id2label` (test_exporter_huggingface.py)"),
    ("int8 QDQ (`quantize_static`, int8 or uint8 activations; torch fake-quant export)", "resnet18",
     "last dequantized map", "straight-through gradients = torch (test_exporter_quantized.py)"),
    ("int8 QOperator (`quantize_static` QOperator: QLinearConv, QLinearAdd, QLinearGlobalAveragePool, QGemm)",
     "resnet18", "last quantized map (dequantized)", "straight-through gradients = torch (test_exporter_quantized.py)"),
    ("int8 dynamic (`quantize_dynamic`: ConvInteger, MatMulInteger)", "resnet18", "last map",
     "straight-through gradients = torch (test_exporter_quantized.py)"),
    ("fp16 (onnxconverter-common, fp16 input or fp16 inside)", "resnet18", "the target given",
     "gradients within 1e-2 of float64 autograd, float32 outputs (test_exporter_fp16.py)"),
    ("ONNX from other frameworks", "CNTK MNIST, TFLite-converted MobileNets (fp16 weights, opset 8)",
     "last spatial map", "finite differences (test_exporter_onnx_fixtures.py)"),
    ("any input size (ONNX with symbolic H, W)", "resnet18, a net of strided / pooled / concatenated maps",
     "last spatial map", "one graph at 224², 320×256 and 81×53, each = float64 autograd and pytorch-grad-cam "
     "(test_exporter_any_size.py)"),
    ("binary `[N, 1]` and Sigmoid multi-label heads", "hand-made", "the target given",
     "class 1 = the logit, class 0 = its negation (test_exporter_scores.py)"),
]

BEGIN, END = "<!-- supported-models: generated by tests/zoo.py -->", "<!-- /supported-models -->"


def table() -> str:
    """The README's "Supported models" table."""
    lines = ["| family | example | default target (layout) | also tested at | checked |", "|---|---|---|---|---|"]
    for source, size, (target, layout), others, family in CNNS + TRANSFORMERS:
        more = ", ".join(f"`{t}` ({lay})" for t, lay in others)
        test = "test_exporter_torchvision.py" if source.startswith("torchvision:") and family == "CNN" \
            else "test_exporter_zoo.py"
        lines.append(f"| {family} | `{source}` ({size}²) | `{target}` ({layout}) | {more} | "
                     f"gradients = float64 autograd ({test}) |")
    for family, example, target, checked in OTHERS:
        lines.append(f"| {family} | {example} | {target} | | {checked} |")
    return "\n".join(lines)


def readme_section(readme: str) -> str:
    """The generated part of ``readme`` (between the markers)."""
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[start:end].strip()


if __name__ == "__main__":
    print(table())
    readme = Path(__file__).resolve().parents[1] / "README.md"
    if BEGIN in readme.read_text():
        print("\nREADME.md is", "in sync" if readme_section(readme.read_text()) == table() else "out of date")
