"""Build ``tiny.cam.onnx``: a small explanation graph for the torch-free CLI tests.

    python tests/data/make_tiny.py     # rewrites tiny.cam.onnx, plain.onnx and coffee.jpg here

The classifier is a seeded two-conv CNN on 3x32x32 inputs (10 classes, made-up labels):
Conv(3→8, s2) → BatchNorm → ReLU → Conv(8→16, s1) → ReLU (``features``, the target layer,
[N, 16, 16, 16]) → global average pool → Linear(16→10). Preprocessing: resize the short
side to 36, centre-crop 32x32, ImageNet mean/std, so the overlay geometry (resize + crop)
is exercised. Exported with ``onnxcam.exporter.export`` from the source ``make_tiny:build``.

``plain.onnx`` is an ordinary ONNX classifier (GlobalAveragePool → Flatten → Gemm, made with
``onnx.helper``): NOT an explanation graph, for the "make one with onnxcam export" error.
``coffee.jpg`` is scikit-image's ``coffee`` photo (CC0) scaled to 150x100, so that
``onnxcam explain tiny.cam.onnx tests/data`` has a real picture to explain.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LABELS = ["apple", "bicycle", "cloud", "dolphin", "espresso", "fern", "guitar", "harbour", "igloo", "jellyfish"]


def build():
    """The seeded tiny CNN (eval mode)."""
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.features = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, len(LABELS))

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.features(self.stem(x))), 1))

    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        bn = model.stem[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def make_plain(out: Path) -> None:
    """A plain 3x32x32 → 10 classifier without any onnxcam interface."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((len(LABELS), 3)).astype(np.float32), "fc.weight")
    bias = numpy_helper.from_array(np.zeros(len(LABELS), np.float32), "fc.bias")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1)],
        "plain", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(LABELS)])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="make_tiny",
                              ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out))


def make_photo(out: Path) -> None:
    from PIL import Image
    from skimage import data

    Image.fromarray(data.coffee()).resize((150, 100), Image.LANCZOS).save(out, quality=85)


def main(out: Path = HERE / "tiny.cam.onnx") -> None:
    sys.path.insert(0, str(HERE))
    from onnxcam.exporter import export

    export("make_tiny:build", "features", input_shape=(3, 32, 32), resize=36, labels=LABELS,
           out=out, overwrite=True, opset=18)
    make_plain(HERE / "plain.onnx")
    make_photo(HERE / "coffee.jpg")
    for path in (out, HERE / "plain.onnx", HERE / "coffee.jpg"):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
