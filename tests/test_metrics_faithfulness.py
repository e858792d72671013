"""Faithfulness metrics: parity with pytorch-grad-cam's metrics on the tiny CNN (torch model vs
its explanation graph), deletion/insertion vs a straightforward RISE re-implementation, and
hand-computed values on a linear toy model."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from onnxcam.runtime import Explainer
from onnxcam.runtime.metrics import (auc, average_drop, cam_mult_scores, confidence_change, deletion_curve,
                                     drop_in_confidence, gaussian_blur, increase_in_confidence,
                                     increase_in_confidence_percent, insertion_curve, relative_drop,
                                     remove_top_percent, rise_kernel, win_percent)

DATA = Path(__file__).resolve().parent / "data"
TINY = DATA / "tiny.cam.onnx"


@pytest.fixture(scope="module")
def tiny():
    return Explainer(TINY, providers=["CPUExecutionProvider"], batch_size=8)


@pytest.fixture(scope="module")
def torch_tiny():
    pytest.importorskip("torch")
    sys.path.insert(0, str(DATA))
    try:
        from make_tiny import build
    finally:
        sys.path.remove(str(DATA))
    return build()


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 32, 32)).astype(np.float32)
    maps = rng.random((6, 32, 32)).astype(np.float32)
    return x, maps


def _targets(kind, classes):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
    cls = ClassifierOutputSoftmaxTarget if kind == "probability" else ClassifierOutputTarget
    return [cls(int(c)) for c in classes]


@pytest.mark.parametrize("score", ["probability", "logit"])
def test_confidence_metrics_equal_pytorch_grad_cam(tiny, torch_tiny, batch, score):
    import torch
    from pytorch_grad_cam.metrics.cam_mult_image import (CamMultImageConfidenceChange, DropInConfidence,
                                                         IncreaseInConfidence)
    x, maps = batch
    classes = np.array([0, 3, 5, 9, 1, 2])
    targets = _targets(score, classes)
    xt = torch.from_numpy(x)
    want_change = CamMultImageConfidenceChange()(xt, maps, targets, torch_tiny)
    want_drop = DropInConfidence()(xt, maps, targets, torch_tiny)
    want_inc = IncreaseInConfidence()(xt, maps, targets, torch_tiny)
    tol = 1e-5 if score == "probability" else 1e-4
    np.testing.assert_allclose(confidence_change(tiny, x, maps, classes, score=score), want_change, atol=tol)
    np.testing.assert_allclose(drop_in_confidence(tiny, x, maps, classes, score=score), want_drop, atol=tol)
    got_inc = increase_in_confidence(tiny, x, maps, classes, score=score)
    close = np.abs(want_change) < tol  # a sign could flip within float noise
    np.testing.assert_array_equal(got_inc[~close], want_inc[~close])


def test_top1_class_and_callable_model_agree_with_explainer(tiny, torch_tiny, batch):
    import torch
    x, maps = batch

    def torch_logits(xb):
        with torch.no_grad():
            return torch_tiny(torch.from_numpy(xb)).numpy()

    y1, o1, c1 = cam_mult_scores(tiny, x, maps)
    y2, o2, c2 = cam_mult_scores(torch_logits, x, maps, batch_size=4)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(c1, torch_logits(x).argmax(1))
    np.testing.assert_allclose(y1, y2, atol=1e-5)
    np.testing.assert_allclose(o1, o2, atol=1e-5)


def _rise_reference(model, img, explanation, mode, step, c):
    """RISE's CausalMetric.single_run, restated with torch (Petsiuk et al. 2018 code)."""
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import gaussian_filter
    HW = img.shape[-1] * img.shape[-2]
    inp = np.zeros((11, 11)); inp[5, 5] = 1
    k = gaussian_filter(inp, 5)
    kern = np.zeros((3, 3, 11, 11), np.float32)
    for i in range(3):
        kern[i, i] = k
    kern = torch.from_numpy(kern)
    img_t = torch.from_numpy(img[None])
    if mode == "del":
        start, finish = img_t.clone(), torch.zeros_like(img_t)
    else:
        start, finish = F.conv2d(img_t, kern, padding=5), img_t.clone()
    n_steps = (HW + step - 1) // step
    scores = np.empty(n_steps + 1)
    order = np.argsort(-explanation.reshape(-1), kind="stable")
    for i in range(n_steps + 1):
        with torch.no_grad():
            scores[i] = torch.softmax(model(start), 1)[0, c].item()
        coords = order[step * i: step * (i + 1)]
        start.view(1, 3, HW)[0, :, coords] = finish.view(1, 3, HW)[0, :, coords]
    return scores, (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (len(scores) - 1)


@pytest.mark.parametrize("mode", ["del", "ins"])
def test_deletion_insertion_equal_the_rise_recipe(tiny, torch_tiny, batch, mode):
    x, maps = batch
    x, maps = x[:2], maps[:2]
    step = 50
    fn = deletion_curve if mode == "del" else insertion_curve
    curves = fn(tiny, x, maps, class_index=[4, 7], step=step)
    assert curves.shape == (2, (32 * 32 + step - 1) // step + 1)
    for i, c in enumerate([4, 7]):
        want, want_auc = _rise_reference(torch_tiny, x[i], maps[i], mode, step, c)
        np.testing.assert_allclose(curves[i], want, atol=2e-5)
        assert abs(auc(curves[i]) - want_auc) < 2e-5


def test_blur_equals_scipy_kernel_and_torch_conv(batch):
    torch = pytest.importorskip("torch")
    from scipy.ndimage import gaussian_filter
    inp = np.zeros((11, 11)); inp[5, 5] = 1
    np.testing.assert_allclose(rise_kernel(11, 5), gaussian_filter(inp, 5), atol=1e-12)
    x = batch[0][:2]
    kern = torch.zeros(3, 3, 11, 11, dtype=torch.float64)
    for i in range(3):
        kern[i, i] = torch.from_numpy(gaussian_filter(inp, 5))
    want = torch.nn.functional.conv2d(torch.from_numpy(x).double(), kern, padding=5).numpy()
    np.testing.assert_allclose(gaussian_blur(x), want, atol=1e-5)
    nhwc = gaussian_blur(x.transpose(0, 2, 3, 1), layout="NHWC")
    np.testing.assert_allclose(nhwc.transpose(0, 3, 1, 2), want, atol=1e-5)


# -- hand-computed values on a linear toy model -------------------------------------------------
def linear(x):
    """logit_0 = sum of all pixels, logit_1 = 0 (NCHW)."""
    s = x.reshape(len(x), -1).sum(1)
    return np.stack([s, np.zeros_like(s)], 1)


def test_hand_computed_confidence_change_and_removal():
    x = np.ones((1, 2, 2, 2), np.float32)  # logit_0 = 8
    m = np.array([[[1.0, 0.5], [0.25, 0.0]]], np.float32)
    # x ⊙ m → logit 2·(1 + .5 + .25) = 3.5 → change −4.5
    assert confidence_change(linear, x, m, 0, score="logit") == pytest.approx([-4.5])
    p = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731  softmax over (z, 0)
    assert confidence_change(linear, x, m, 0)[0] == pytest.approx(p(3.5) - p(8), abs=1e-6)
    assert drop_in_confidence(linear, x, m, 0, score="logit")[0] == pytest.approx(4.5)
    assert increase_in_confidence(linear, x, m, 1)[0] == 1.0  # class 1 gains when logit_0 falls
    # top 25 % = 1 pixel (value 1.0) removed in both channels: 8 → 6; top 50 %: 8 → 4
    assert remove_top_percent(linear, x, m, 25, 0, score="logit") == pytest.approx([-2.0])
    assert remove_top_percent(linear, x, m, 50, 0, score="logit", relative=True) == pytest.approx([-50.0])
    # NHWC callable: same numbers
    assert remove_top_percent(linear, x.transpose(0, 2, 3, 1), m, 25, 0, score="logit",
                              layout="NHWC") == pytest.approx([-2.0])


def test_hand_computed_deletion_curve_and_auc():
    x = np.ones((1, 1, 2, 2), np.float32)
    m = np.array([[[0.1, 0.9], [0.5, 0.3]]], np.float32)
    # step 1: logit_0 goes 4, 3, 2, 1, 0
    np.testing.assert_allclose(deletion_curve(linear, x, m, 0, step=1, score="logit"), [[4, 3, 2, 1, 0]])
    np.testing.assert_allclose(deletion_curve(linear, x, m, 0, step=3, score="logit"), [[4, 1, 0]])
    assert auc(np.array([4, 3, 2, 1, 0.])) == pytest.approx((10 - 2) / 4)
    assert auc(np.array([[1, 0.5, 0], [0, 1, 1]])) == pytest.approx([0.5, 0.75])
    # insertion: blurred start (sum of the blurred ones), ends at the image
    ins = insertion_curve(linear, x, m, 0, step=4, score="logit")
    assert ins[0, -1] == pytest.approx(4.0)
    assert ins[0, 0] == pytest.approx(gaussian_blur(x).sum(), rel=1e-6)


def test_average_drop_increase_and_win():
    y = np.array([0.8, 0.5, 0.4, 0.9])
    o = np.array([0.4, 0.6, 0.4, 0.0])
    np.testing.assert_allclose(relative_drop(y, o), [0.5, 0.0, 0.0, 1.0])
    assert average_drop(y, o) == pytest.approx(37.5)
    assert increase_in_confidence_percent(y, o) == pytest.approx(25.0)
    assert win_percent([0.5, 0.0, 0.0, 1.0], [0.6, 0.0, 0.1, 0.9]) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        win_percent([1.0], [1.0, 2.0])


def test_bad_shapes_are_clear_errors(tiny, batch):
    x, maps = batch
    with pytest.raises(ValueError, match="maps must be"):
        confidence_change(tiny, x, maps[:, :16])
    with pytest.raises(ValueError, match="score must be"):
        confidence_change(tiny, x, maps, score="prob")
    with pytest.raises(ValueError, match="out of range"):
        confidence_change(tiny, x, maps, 10)


def test_curves_batch_across_images_and_check_classes(tiny, batch):
    x, maps = batch
    calls = []

    def counting(xb):
        calls.append(len(xb))
        return tiny.scores(xb)

    curves = deletion_curve(counting, x[:3], maps[:3], class_index=[1, 2, 3], step=256, batch_size=8)
    assert curves.shape == (3, 5) and calls == [8, 7]  # 15 points in two runs, no run on x itself
    np.testing.assert_allclose(curves, deletion_curve(tiny, x[:3], maps[:3], [1, 2, 3], step=256), atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        insertion_curve(tiny, x[:2], maps[:2], class_index=[1, 12], step=256)
