"""``input_gradients`` and ``guided_gradients`` (export with ``input_gradients=True``) against
torch.autograd, Captum's ``GuidedBackprop`` and pytorch-grad-cam's ``GuidedBackpropReLUModel``,
and against central finite differences on the third-party ONNX fixtures.

Numerics. A float32 reverse pass through a whole network flips a few near-tie ReLU / max-pool
decisions, in torch as in onnxruntime, so the references run at 64×64 (few units, batch-norm
statistics calibrated as in ``test_exporter_torchvision``) and compare with the float64 reference
(``copy.deepcopy(model).double()``; float32 torch itself flips a few ties on vgg16) within the
contract's ``max|Δ| ≤ 1e-4·max|ref|`` (over the batch). EfficientNet-Lite0 has a fixed 224×224 input (real
weights); it is compared with the float64 reference. Measured there: images 0 and 2 within 5e-7;
image 1 (class 7, a smaller gradient) within 1.15e-4 of its own max — ~1100 entries, the
receptive-field footprint of one ReLU6 unit onnxruntime's float32 forward puts on the other side
of its kink (float32 and float64 torch agree with each other) — i.e. 7e-5 of the batch max.

Guided references. Captum and pytorch-grad-cam override the backward pass of ``nn.ReLU``
modules only. EfficientNet-Lite0's activations are ``nn.ReLU6`` (ONNX ``Clip(0, 6)``), which the
graph guides too (dx = dy·[0 < x < 6]·[dy > 0]), so on lite0 every ``nn.ReLU6`` is replaced by
:class:`GuidedReLU6` (a hand-written autograd Function with that rule) before Captum runs.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
onnx = pytest.importorskip("onnx")
captum_attr = pytest.importorskip("captum.attr")
pytest.importorskip("pytorch_grad_cam")

import onnx_ir as ir  # noqa: E402
import onnxruntime as ort  # noqa: E402
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel  # noqa: E402

from onnxcam.exporter import export  # noqa: E402
from onnxcam.exporter.explain_graph import GraphSpec, build_explanation_graph  # noqa: E402
from onnxcam.exporter.onnx_source import load_classifier, load_onnx  # noqa: E402
from onnxcam.exporter.torch_export import export_with_targets, target_output_name  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "models"
RTOL = 1e-4
CLASS_INDEX = np.array([-1, 7, 409], np.int64)   # top-1 and two fixed classes: mixed targets


def calibrate_batchnorm(model: "torch.nn.Module", size: int, seed: int = 1) -> None:
    """As ``tests/test_exporter_torchvision.calibrate_batchnorm``: running statistics of a random
    batch, variances floored at 1."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed)))
    model.eval()
    for norm in norms:
        norm.running_var.clamp_(min=1.0)


def _session(model: "onnx.ModelProto") -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _no_inplace(model: "torch.nn.Module") -> "torch.nn.Module":
    """Captum's backward hooks need out-of-place ReLUs (torchvision's are in-place)."""
    for module in model.modules():
        if isinstance(module, (torch.nn.ReLU, torch.nn.ReLU6)):
            module.inplace = False
    return model


class _GuidedReLU6Function(torch.autograd.Function):
    """y = min(max(x, 0), 6);  dx = dy·[0 < x < 6]·[dy > 0] (the graph's guided Clip rule)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        ctx.save_for_backward(x)
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx, dy):  # noqa: D102
        (x,) = ctx.saved_tensors
        return dy * ((x > 0) & (x < 6) & (dy > 0)).to(dy.dtype)


class GuidedReLU6(torch.nn.Module):
    def forward(self, x):  # noqa: D102
        return _GuidedReLU6Function.apply(x)


def guide_relu6(model: "torch.nn.Module") -> int:
    """Replace every ``nn.ReLU6`` (also a module used at several places) by :class:`GuidedReLU6`."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.ReLU6):
                setattr(parent, name, GuidedReLU6())
                count += 1
    return count


