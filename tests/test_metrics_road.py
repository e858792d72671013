"""ROAD: the numpy conjugate-gradient imputation vs pytorch-grad-cam's sparse solve, and the ROAD
metrics vs pytorch-grad-cam's ROAD* classes with the noise set to zero, on the tiny CNN."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from onnxcam.runtime import Explainer
from onnxcam.runtime.metrics.road import (PERCENTILES, linear_impute, noisy_linear_impute, road_combined,
                                          road_keep_mask, road_lerf, road_morf, road_scores)

DATA = Path(__file__).resolve().parent / "data"


def test_hand_computed_centre_pixel():
    img = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    keep = np.ones((1, 3, 3), bool)
    keep[0, 1, 1] = False
    got = linear_impute(img, keep)[0, 0, 1, 1]
    edges, diags = 1 + 3 + 5 + 7, 0 + 2 + 6 + 8
    assert got == pytest.approx(edges / 6 + diags / 12)  # weights sum to 1 in the interior
    # a corner pixel: its 3 in-image neighbours, weights renormalised by their sum 1/6 + 1/6 + 1/12
    keep = np.ones((1, 3, 3), bool)
    keep[0, 0, 0] = False
    want = (1 / 6 * (1 + 3) + 1 / 12 * 4) / (5 / 12)
    assert linear_impute(img, keep)[0, 0, 0, 0] == pytest.approx(want)
    # nothing kept: stays 0 (no information), kept pixels never change
    assert np.all(linear_impute(img, np.zeros((1, 3, 3), bool)) == 0)
    full = np.ones((1, 3, 3), bool)
    np.testing.assert_array_equal(linear_impute(img, full), img)


def test_noise_is_seeded_and_only_on_removed_pixels():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    keep = rng.random((2, 8, 8)) < 0.5
    a = noisy_linear_impute(x, keep, 0.01, np.random.default_rng(1))
    b = noisy_linear_impute(x, keep, 0.01, np.random.default_rng(1))
    clean = noisy_linear_impute(x, keep, 0.0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[np.broadcast_to(keep[:, None], a.shape)],
                                  x[np.broadcast_to(keep[:, None], x.shape)])
    assert 0.003 < np.std((a - clean)[np.broadcast_to(~keep[:, None], a.shape)]) < 0.03
    nhwc = noisy_linear_impute(x.transpose(0, 2, 3, 1), keep, 0.0, layout="NHWC")
    np.testing.assert_allclose(nhwc.transpose(0, 3, 1, 2), clean, atol=1e-6)


def test_keep_mask_rule():
    m = np.arange(10, dtype=np.float32).reshape(1, 2, 5) / 9
    assert road_keep_mask(m, 80, "morf").sum() == 8     # top 20 % removed
    assert road_keep_mask(m, 20, "lerf").sum() == 2     # bottom 80 % removed
    assert road_keep_mask(m, 20, "lerf")[0, 1, 4]


@pytest.fixture(scope="module")
def setup():
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytorch_grad_cam")
    sys.path.insert(0, str(DATA))
    try:
        from make_tiny import build
    finally:
        sys.path.remove(str(DATA))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    yy, xx = np.mgrid[:32, :32]
    maps = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 60.0) + 0.01 * rng.random((32, 32))
                     for cy, cx in [(8, 8), (16, 20), (25, 10)]]).astype(np.float32)
    return torch, build(), Explainer(DATA / "tiny.cam.onnx", providers=["CPUExecutionProvider"]), x, maps


def test_road_equals_pytorch_grad_cam_without_noise(setup):
    torch, model, ex, x, maps = setup
    from pytorch_grad_cam.metrics.perturbation_confidence import (PerturbationConfidenceMetric,
                                                                  RemoveLeastRelevantFirst, RemoveMostRelevantFirst)
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    classes = [1, 4, 7]
    targets = [ClassifierOutputSoftmaxTarget(c) for c in classes]
    xt = torch.from_numpy(x)

    def ref(remover):
        return np.stack([PerturbationConfidenceMetric(remover(p, NoisyLinearImputer(noise=0)))(
            xt, maps, targets, model) for p in PERCENTILES], 1)

    want_morf, want_lerf = ref(RemoveMostRelevantFirst), ref(RemoveLeastRelevantFirst)
    got_morf = road_scores(ex, x, maps, "morf", class_index=classes, noise=0)
    got_lerf = road_scores(ex, x, maps, "lerf", class_index=classes, noise=0)
    np.testing.assert_allclose(got_morf, want_morf, atol=2e-5)
    np.testing.assert_allclose(got_lerf, want_lerf, atol=2e-5)
    np.testing.assert_allclose(road_morf(ex, x, maps, class_index=classes, noise=0), want_morf.mean(1), atol=2e-5)
    np.testing.assert_allclose(road_lerf(ex, x, maps, class_index=classes, noise=0), want_lerf.mean(1), atol=2e-5)
    np.testing.assert_allclose(road_combined(ex, x, maps, class_index=classes, noise=0),
                               (want_lerf.mean(1) - want_morf.mean(1)) / 2, atol=2e-5)
