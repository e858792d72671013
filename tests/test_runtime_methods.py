"""Parity of onnxcam.runtime.methods (+ postprocess) with pytorch-grad-cam 1.5.7.

A and g come from torch (forward hook + autograd.grad to the target layer) on seeded,
randomly initialised torchvision VGG-16 (no global pooling: the methods differ) and
ResNet-50, for 3 real photos with mixed explicit and top-1 classes. pytorch-grad-cam runs
its own methods on the same model with one target per image (with fewer targets it returns
all-zero maps). Tolerance: max|Δ| ≤ 1e-4 on the final normalised maps.
"""
from __future__ import annotations

import numpy as np
import pytest

from onnxcam.runtime.methods import first_component_projection
from onnxcam.runtime.registry import METHODS
from onnxcam.runtime.postprocess import postprocess

TOL = 1e-4
REQUESTED = [281, None, 504]  # explicit, top-1, explicit

REFERENCE_CLASSES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "gradcam-elementwise": "GradCAMElementWise",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
}


def photo_batch(size: int = 224) -> np.ndarray:
    """chelsea, coffee, astronaut from skimage.data, resized to size², ImageNet-normalised."""
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    batch = []
    for name in ("chelsea", "coffee", "astronaut"):
        img = Image.fromarray(getattr(data, name)()).resize((size, size), Image.BILINEAR)
        batch.append(((np.asarray(img, np.float32) / 255 - mean) / std).transpose(2, 0, 1))
    return np.stack(batch)


def torch_case(arch: str):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(tv.models, arch)(weights=None).eval()
    layer = model.features[-1] if arch == "vgg16" else model.layer4
    x = torch.from_numpy(photo_batch())
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("A", o))
    logits = model(x)
    handle.remove()
    top1 = logits.argmax(1).tolist()
    classes = [top1[i] if c is None else c for i, c in enumerate(REQUESTED)]
    score = logits[torch.arange(3), torch.tensor(classes)].sum()
    (g,) = torch.autograd.grad(score, store["A"])
    A, g = store["A"].detach().numpy(), g.numpy()
    return dict(model=model, layer=layer, x=x, classes=classes, A=A, g=g, g2=g**2, g3=g**2 * g)


def reference(case, method: str) -> np.ndarray:
    """pytorch-grad-cam's map for ``method``.

    Grad-CAM is one full ``cam(input_tensor, targets)`` call (forward + loss.backward through
    pytorch-grad-cam's own hooks); its captured A and g are checked against ours, then every
    other method runs pytorch-grad-cam's ``compute_cam_per_layer`` + ``aggregate_multi_layers``
    on those captured tensors, which is what its ``forward`` does after the backward pass.
    """
    cams = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(c) for c in case["classes"]]  # one per image
    if "captured" not in case:
        with cams.GradCAM(model=case["model"], target_layers=[case["layer"]]) as cam:
            case["gradcam_full_call"] = cam(input_tensor=case["x"], targets=targets)
            case["captured"] = (cam.activations_and_grads.activations[0].clone(),
                                cam.activations_and_grads.gradients[0].clone())
        A, g = (t.numpy() for t in case["captured"])
        np.testing.assert_allclose(A, case["A"], rtol=1e-5, atol=1e-5 * np.abs(A).max())
        np.testing.assert_allclose(g, case["g"], rtol=1e-4, atol=1e-5 * np.abs(g).max())
    if method == "gradcam":
        return case["gradcam_full_call"]
    with getattr(cams, REFERENCE_CLASSES[method])(model=case["model"], target_layers=[case["layer"]]) as cam:
        cam.activations_and_grads.activations = [case["captured"][0]]
        cam.activations_and_grads.gradients = [case["captured"][1]]
        return cam.aggregate_multi_layers(cam.compute_cam_per_layer(case["x"], targets, False))


def ours(case, method: str, sign: float = 1.0) -> np.ndarray:
    raw = METHODS[method].cam(case["A"], case["g"], case["g2"], case["g3"])
    assert raw.shape == case["A"].shape[:1] + case["A"].shape[2:] and raw.dtype == np.float32
    return postprocess(sign * raw, case["x"].shape[-2:])