@functools.lru_cache(maxsize=None)
def exported(name: str) -> dict:
    """The model (float32, eval), its explanation graph with input gradients, and the graph's
    outputs on a seeded batch of 3 with ``CLASS_INDEX``."""
    if name == "efficientnet-lite0":
        from onnxcam.models.registry import get_model

        model, size, target = get_model(name).build(), 224, "_head_act"
    else:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None)
        calibrate_batchnorm(model, 64)
        size, target = 64, {"resnet18": "layer4", "vgg16": "features.30"}[name]
    model.eval()
    proto, _ = export_with_targets(model, [target], (3, size, size))
    classifier = load_classifier(proto)
    spec = GraphSpec(classifier.model, classifier.image_input, classifier.logits, target_output_name(0),
                     name, target, {}, None, True)
    graph = build_explanation_graph(spec, classifier.facts)
    x = np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32)
    session = _session(graph)
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {classifier.image_input: x, "class_index": CLASS_INDEX})))
    return {"model": model, "graph": graph, "x": x, "out": out}


def _relative_errors(result: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image: max|Δ| / max|reference| over the batch (the contract's scale)."""
    n = len(reference)
    diff = np.abs(result.astype(np.float64) - reference).reshape(n, -1).max(1)
    return diff / np.abs(reference).max()


def _input_grad(model, x: np.ndarray, target: np.ndarray, dtype) -> np.ndarray:
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    logits = model(xt)
    logits[torch.arange(len(x)), torch.from_numpy(target)].sum().backward()
    return xt.grad.numpy().astype(np.float64)


def _references(name: str, compute) -> list[tuple[str, np.ndarray]]:
    """``compute(model, dtype)`` on a float64 copy of the model."""
    model = exported(name)["model"]
    return [("float64", compute(_no_inplace(copy.deepcopy(model).double()), torch.float64))]


def _assert_matches(result: np.ndarray, refs: list[tuple[str, np.ndarray]], what: str) -> None:
    errors = {label: _relative_errors(result, ref) for label, ref in refs}
    for label, ref in refs:
        assert np.abs(ref).reshape(len(ref), -1).max(1).min() > 0, f"{what}: {label} reference is all zero"
    assert any(err.max() <= RTOL for err in errors.values()), \
        f"{what}: max|Δ|/max|ref| per image " + ", ".join(f"{k}: {v}" for k, v in errors.items())


MODELS = ["resnet18", "vgg16", "efficientnet-lite0"]


@pytest.mark.torch
@pytest.mark.parametrize("name", MODELS)
def test_input_gradients_match_torch_autograd(name: str) -> None:
    case = exported(name)
    out, x = case["out"], case["x"]
    meta = {p.key: p.value for p in case["graph"].metadata_props}
    assert meta.get("onnxcam.input_gradients") == "both"
    assert out["input_gradients"].shape == x.shape and out["input_gradients"].dtype == np.float32
    assert len(set(out["target"].tolist())) == 3, "the batch should explain three different classes"
    refs = _references(name, lambda m, dt: _input_grad(m, x, out["target"], dt))
    _assert_matches(out["input_gradients"], refs, f"{name} input_gradients")


@pytest.mark.torch
@pytest.mark.parametrize("name", MODELS)
def test_guided_gradients_match_captum_guided_backprop(name: str) -> None:
    case = exported(name)
    out, x = case["out"], case["x"]

    def captum(model, dtype):
        if name == "efficientnet-lite0":
            assert guide_relu6(model) > 0
        attr = captum_attr.GuidedBackprop(model).attribute(torch.tensor(x, dtype=dtype),
                                                            target=torch.from_numpy(out["target"]))
        return attr.detach().numpy().astype(np.float64)

    refs = _references(name, captum)
    _assert_matches(out["guided_gradients"], refs, f"{name} guided_gradients vs Captum")
    # guiding changes the map: a guided map equal to the plain gradient would mean no rule ran
    assert not np.allclose(out["guided_gradients"], out["input_gradients"], rtol=1e-2, atol=0)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_guided_gradients_match_pytorch_grad_cam(name: str) -> None:
    """pytorch-grad-cam's ``GuidedBackpropReLUModel`` explains one image (HWC) per call."""
    case = exported(name)
    out, x = case["out"], case["x"]

    def grad_cam(model, dtype):
        guided = GuidedBackpropReLUModel(model, device="cpu")
        maps = [guided(torch.tensor(x[i:i + 1], dtype=dtype), target_category=int(t))
                for i, t in enumerate(out["target"])]
        return np.stack(maps).transpose(0, 3, 1, 2).astype(np.float64)

    refs = _references(name, grad_cam)
    _assert_matches(out["guided_gradients"], refs, f"{name} guided_gradients vs pytorch-grad-cam")


# -- third-party ONNX fixtures: central finite differences of the whole model ----------------------
FIXTURE_FILES = ["mnist-8_onnxzoo_cntk.onnx", "mobilenet_v2_1.0_224_quant_dequant.fp16w.onnx",
                 "mobilenet_v1_0.25_128_quant_dequant.onnx"]


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/fixtures is not beside the project")
@pytest.mark.parametrize("filename", FIXTURE_FILES, ids=[f.split("_")[0] for f in FIXTURE_FILES])
def test_fixture_input_gradients_match_finite_differences(filename: str) -> None:
    """d·∂S/∂x against (S(x + εd) − S(x − εd)) / 2ε of the source model, for d = the gradient
    itself and for random directions on random 8×8 patches (all channels).

    The source runs in float32 and a step through a deep ReLU6 network crosses kinks, so no single
    ε is exact: each direction must agree within 1 % of ‖g_d‖·‖d‖ (g_d = the gradient on d's
    support) at ε = 1e-3 or 1e-4 of max|x| (a wrong layout, scale or rule is off by O(1))."""
    path = FIXTURES / filename
    graph = export(str(path), input_gradients=True)
    onnx.checker.check_model(graph, full_check=True)
    assert {p.key: p.value for p in graph.metadata_props}.get("onnxcam.input_gradients") == "both"
    classifier = load_classifier(load_onnx(path))
    batch = 3 if classifier.facts.batch_dynamic else 1
    shape = classifier.facts.shape(classifier.image_input)[1:]
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, *shape)).astype(np.float32)
    session = _session(graph)
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {classifier.image_input: x,
                                             "class_index": np.array([-1, 5, 17][:batch], np.int64)})))
    gradient = out["input_gradients"].astype(np.float64)
    assert gradient.shape == x.shape and out["guided_gradients"].shape == x.shape
    chosen = out["target"]
    source = _session(ir.to_proto(classifier.model))

    def score(z: np.ndarray) -> np.ndarray:
        return source.run(None, {classifier.image_input: z.astype(np.float32)})[0][np.arange(batch), chosen]

    h, w = shape[1:] if shape[0] in (1, 3) else shape[:2]
    directions = [gradient.copy()]
    for _ in range(3):
        d = np.zeros(x.shape)
        r, c = rng.integers(0, h - 8), rng.integers(0, w - 8)
        if shape[0] in (1, 3):
            d[:, :, r:r + 8, c:c + 8] = rng.standard_normal((batch, shape[0], 8, 8))
        else:
            d[:, r:r + 8, c:c + 8, :] = rng.standard_normal((batch, 8, 8, shape[2]))
        directions.append(d)
    for d in directions:
        analytic = (gradient * d).reshape(batch, -1).sum(1)
        scale = (np.linalg.norm((gradient * (d != 0)).reshape(batch, -1), axis=1)
                 * np.linalg.norm(d.reshape(batch, -1), axis=1))
        errors = []
        for step in (1e-3, 1e-4):
            eps = step * np.abs(x).max() / np.abs(d).max()
            finite = (score(x + eps * d).astype(np.float64) - score(x - eps * d)) / (2 * eps)
            errors.append(np.abs(finite - analytic) / scale)
        assert np.min(errors, axis=0).max() <= 1e-2, (filename, errors)
