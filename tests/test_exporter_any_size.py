"""ONNX classifiers with a symbolic height and width: the explanation graph keeps them symbolic,
and one graph explains images of several sizes, each equal to float64 torch.autograd.

The sources are torch modules written to ONNX with ``dynamic_axes`` on N, H and W (what
``torch.onnx.export`` users ship); the reference gradient is taken at the graph's own float32
activations of the target module (so ReLU masks and max-pool arg-maxes agree).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("onnx_ir")
import onnx  # noqa: E402
from torch import nn  # noqa: E402

from exporter_helpers import assert_gradients_close, run, session  # noqa: E402
from onnxcam.exporter import ExportError, export  # noqa: E402

CLASSES = np.array([-1, 2, 0])


class Awkward(nn.Module):
    """Every operator whose gradient depends on the size: strided convolutions (stride 2 on odd
    sizes drops rows), a padded AveragePool that does not count the padding, a ceil-mode MaxPool,
    a channel Concat, GroupNorm, a spatial ReduceMean."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.branch_a = nn.Conv2d(8, 6, 3, padding=1)
        self.branch_b = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(8, 6, 1))
        self.features = nn.Sequential(nn.GroupNorm(3, 12), nn.Conv2d(12, 16, 3, stride=2), nn.ReLU(),
                                      nn.MaxPool2d(2, ceil_mode=True))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        return self.fc(self.features(x).mean(dim=(2, 3)))


