"""Localisation and complexity metrics: hand-computed values on small synthetic maps, and
Quantus (Sparseness = Gini, PointingGame) when it is installed."""
from __future__ import annotations

import numpy as np
import pytest

from onnxcam.runtime.metrics.localisation import (as_boxes, as_mask, box_iou, box_localisation, boxes_to_mask,
                                                  energy_pointing_game, gini, label_components, mask_to_box,
                                                  pointing_game, sparsity, top_percent_box, topk_box_iou)


def test_box_helpers():
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 2, 2), (2, 2, 4, 4)) == 0.0
    assert box_iou((0, 0, 4, 2), (0, 0, 4, 2)) == 1.0
    m = boxes_to_mask(np.array([[1, 0, 3, 2]]), (4, 4))
    assert m.sum() == 4 and m[0, 1] and m[1, 2] and not m[2, 1]
    np.testing.assert_array_equal(mask_to_box(m), [1, 0, 3, 2])
    with pytest.raises(ValueError, match="outside"):
        as_boxes([0, 0, 5, 2], (4, 4))
    with pytest.raises(ValueError, match="outside"):
        as_boxes([2, 0, 2, 2], (4, 4))
    with pytest.raises(ValueError, match="size"):
        as_mask(np.ones((3, 4), bool), (4, 4))
    with pytest.raises(ValueError, match="no pixels"):
        as_mask(np.zeros((4, 4), bool), (4, 4))


def test_top_percent_box_iou():
    m = np.zeros((4, 4), np.float32)
    m[0, 0], m[0, 1], m[1, 0], m[1, 1] = 1.0, 0.9, 0.8, 0.7  # top 25 % = these 4 pixels
    np.testing.assert_array_equal(top_percent_box(m, 25), [0, 0, 2, 2])
    # gt box (1,1)-(3,3): inter 1, union 4 + 4 − 1 = 7
    assert topk_box_iou(m[None], [[1, 1, 3, 3]])[0] == pytest.approx(1 / 7)
    # best of several boxes; a mask ground truth becomes its bounding box
    assert topk_box_iou(m, [[3, 3, 4, 4], [0, 0, 2, 2]])[0] == pytest.approx(1.0)
    gt = np.zeros((4, 4), bool); gt[0:2, 0:4] = True
    assert topk_box_iou(m[None], [gt])[0] == pytest.approx(0.5)


def test_pointing_game_with_and_without_tolerance():
    m = np.zeros((1, 40, 40), np.float32)
    m[0, 5, 5] = 1.0
    box = [20, 20, 30, 30]  # pixel (5,5) centre is 15·√2 ≈ 21.2 from corner pixel (20,20)
    assert not pointing_game(m, [box])[0]
    assert not pointing_game(m, [box], tolerance=15)[0]
    assert pointing_game(m, [box], tolerance=22)[0]
    m2 = np.zeros((1, 40, 40), np.float32)
    m2[0, 10, 22] = 1.0  # 10 rows above the box
    assert not pointing_game(m2, [box])[0]
    assert pointing_game(m2, [box], tolerance=15)[0]
    assert pointing_game(m2, [box], tolerance=10)[0] and not pointing_game(m2, [box], tolerance=9.9)[0]
    m3 = np.zeros((1, 40, 40), np.float32)
    m3[0, 25, 25] = 1.0
    assert pointing_game(m3, [box])[0]
    # equal maxima: any one may hit (Quantus)
    m4 = np.zeros((1, 40, 40), np.float32)
    m4[0, 0, 0] = m4[0, 25, 25] = 1.0
    assert pointing_game(m4, [box])[0]


