"""ROAD: the numpy multigrid-CG imputation vs a float64 direct solve (numpy, and pytorch-grad-cam's
scipy sparse solve), and the ROAD metrics vs pytorch-grad-cam's ROAD* classes with the noise set to
zero, on the tiny CNN."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from onnxcam.runtime import Explainer
from onnxcam.runtime.metrics.imputation import NEIGHBOURS
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


def direct_solve(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Reference: the imputation system built from its definition and solved densely in float64."""
    b, c, h, w = x.shape
    out = x.astype(np.float64)
    for i in range(b):
        unk = np.flatnonzero(~keep[i].ravel())
        if len(unk) == 0:
            continue
        n = len(unk)
        index = np.full(h * w, -1)
        index[unk] = np.arange(n)
        a, rhs = np.zeros((n, n)), np.zeros((n, c))
        ys, xs = np.divmod(unk, w)
        for (dy, dx), wt in NEIGHBOURS:
            yy, xx = ys + dy, xs + dx
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            rows, j = np.arange(n)[ok], (yy * w + xx)[ok]
            a[rows, rows] += wt                       # D_i: weight of the in-image neighbours
            removed = index[j] >= 0
            a[rows[removed], index[j[removed]]] -= wt
            rhs[rows[~removed]] += wt * out[i].reshape(c, -1)[:, j[~removed]].T
        out[i].reshape(c, -1)[:, unk] = np.linalg.solve(a, rhs).T
    return out


@pytest.mark.parametrize("hw", [(32, 32), (37, 53), (9, 70), (64, 48)])
def test_fast_solver_equals_direct_float64_solve(hw):
    """The multigrid-CG imputation (float32) vs a dense float64 solve, on odd and even sizes,
    removed sets touching the image border, ragged random masks, a disc, one kept pixel.

    Bound: |u − u_ref| ≤ 5e-5 × the channel's value range at the default stopping rule (last
    update ≤ 1e-4 × range; the preconditioned iteration at least halves the error per step, so
    the remaining error is below the last update; measured ≤ 1.3e-5), and ≤ 1e-5 × range at
    ``tol=1e-6`` (what float32 arithmetic allows; measured ≤ 7.6e-6)."""
    h, w = hw
    rng = np.random.default_rng(h * w)
    x = (2 * rng.standard_normal((4, 3, h, w)) + 1).astype(np.float32)
    yy, xx = np.mgrid[:h, :w]
    one = np.zeros((h, w), bool)
    one[h // 2, w // 3] = True
    keep = np.stack([rng.random((h, w)) < 0.3, ((yy - h / 2) ** 2 + (xx - w / 3) ** 2) > (min(h, w) / 3) ** 2,
                     one, yy + xx > (h + w) // 2])
    ref = direct_solve(x, keep)
    scale = np.ptp(x, axis=(2, 3), keepdims=True)
    got = linear_impute(x, keep)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(linear_impute(x, keep, threads=1), got)  # threads: image by image, same result
    kept = np.broadcast_to(keep[:, None], x.shape)
    np.testing.assert_array_equal(got[kept], x[kept])
    assert np.max(np.abs(got - ref) / scale) <= 5e-5
    tight = linear_impute(x, keep, tol=1e-6)
    assert np.max(np.abs(tight - ref) / scale) <= 1e-5
    # a starting guess (as ROAD passes the previous percentile's imputation) changes nothing beyond the bound
    warm = linear_impute(x, keep, initial=ref.astype(np.float32) + rng.standard_normal(x.shape).astype(np.float32))
    assert np.max(np.abs(warm - ref) / scale) <= 5e-5


def test_fast_solver_equals_pytorch_grad_cam_on_a_photo_sized_image():
    """224 × 224 (5 grid levels), smooth blobs as ROAD removes them, against pytorch-grad-cam's
    ``NoisyLinearImputer(noise=0)`` (scipy ``spsolve`` in float64): same bound as above."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:224, :224]
    smooth = np.sin(yy[None] / (9.0 + 4 * np.arange(3)[:, None, None])) + np.cos(xx[None] / 13.0)
    x = (smooth + 0.3 * rng.standard_normal((3, 224, 224)))[None].astype(np.float32)
    m = np.exp(-((yy - 70) ** 2 + (xx - 150) ** 2) / 3000.0)[None].astype(np.float32)
    for order, p in (("morf", 50), ("lerf", 30)):
        keep = road_keep_mask(m, p, order)
        want = NoisyLinearImputer(noise=0)(torch.from_numpy(x[0]), torch.from_numpy(keep[0].astype(np.float32)))
        got = linear_impute(x, keep)
        assert np.max(np.abs(got[0] - want.numpy()) / np.ptp(x, axis=(2, 3))[0, :, None, None]) <= 5e-5


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
    """Tolerance 2e-6 on the probability changes: our imputed values are within 5e-5 × range of
    the float64 direct solve (tests above), which moves the tiny CNN's softmax by ≤ 3.3e-7
    (measured); 2e-6 leaves a 6× margin for float32 and onnxruntime-vs-torch differences (the
    test used 2e-5 with the former 1e-9 conjugate-gradient solver)."""
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

    ATOL = 2e-6
    want_morf, want_lerf = ref(RemoveMostRelevantFirst), ref(RemoveLeastRelevantFirst)
    got_morf = road_scores(ex, x, maps, "morf", class_index=classes, noise=0)
    got_lerf = road_scores(ex, x, maps, "lerf", class_index=classes, noise=0)
    np.testing.assert_allclose(got_morf, want_morf, atol=ATOL)
    np.testing.assert_allclose(got_lerf, want_lerf, atol=ATOL)
    np.testing.assert_allclose(road_morf(ex, x, maps, class_index=classes, noise=0), want_morf.mean(1), atol=ATOL)
    np.testing.assert_allclose(road_lerf(ex, x, maps, class_index=classes, noise=0), want_lerf.mean(1), atol=ATOL)
    np.testing.assert_allclose(road_combined(ex, x, maps, class_index=classes, noise=0),
                               (want_lerf.mean(1) - want_morf.mean(1)) / 2, atol=ATOL)