# One test per model (not per method) so that, under pytest-xdist, each model is built and run
# through torch on one worker only; the failure message lists every method's error.
@pytest.mark.parametrize("arch", ["vgg16", "resnet50"])
def test_every_method_matches_pytorch_grad_cam(arch):
    case = torch_case(arch)
    errors = {}
    for method in REFERENCE_CLASSES:
        ref = reference(case, method)
        assert ref.shape == (3, 224, 224) and ref.max() > 0.99, f"{method}: degenerate reference map"
        ours_map = ours(case, method)
        if method.startswith("eigen"):
            # pytorch-grad-cam leaves the SVD sign arbitrary: per image, our map or the map of
            # our negated projection must match (our own sign rule is checked below).
            flipped = ours(case, method, sign=-1.0)
            errors[method] = max(min(np.abs(ours_map[i] - ref[i]).max(), np.abs(flipped[i] - ref[i]).max())
                                 for i in range(3))
        else:
            errors[method] = np.abs(ours_map - ref).max()
    bad = {m: float(e) for m, e in errors.items() if not e <= TOL}
    assert not bad, f"{arch}: max|Δ| above {TOL}: {bad}"

    # Eigen: the sign is fixed so that the projection correlates positively with Σ_k M.
    for M in (case["A"], case["g"] * case["A"]):
        p, s = first_component_projection(M).reshape(3, -1), M.sum(axis=1).reshape(3, -1)
        assert (((p - p.mean(1, keepdims=True)) * (s - s.mean(1, keepdims=True))).sum(1) >= 0).all()

    if arch == "vgg16":  # no global pooling in the head: these would coincide otherwise
        maps = {m: ours(case, m) for m in ("gradcam", "hirescam", "xgradcam")}
        assert np.abs(maps["gradcam"] - maps["hirescam"]).max() > 1e-2
        assert np.abs(maps["gradcam"] - maps["xgradcam"]).max() > 1e-2


def test_eigen_sign_flip_on_synthetic_activations():
    rng = np.random.default_rng(0)
    A = rng.random((2, 8, 5, 6)).astype(np.float32) * 0.1
    A[:, :, 1:3, 2:4] += 5.0  # a bright blob in every channel
    p = first_component_projection(A)
    assert (p[:, 1:3, 2:4].mean(axis=(1, 2)) > p.mean(axis=(1, 2))).all()
    np.testing.assert_allclose(first_component_projection(-A), -p, atol=1e-5)


def test_eigen_ignores_nan():
    A = np.ones((1, 3, 4, 4), np.float32)
    A[0, 0, 0, 0] = np.nan
    assert np.isfinite(first_component_projection(A)).all()


def test_gradcam_plusplus_zero_where_gradient_zero():
    A = np.ones((1, 2, 2, 2), np.float32)
    g = np.zeros_like(A)
    g[0, 0] = 1.0
    raw = METHODS["gradcam++"].cam(A, g, g**2, g**3)
    # channel 0: α = 1/(2 + 4·1 + 1e-6), w0 = 4α; channel 1 has g = 0 → w1 = 0
    np.testing.assert_allclose(raw, np.full((1, 2, 2), 4 / (6 + 1e-6)), rtol=1e-6)


def test_registry_says_what_each_method_reads():
    assert "gradients_pow3" in METHODS["gradcam++"].reads
    assert METHODS["eigencam"].reads == ("activations",)
    assert all(METHODS[m].cam is not None for m in REFERENCE_CLASSES)