class Upsampling(nn.Module):
    """A Resize on the way to the scores: its adjoint is a matrix per input size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.up(self.conv(x)).mean(dim=(2, 3)))


class FixedFlatten(nn.Module):
    """Flatten → Linear(C·7·7): runs at one size only, whatever the declared axes say."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 4, 3, stride=32), nn.ReLU())
        self.fc = nn.Linear(4 * 7 * 7, 3)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def write_dynamic(module: nn.Module, path) -> str:
    """``module`` as ONNX with symbolic N, H and W (the legacy exporter's ``dynamic_axes``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False,
                          input_names=["image"], output_names=["scores"], opset_version=17,
                          dynamic_axes={"image": {0: "N", 2: "H", 3: "W"}, "scores": {0: "N"}})
    return str(path)


def dims(graph: onnx.ModelProto, name: str) -> list:
    value = next(v for v in [*graph.graph.input, *graph.graph.output] if v.name == name)
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def check_size(module: nn.Module, target: nn.Module, sess, size: tuple[int, int], seed: int) -> None:
    """One run of the explanation graph at ``size`` = float64 torch.autograd at the target."""
    x = np.random.default_rng(seed).standard_normal((len(CLASSES), 3, *size)).astype(np.float32)
    out = run(sess, {"image": x, "class_index": CLASSES})
    double = module.double()
    seen = {}
    handle = target.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    with torch.no_grad():
        logits = double(torch.from_numpy(x).double())
    handle.remove()
    assert_gradients_close(out["activations"], seen["a"].numpy(), "activations")
    assert_gradients_close(out["logits"], logits.numpy(), "logits")
    a = torch.from_numpy(out["activations"]).double().requires_grad_()
    handle = target.register_forward_hook(lambda m, i, o: a)  # the graph's own activations downstream
    scores = double(torch.from_numpy(x).double())
    handle.remove()
    chosen = torch.from_numpy(out["target"])
    scores[torch.arange(len(CLASSES)), chosen].sum().backward()
    assert np.max(np.abs(a.grad.numpy())) > 0, "degenerate test: the torch gradient is all zeros"
    assert_gradients_close(out["gradients"], a.grad.numpy())
    assert out["gradients"].shape[2:] == seen["a"].shape[2:]


@pytest.mark.parametrize("layer", ["stem", "pool_branch"])
def test_one_graph_explains_several_sizes(tmp_path, layer: str) -> None:
    torch.manual_seed(0)
    module = Awkward()
    targets = {"stem": (module.stem, "/stem/stem.1/Relu_output_0"),
               "pool_branch": (module.branch_b, "/branch_b/branch_b.1/Conv_output_0")}
    target, name = targets[layer]
    graph = export(write_dynamic(module, tmp_path / "awkward.onnx"), target_layer=name)
    assert dims(graph, "image") == ["N", 3, "H", "W"]
    assert dims(graph, "gradients") == ["N", target[-1].out_channels if layer == "pool_branch" else 8, "h", "w"]
    sess = session(graph)
    for seed, size in enumerate([(224, 224), (320, 256), (81, 53)]):  # odd sizes: rows a stride drops
        check_size(module, target, sess, size, seed)


def test_resnet18_at_two_sizes(tmp_path) -> None:
    """torchvision resnet18 (seeded random weights, eval mode) at its default target."""
    torch.manual_seed(0)
    module = torchvision.models.resnet18(weights=None)
    graph = export(write_dynamic(module, tmp_path / "r18.onnx"))
    assert dims(graph, "activations") == ["N", 512, "h", "w"]
    assert dims(graph, "head_activations") == ["M", 512, "h", "w"]
    sess = session(graph)
    for seed, size in enumerate([(224, 224), (320, 256)]):
        check_size(module, module.layer4, sess, size, seed)


def test_a_rule_that_needs_a_fixed_size_names_the_node(tmp_path) -> None:
    path = write_dynamic(Upsampling(), tmp_path / "up.onnx")
    with pytest.raises(ExportError, match=r"Resize node '.*' needs a fixed image size .*input_shape=C,H,W"):
        export(path, target_layer="/conv/Conv_output_0")
    fixed = export(path, target_layer="/conv/Conv_output_0", input_shape=(3, 64, 48))
    assert dims(fixed, "image") == ["N", 3, 64, 48]


def test_a_graph_that_runs_at_one_size_keeps_the_probed_size(tmp_path) -> None:
    graph = export(write_dynamic(FixedFlatten(), tmp_path / "fixed.onnx"))
    assert dims(graph, "image") == ["N", 3, 224, 224]
    assert dims(graph, "gradients") == ["N", 4, 7, 7]


def test_explainer_heatmaps_at_two_sizes_match_pytorch_grad_cam(tmp_path) -> None:
    """The runtime on one dynamic-size graph: Grad-CAM / Grad-CAM++ heatmaps of the input's own
    size, equal to pytorch-grad-cam 1.5.7 on the torch model (1e-4)."""
    cams = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from onnxcam.runtime import Explainer

    torch.manual_seed(0)
    module = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "r18.cam.onnx"
    onnx.save(export(write_dynamic(module, tmp_path / "r18.onnx")), str(path))
    explainer = Explainer(str(path))
    for seed, size in enumerate([(224, 224), (320, 256)]):
        x = np.random.default_rng(seed).standard_normal((2, 3, *size)).astype(np.float32)
        got = explainer.explain_many(x, methods=["gradcam", "gradcam++"], class_index=[3, 7])
        for method, cls in (("gradcam", cams.GradCAM), ("gradcam++", cams.GradCAMPlusPlus)):
            with cls(model=module, target_layers=[module.layer4]) as cam:
                want = cam(torch.from_numpy(x), targets=[ClassifierOutputTarget(3), ClassifierOutputTarget(7)])
            assert got[method].heatmaps.shape == (2, *size)
            np.testing.assert_allclose(got[method].heatmaps, want, atol=1e-4, err_msg=f"{method} at {size}")


def test_a_baked_heatmap_takes_the_size_of_each_input(tmp_path) -> None:
    """``--heatmap gradcam`` on a dynamic-size graph: the ``heatmap`` output is [N, H, W] of the
    image fed, equal to the runtime's Grad-CAM of the same graph."""
    from onnxcam.runtime import Explainer

    torch.manual_seed(0)
    source = write_dynamic(Awkward(), tmp_path / "awkward.onnx")
    plain, baked = tmp_path / "plain.cam.onnx", tmp_path / "baked.cam.onnx"
    onnx.save(export(source), str(plain))
    onnx.save(export(source, heatmap="gradcam"), str(baked))
    assert dims(onnx.load(str(baked)), "heatmap") == ["N", "H", "W"]
    sess, explainer = session(onnx.load(str(baked))), Explainer(str(plain))
    for seed, size in enumerate([(224, 224), (81, 53)]):
        x = np.random.default_rng(seed).standard_normal((3, 3, *size)).astype(np.float32)
        heatmap = run(sess, {"image": x, "class_index": CLASSES})["heatmap"]
        want = explainer.explain_many(x, methods=["gradcam"], class_index=CLASSES)["gradcam"].heatmaps
        assert heatmap.shape == (3, *size)
        np.testing.assert_allclose(heatmap, want, atol=1e-4)