def test_energy_pointing_game():
    m = np.array([[[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]], np.float32)
    assert energy_pointing_game(m, [[0, 0, 2, 2]])[0] == pytest.approx(5 / 6)
    mask = np.zeros((4, 4), bool); mask[2, 3] = True
    assert energy_pointing_game(m, [mask])[0] == pytest.approx(1 / 6)
    assert energy_pointing_game(np.zeros((1, 4, 4)), [[0, 0, 2, 2]])[0] == 0.0


def test_label_components_matches_hand_and_skimage():
    m = np.array([[1, 1, 0, 0, 1],
                  [0, 0, 0, 1, 0],
                  [1, 0, 0, 0, 0],
                  [1, 1, 0, 1, 1]], bool)
    lab8, n8 = label_components(m, 8)
    lab4, n4 = label_components(m, 4)
    assert (n8, n4) == (4, 5)
    assert lab8[0, 4] == lab8[1, 3] and lab4[0, 4] != lab4[1, 3]
    assert lab8[0, 0] == 1 and lab8[2, 0] == lab8[3, 1]
    measure = pytest.importorskip("skimage.measure")
    rng = np.random.default_rng(1)
    for conn in (4, 8):
        for _ in range(5):
            r = rng.random((30, 37)) < 0.55
            got, n = label_components(r, conn)
            want = measure.label(r, connectivity=1 if conn == 4 else 2)
            assert n == want.max()
            np.testing.assert_array_equal(got, want)


def test_box_localisation_largest_segment():
    m = np.zeros((1, 10, 10), np.float32)
    m[0, 1:3, 1:3] = 1.0          # small strong blob (4 px)
    m[0, 5:9, 4:9] = 0.2          # large weak blob (20 px), above 15 % of the max
    m[0, 0, 9] = 0.1              # below threshold
    iou, ok, boxes = box_localisation(m, [[4, 5, 9, 9]])
    np.testing.assert_array_equal(boxes[0], [4, 5, 9, 9])
    assert iou[0] == pytest.approx(1.0) and ok[0]
    iou, ok, _ = box_localisation(m, [[4, 5, 9, 7]])  # half of it: IoU 10/20
    assert iou[0] == pytest.approx(0.5) and ok[0]
    iou, ok, _ = box_localisation(m, [[4, 5, 8, 7]])  # 8/20
    assert iou[0] == pytest.approx(0.4) and not ok[0]
    iou, ok, boxes = box_localisation(m, [[4, 5, 9, 9]], threshold=0.5)  # only the strong blob
    np.testing.assert_array_equal(boxes[0], [1, 1, 3, 3])
    assert iou[0] == 0.0 and not ok[0]
    # diagonal neighbours join only with 8-connectivity
    d = np.zeros((1, 6, 6), np.float32)
    d[0, [0, 1, 2], [0, 1, 2]] = 1.0
    d[0, 5, 4:6] = 1.0  # 2 px: smaller than the 3-px diagonal, larger than its 1-px pieces
    assert tuple(box_localisation(d, [[0, 0, 3, 3]])[2][0]) == (0, 0, 3, 3)
    assert tuple(box_localisation(d, [[0, 0, 3, 3]], connectivity=4)[2][0]) == (4, 5, 6, 6)


def test_sparsity_and_gini_hand_computed():
    m = np.zeros((2, 2, 2), np.float32)
    m[0] = 1.0
    m[1, 0, 0] = 1.0
    np.testing.assert_allclose(sparsity(m), [1.0, 4.0])
    # uniform → 0; one-hot over d = 4 → (d − 1)/d (up to eps)
    np.testing.assert_allclose(gini(m), [0.0, 0.75], atol=1e-6)
    # [0, 1, 2, 3]: Σ(2k − 5)a_k = −3·0 − 1·1 + 1·2 + 3·3 = 10 → 10 / (4·6)
    np.testing.assert_allclose(gini(np.arange(4, dtype=np.float32).reshape(1, 2, 2), eps=0), [10 / 24])
    assert sparsity(np.zeros((1, 2, 2)))[0] == np.inf


@pytest.fixture(scope="module")
def quantus():
    pytest.importorskip("torch")
    import warnings
    warnings.filterwarnings("ignore")
    return pytest.importorskip("quantus")


def test_gini_and_pointing_game_equal_quantus(quantus):
    rng = np.random.default_rng(0)
    a = rng.random((6, 1, 12, 12)).astype(np.float32)
    x = rng.random((6, 3, 12, 12)).astype(np.float32)
    s = np.zeros((6, 1, 12, 12), np.float32)
    for i in range(6):  # a box around the max for the even images, elsewhere for the odd ones
        r, c = np.unravel_index(np.argmax(a[i, 0]), (12, 12))
        if i % 2:
            r, c = (r + 6) % 12, (c + 6) % 12
        s[i, 0, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = 1
    y = np.zeros(6, int)
    want_gini = quantus.Sparseness(disable_warnings=True)(model=None, x_batch=x, y_batch=y, a_batch=a.copy(),
                                                          s_batch=None, channel_first=True)
    want_pg = quantus.PointingGame(disable_warnings=True)(model=None, x_batch=x, y_batch=y, a_batch=a.copy(),
                                                          s_batch=s, channel_first=True)
    np.testing.assert_allclose(gini(a[:, 0]), want_gini, rtol=1e-6)
    np.testing.assert_array_equal(pointing_game(a[:, 0], list(s[:, 0].astype(bool))), np.array(want_pg, bool))
    assert list(pointing_game(a[:, 0], list(s[:, 0].astype(bool)))) == [True, False] * 3
