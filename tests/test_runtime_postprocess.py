"""The numpy resizers and the default post-processing against cv2 / torch / pytorch-grad-cam."""
from __future__ import annotations

import numpy as np
import pytest

from onnxcam.runtime.postprocess import minmax_per_image, postprocess
from onnxcam.runtime.resize import resize_bilinear, resize_bilinear_align_corners

SIZES = [((7, 7), (224, 224)), ((14, 14), (7, 7)), ((9, 13), (31, 17)), ((31, 17), (9, 13)),
         ((5, 8), (5, 8)), ((8, 6), (4, 3)), ((1, 5), (3, 7)), ((6, 9), (1, 1)), ((224, 224), (13, 300)),
         ((3, 3), (100, 7))]


@pytest.mark.parametrize("src, dst", SIZES)
def test_resize_equals_cv2_inter_linear(src, dst):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(sum(src) + sum(dst))
    maps = rng.normal(size=(2,) + src).astype(np.float32) * 3
    got = resize_bilinear(maps, dst)
    assert got.shape == (2,) + dst and got.dtype == np.float32
    for m, g in zip(maps, got):
        ref = cv2.resize(m, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
        assert np.abs(g - ref.reshape(dst)).max() <= 1e-5


@pytest.mark.parametrize("src, dst", SIZES)
def test_align_corners_resize_equals_torch(src, dst):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    maps = rng.normal(size=(3,) + src).astype(np.float32)
    ref = torch.nn.UpsamplingBilinear2d(size=dst)(torch.from_numpy(maps)[None])[0].numpy()
    assert np.abs(resize_bilinear_align_corners(maps, dst) - ref).max() <= 1e-5


def test_resize_preserves_constants_and_linear_ramps():
    const = np.full((1, 5, 7), 2.5, np.float32)
    np.testing.assert_allclose(resize_bilinear(const, (13, 3)), 2.5, rtol=1e-6)
    ramp = np.tile(np.arange(8, dtype=np.float32), (1, 4, 1))
    up = resize_bilinear_align_corners(ramp, (4, 15))
    np.testing.assert_allclose(up[0, 0], np.linspace(0, 7, 15), atol=1e-6)


def test_minmax_matches_scale_cam_image():
    image = pytest.importorskip("pytorch_grad_cam.utils.image")
    rng = np.random.default_rng(1)
    cams = rng.normal(size=(4, 7, 9)).astype(np.float32)
    cams[1] = 0.0  # a flat map stays 0 (eps in the denominator)
    np.testing.assert_allclose(minmax_per_image(cams), image.scale_cam_image(cams), atol=1e-7)
    assert (minmax_per_image(cams)[1] == 0).all()


@pytest.mark.parametrize("src, dst", [((7, 7), (224, 224)), ((14, 14), (224, 224)), ((9, 13), (37, 21)),
                                      ((28, 28), (14, 14))])
def test_postprocess_equals_pytorch_grad_cam_pipeline(src, dst):
    """BaseCAM.compute_cam_per_layer + aggregate_multi_layers, for one layer, on raw maps."""
    image = pytest.importorskip("pytorch_grad_cam.utils.image")
    rng = np.random.default_rng(2)
    raw = rng.normal(size=(3,) + src).astype(np.float32)
    raw[2] = -np.abs(raw[2])  # all-negative map: ReLU leaves zeros
    per_layer = image.scale_cam_image(np.maximum(raw, 0), (dst[1], dst[0]))[:, None]
    ref = image.scale_cam_image(np.mean(np.maximum(per_layer, 0), axis=1))
    got = postprocess(raw, dst)
    assert got.shape == (3,) + dst and got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-5
    assert got.min() >= 0 and got.max() <= 1 and (got[2] == 0).all()


def test_postprocess_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\[N, h, w\]"):
        postprocess(np.zeros((7, 7)), (14, 14))
