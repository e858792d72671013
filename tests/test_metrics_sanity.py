"""Sanity of the metrics on a real model and real photos (efficientnet-lite0, exported once per
session; the shared fixture photos with ground-truth masks), and the cascading parameter
randomisation test. The similarity measures are checked against scipy / scikit-image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnxcam.runtime import Explainer
from onnxcam.runtime.metrics import auc, deletion_curve, insertion_curve, pointing_game
from onnxcam.runtime.metrics.sanity import model_randomisation, parameter_layers, rankdata, spearman, ssim

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "fixtures" / "images"
NAMES = ["coral_dog_segmentation.png", "coral_bird_segmentation.png", "coral_cat.png", "coral_parrot.jpg",
         "coral_hot_dog.jpg"]


def test_rank_spearman_ssim_equal_scipy_and_skimage():
    stats = pytest.importorskip("scipy.stats")
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.random((20, 24))
    a[a < 0.3] = 0.3  # ties
    b = a + 0.3 * rng.random((20, 24))
    np.testing.assert_allclose(rankdata(a), stats.rankdata(a.ravel()))
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel())[0], abs=1e-12)
    assert ssim(a, b) == pytest.approx(metrics.structural_similarity(a, b, data_range=1.0), abs=1e-12)
    assert ssim(a, a) == pytest.approx(1.0) and spearman(a, a) == pytest.approx(1.0)
    assert np.isnan(spearman(np.ones((8, 8)), a[:8, :8]))


def test_randomisation_on_the_tiny_graph():
    pytest.importorskip("onnx")
    import onnx
    tiny = ROOT / "tests" / "data" / "tiny.cam.onnx"
    layers = parameter_layers(onnx.load(str(tiny)))
    assert [len(n) for _, n in layers] == [2, 2, 2]  # conv, conv, fc (weight + bias each)
    assert "fc.weight" in layers[-1][1][0]
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    r = model_randomisation(tiny, x, "gradcam", steps=[1, 3], seed=1)
    assert [len(s) for s in r.layers] == [1, 3] and r.spearman.shape == r.ssim.shape == (2, 2)
    assert np.all(r.spearman < 0.99)
    again = model_randomisation(tiny, x, "gradcam", steps=[1, 3], seed=1)
    np.testing.assert_array_equal(r.spearman, again.spearman)


@pytest.fixture(scope="session")
def effnet(tmp_path_factory):
    pytest.importorskip("torch")
    if not all((PHOTOS / n).is_file() for n in NAMES):
        pytest.skip("shared fixture photos not present")
    from onnxcam.exporter import export
    path = tmp_path_factory.mktemp("effnet") / "efficientnet-lite0.cam.onnx"
    export("efficientnet-lite0", out=str(path))
    return path


@pytest.fixture(scope="module")
def photos(effnet):
    ex = Explainer(effnet, providers=["CPUExecutionProvider"], batch_size=32)
    x, _ = ex.prepare([PHOTOS / n for n in NAMES])
    return ex, x


def test_gradcam_beats_a_random_map_on_deletion_and_insertion(photos):
    """Means over the five photos (per photo the Samoyed's insertion is not informative: its
    blurred version already scores as high as the photo)."""
    ex, x = photos
    gradcam = ex.explain(x, "gradcam").heatmaps
    random = np.random.default_rng(0).random(gradcam.shape).astype(np.float32)
    step = 224 * 32  # 8 points per curve: margins ≈ 0.08 (deletion) and 0.12 (insertion), similar at 224·8 and 224·16
    d_g, d_r = auc(deletion_curve(ex, x, gradcam, step=step)), auc(deletion_curve(ex, x, random, step=step))
    i_g, i_r = auc(insertion_curve(ex, x, gradcam, step=step)), auc(insertion_curve(ex, x, random, step=step))
    assert d_g.mean() < d_r.mean() - 0.03, (d_g, d_r)
    assert i_g.mean() > i_r.mean() + 0.05, (i_g, i_r)


def test_pointing_game_hits_the_samoyed_and_the_bird(photos):
    ex, _ = photos
    res = ex.explain([PHOTOS / NAMES[0], PHOTOS / NAMES[1]], "gradcam")
    assert ex.labels[res.class_index[0]] == "Samoyed"
    dog_map, bird_map = res.heatmaps_on_original()
    dog = np.asarray(Image.open(PHOTOS / "coral_dog_segmentation_mask.png")) == 0   # trimap: 0 = dog
    bird = np.asarray(Image.open(PHOTOS / "coral_bird_segmentation_mask.png")) == 3  # VOC: 3 = bird
    assert pointing_game(dog_map, dog)[0]
    assert pointing_game(bird_map, bird)[0]
    background = ~dog & (np.asarray(Image.open(PHOTOS / "coral_dog_segmentation_mask.png")) == 1)
    assert not pointing_game(dog_map, background)[0]


def test_cascading_randomisation_drives_spearman_down(effnet, photos):
    _, x = photos
    r = model_randomisation(effnet, x[:2], "gradcam", steps=[1, 4, 1000], seed=0,
                            providers=["CPUExecutionProvider"])
    rho = r.spearman.mean(axis=1)
    assert len(r.layers[0]) == 1 and len(r.layers[-1]) > 40  # the head only … every layer
    assert rho[0] > rho[-1] + 0.3, r.spearman
    assert rho[-1] < 0.3, r.spearman
