"""Every method's heatmap on a vision transformer and a Swin = pytorch-grad-cam 1.5.7 with its
``reshape_transform`` (1e-4), on the same three photos as test_runtime_parity_e2e.py.

- ViT: timm ``vit_tiny_patch16_224`` (seeded random weights) at ``blocks.11.norm1``, the
  exporter's default; pytorch-grad-cam's ``vit_example.py`` transform (class token dropped,
  14 × 14 grid, NCHW).
- Swin: a timm ``SwinTransformer`` (the ``swin_tiny_patch4_window7_224`` architecture with
  embed_dim 24, so that its 192 last-stage channels keep Score-CAM and Ablation-CAM short) at
  ``layers.3.blocks.1.norm2`` (pytorch-grad-cam's ``swinT_example.py`` target; tokens [N, 49, C]
  inside the block, its transform reshapes them to 7 × 7), and the gradient methods at ``norm``
  too, whose output is channels-last [N, 7, 7, C] (a plain permute).

Ablation-CAM: pytorch-grad-cam's ``AblationLayerVit`` removes the channel from every token,
class token included (so does onnxcam's head path); it writes min − 1e7 where the minimum is not
0 and onnxcam zeroes (see ``onnxcam.runtime.ablation``), so the reference uses a zeroing
subclass. Its weights (y − y_k)/y divide score differences of ~1e-3 of a random network's
scores: float32 rounding alone moves torch's own float32 maps 1.2e-4 (ViT) and 1.8e-4 (Swin)
away from float64. Ablation-CAM is therefore compared with pytorch-grad-cam on a float64 copy
of the model, and onnxcam's error is accepted up to 1e-4 or torch-float32's own distance from
that reference, whichever is larger; both are printed.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
cams = pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("skimage.data")

from pytorch_grad_cam.ablation_layer import AblationLayerVit  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from test_runtime_parity_e2e import GRADIENT_METHODS, PERTURBATION_METHODS, photo_batch  # noqa: E402

from onnxcam.exporter import export  # noqa: E402
from onnxcam.models.preprocess import imagenet  # noqa: E402
from onnxcam.runtime import Explainer  # noqa: E402
from onnxcam.runtime.postprocess import postprocess  # noqa: E402

TOL = 1e-4


class ZeroingAblationVit(AblationLayerVit):
    """``AblationLayerVit`` that always zeroes the ablated channel in every token."""

    def __call__(self, x):  # noqa: ANN001, ANN204
        rank = self.activations.dim()
        out = self.activations.transpose(1, rank - 1)
        for i in range(out.size(0)):
            out[i, self.indices[i], :] = 0
        return out.transpose(rank - 1, 1)


def vit_grid(t: "torch.Tensor") -> "torch.Tensor":
    return t[:, 1:, :].reshape(t.size(0), 14, 14, t.size(2)).permute(0, 3, 1, 2)


def swin_grid(t: "torch.Tensor") -> "torch.Tensor":
    return t.reshape(t.size(0), 7, 7, t.size(2)).permute(0, 3, 1, 2)


def channels_last(t: "torch.Tensor") -> "torch.Tensor":
    return t.permute(0, 3, 1, 2)


def seeded(name: str, **kwargs) -> "torch.nn.Module":
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def reference(model, target: str, transform, class_name: str, x: np.ndarray, classes: list[int],
              **kwargs) -> np.ndarray:
    layer = dict(model.named_modules())[target]
    dtype = next(model.parameters()).dtype
    with getattr(cams, class_name)(model=model, target_layers=[layer], reshape_transform=transform, **kwargs) as cam:
        cam.batch_size = 32
        return cam(input_tensor=torch.from_numpy(x).to(dtype), targets=[ClassifierOutputTarget(c) for c in classes])


def map_error(method: str, ours, ref: np.ndarray, size: tuple[int, int]) -> float:
    """max|Δ|; Eigen-CAM / Eigen-Grad-CAM up to pytorch-grad-cam's arbitrary SVD sign per image."""
    if not method.startswith("eigen"):
        return float(np.abs(ours.heatmaps - ref).max())
    flipped = postprocess(-ours.raw, size)
    return max(min(float(np.abs(ours.heatmaps[i] - ref[i]).max()), float(np.abs(flipped[i] - ref[i]).max()))
               for i in range(len(ref)))


def check_parity(model, target: str, transform, methods: dict[str, str], tmp_path) -> dict[str, str]:
    path = tmp_path / "model.cam.onnx"
    export(model, target, out=path)
    x = photo_batch(imagenet(224))
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    requested = [int(np.argsort(logits[0])[-2]), -1, int(np.argsort(logits[2])[-2])]
    classes = [int(logits[i].argmax()) if c < 0 else c for i, c in enumerate(requested)]
    results = Explainer(str(path)).explain_many(x, methods=list(methods), class_index=requested)
    report, bad = {}, {}
    for method, class_name in methods.items():
        ours = results[method]
        assert ours.class_index.tolist() == classes, method
        if method == "ablationcam":
            ref32 = reference(model, target, transform, class_name, x, classes, ablation_layer=ZeroingAblationVit())
            ref = reference(copy.deepcopy(model).double(), target, transform, class_name, x, classes,
                            ablation_layer=ZeroingAblationVit())
            bound = max(TOL, float(np.abs(ref32 - ref).max()))
        else:
            ref, bound = reference(model, target, transform, class_name, x, classes), TOL
        assert ref.max() > 0.99, f"{method}: all-zero reference maps"
        error = map_error(method, ours, ref, x.shape[2:])
        report[method] = f"{error:.2e} (≤ {bound:.2e})"
        if not error <= bound:
            bad[method] = report[method]
    print(f"\n{target}: " + ", ".join(f"{m} {r}" for m, r in report.items()))
    assert not bad, f"max|Δ| above the bound: {bad}"
    return report


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_vit_every_method(tmp_path):
    check_parity(seeded("vit_tiny_patch16_224"), "blocks.11.norm1", vit_grid,
                 {**GRADIENT_METHODS, **PERTURBATION_METHODS}, tmp_path)


def test_swin_every_method(tmp_path):
    model = seeded("swin_tiny_patch4_window7_224", embed_dim=24, num_heads=(1, 2, 4, 8))
    check_parity(model, "layers.3.blocks.1.norm2", swin_grid, {**GRADIENT_METHODS, **PERTURBATION_METHODS},
                 tmp_path)


def test_swin_channels_last_target(tmp_path):
    model = seeded("swin_tiny_patch4_window7_224", embed_dim=24, num_heads=(1, 2, 4, 8))
    check_parity(model, "norm", channels_last, GRADIENT_METHODS, tmp_path)