# -- every method on hand-made numbers (no torch): the formulas pinned by values worked out by hand ---
A_HAND = np.array([[[[1, 2], [3, 4]], [[0, 1], [1, 0]]]], np.float32)    # [1, 2, 2, 2]
G_HAND = np.array([[[[1, -1], [2, 0]], [[-2, 1], [0, 1]]]], np.float32)
EXPECTED = {
    # w = mean g = (0.5, 0)
    "gradcam": [[0.5, 1.0], [1.5, 2.0]],
    # w_k = Σ g·A / Σ A = (5/10, 1/2)
    "xgradcam": [[0.5, 1.5], [2.0, 2.0]],
    # Σ_k g·A
    "hirescam": [[1.0, -1.0], [6.0, 0.0]],
    # Σ_k ReLU(g·A)
    "gradcam-elementwise": [[1.0, 1.0], [6.0, 0.0]],
    # Σ_k ReLU(g)·A
    "layercam": [[1.0, 1.0], [6.0, 0.0]],
    # α = g²/(2g² + ΣA·g³): channel 0 (ΣA = 10): 1/12 at g=1, 1/22 at g=2 (×2), 0 where g ≤ 0 → w0 = 23/132;
    # channel 1 (ΣA = 2): 1/4 at both g=1 → w1 = 1/2
    "gradcam++": (23 / 132 * A_HAND[0, 0] + 0.5 * A_HAND[0, 1]).tolist(),
    # w = mean(−g) = (−0.5, 0)
    "gradcam-counterfactual": [[-0.5, -1.0], [-1.5, -2.0]],
    # positions × channels centred: [(−1.5,−.5), (−.5,.5), (.5,.5), (1.5,−.5)]; XᵀX = diag(5, 1) → v₁ = e₁;
    # p = (−1.5, −.5, .5, 1.5) correlates positively with Σ_k A = (1, 3, 4, 4): sign kept
    "eigencam": [[-1.5, -0.5], [0.5, 1.5]],
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_method_on_hand_made_numbers(method):
    raw = METHODS[method].cam(A_HAND, G_HAND, G_HAND ** 2, G_HAND ** 3)
    assert raw.dtype == np.float32 and raw.shape == (1, 2, 2)
    np.testing.assert_allclose(raw[0], EXPECTED[method], rtol=1e-5, atol=1e-6)


def test_eigengradcam_is_eigencam_of_gradient_times_activation():
    np.testing.assert_allclose(METHODS["eigengradcam"].cam(A_HAND, G_HAND),
                               METHODS["eigencam"].cam(A_HAND * G_HAND), atol=1e-6)


def test_scorecam_weights_on_hand_made_numbers():
    """Masks = per-channel min-max of A (here at input size): (·, 1; ·, ·) and (1, 1; 1, ·); the
    score of class 0 is Σ x·mask = 1 and 3; w = softmax(1, 3) = (1, e²)/(1 + e²)."""
    from onnxcam.runtime.scorecam import scorecam_weights

    A = np.array([[[[0, 1], [0, 0]], [[1, 1], [1, 0]]]], np.float32)
    x = np.ones((1, 1, 2, 2), np.float32)

    def score(xb: np.ndarray) -> np.ndarray:
        return np.stack([xb.sum(axis=(1, 2, 3)), np.zeros(len(xb))], axis=1)

    w = scorecam_weights(score, x, A, np.array([0]))
    e2 = np.exp(2.0)
    np.testing.assert_allclose(w[0], [1 / (1 + e2), e2 / (1 + e2)], rtol=1e-5)


def test_ablation_weights_on_hand_made_numbers():
    """A linear head S_c = Σ_k v_ck·mean(A_k): zeroing channel k lowers S_c by v_ck·mean(A_k), so
    w_k = v_ck·mean(A_k)/S_c."""
    from onnxcam.runtime.ablation import ablation_weights

    v = np.array([[2.0, 1.0], [0.0, 3.0]], np.float32)     # [classes, channels]

    def head(acts: np.ndarray, image: int = 0) -> np.ndarray:
        assert image == 0                                   # rows of image 0 only
        return acts.mean(axis=(2, 3)) @ v.T

    means = A_HAND.mean(axis=(2, 3))[0]                     # (2.5, 0.5)
    y = head(A_HAND)[0, 0]                                  # 2·2.5 + 0.5 = 5.5
    w = ablation_weights(head, A_HAND, np.array([y]), np.array([0]))
    np.testing.assert_allclose(w[0], [2 * means[0] / y, 1 * means[1] / y], rtol=1e-6)


def test_input_space_methods_on_a_linear_score():
    """S = Σ w·x: ∂S/∂x = w everywhere, so SmoothGrad = w and Integrated Gradients from a zero
    baseline = x·w (completeness: Σ = S(x) − S(0)) for every integration rule."""
    from onnxcam.runtime import input_methods as im

    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4, 5)).astype(np.float32)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)

    def grad(xb: np.ndarray, classes: np.ndarray) -> np.ndarray:
        return np.broadcast_to(w, xb.shape).copy()

    smooth, _ = im.smoothgrad(grad, x, np.array([0, 0]), n_samples=4, batch_size=3)
    np.testing.assert_allclose(smooth, np.broadcast_to(w, x.shape), rtol=1e-6)
    for rule in ("gausslegendre", "riemann_middle", "riemann_right"):
        attr, raw = im.integrated_gradients(grad, x, np.array([0, 0]), n_steps=6, integration=rule, batch_size=5)
        np.testing.assert_allclose(attr, x * w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(raw, (x * w).sum(axis=1), rtol=1e-5, atol=1e-5)
    attr, raw = im.saliency(np.stack([w, -2 * w]))
    np.testing.assert_allclose(raw[1], 2 * np.abs(w).max(axis=0))
    attr, raw = im.guided_backprop(np.stack([w, w]))
    np.testing.assert_allclose(raw[0], w.sum(axis=0), rtol=1e-6)
