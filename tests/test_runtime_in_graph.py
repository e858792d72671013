"""The device path (``runtime.in_graph``, ``models.heatmap_graph``): every closed-form method's
heatmap computed by a small ONNX graph equals the numpy path's (1e-4), including raw maps,
classes, chunked and padded batches; it is the default on CUDA (onnxruntime stood in for) and
copies back only logits, classes, raw maps and heatmaps, never the activations or gradients."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from onnxcam.models.formulas import FORMULAS
from onnxcam.models.heatmap_graph import heatmap_graph
from onnxcam.runtime import Explainer
from onnxcam.runtime import providers as prov
from onnxcam.runtime.methods import closed_form
from onnxcam.runtime.postprocess import postprocess

TINY = Path(__file__).parent / "data" / "tiny.cam.onnx"
REAL_SESSION = ort.InferenceSession


@pytest.mark.parametrize("opset", [17, 18], ids=["opset17", "opset18"])  # reductions' axes: attribute / input
@pytest.mark.parametrize("method", list(FORMULAS))
def test_each_heatmap_graph_is_the_numpy_method(method: str, opset: int) -> None:
    rng = np.random.default_rng(len(method))
    A = rng.random((3, 6, 7, 5), np.float32)
    g = rng.standard_normal((3, 6, 7, 5)).astype(np.float32)
    model, reads = heatmap_graph(method, opset)
    session = REAL_SESSION(model, providers=["CPUExecutionProvider"])
    values = {"activations": A, "gradients": g, "gradients_pow2": g ** 2, "gradients_pow3": g ** 3}
    raw, heatmap = session.run(["raw", "heatmap"], {**{r: values[r] for r in reads}, "size": np.array([61, 45])})
    want = closed_form(method, A, g, g ** 2, g ** 3)
    np.testing.assert_allclose(raw, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(heatmap, postprocess(want, (61, 45)), rtol=0, atol=1e-4)
    assert heatmap.shape == (3, 61, 45) and heatmap.max() == pytest.approx(1, abs=1e-5)


def test_a_non_finite_map_becomes_a_finite_heatmap() -> None:
    model, reads = heatmap_graph("hirescam")
    A = np.ones((1, 2, 3, 3), np.float32)
    g = np.ones_like(A)
    g[0, 0, 0, 0], g[0, 1, 1, 1] = np.inf, np.nan
    raw, heatmap = REAL_SESSION(model, providers=["CPUExecutionProvider"]).run(
        None, {"activations": A, "gradients": g, "size": np.array([6, 6])})
    np.testing.assert_allclose(heatmap, postprocess(raw, (6, 6)), atol=1e-4)
    assert np.isfinite(heatmap).all()


def test_the_explainer_in_graph_equals_numpy_for_every_method() -> None:
    numpy_path, graph_path = (Explainer(TINY, batch_size=3, in_graph=flag) for flag in (False, True))
    assert not Explainer(TINY).in_graph  # the CPU keeps numpy by default
    x = np.random.default_rng(0).random((5, *numpy_path.info.image_shape[1:]), np.float32)
    methods = [m for m in FORMULAS if m in numpy_path.available_methods]
    assert len(methods) == len(FORMULAS)
    classes = [1, -1, 2, 3, -1]
    want, got = numpy_path.explain_many(x, methods, classes), graph_path.explain_many(x, methods, classes)
    for method in methods:
        np.testing.assert_allclose(got[method].heatmaps, want[method].heatmaps, rtol=0, atol=1e-4, err_msg=method)
        np.testing.assert_allclose(got[method].raw, want[method].raw, rtol=1e-5, atol=1e-6, err_msg=method)
        np.testing.assert_array_equal(got[method].class_index, want[method].class_index)
        np.testing.assert_allclose(got[method].logits, want[method].logits, rtol=1e-6, atol=1e-6)
    mixed = graph_path.explain_many(x, ["gradcam", "eigencam"])  # a method without a formula: numpy for all
    np.testing.assert_allclose(mixed["gradcam"].heatmaps, numpy_path.explain(x, "gradcam").heatmaps, atol=1e-4)


class _CudaSession:
    """onnxruntime.InferenceSession as on a CUDA machine (providers reported as CUDA), running on CPU."""

    def __init__(self, model, options=None, providers=None):
        self._session = REAL_SESSION(model, options, providers=[prov.CPU])

    def get_providers(self):
        return [prov.CUDA, prov.CPU]

    def get_provider_options(self):
        return {prov.CUDA: {"device_id": "0"}, prov.CPU: {}}

    def __getattr__(self, name):
        return getattr(self._session, name)


def test_on_cuda_only_heatmaps_and_logits_come_back(monkeypatch) -> None:
    monkeypatch.setattr(prov, "probe", lambda name, options=None: prov.Probe(prov.canonical_name(name), True))
    monkeypatch.setattr(prov, "_check_one_runtime", lambda: None)
    monkeypatch.setattr(prov.ort, "InferenceSession", _CudaSession)
    copied: list[tuple] = []
    real_numpy = ort.OrtValue.numpy
    monkeypatch.setattr(ort.OrtValue, "numpy", lambda self: copied.append(tuple(self.shape())) or real_numpy(self))
    explainer = Explainer(TINY, providers=["cuda"], batch_size=4)
    assert explainer.runner.device == "cuda" and explainer.in_graph
    x = np.random.default_rng(1).random((3, *explainer.info.image_shape[1:]), np.float32)
    got = explainer.explain_many(x, ["gradcam", "gradcam++"])
    feature = explainer.explain_many(x[:1], ["gradcam"])["gradcam"].raw.shape[1:]
    assert copied and all(len(shape) <= 3 for shape in copied), copied  # no [N, K, h, w] tensor copied
    monkeypatch.setattr(prov.ort, "InferenceSession", REAL_SESSION)
    want = Explainer(TINY, providers=["cpu"], in_graph=False).explain_many(x, ["gradcam", "gradcam++"])
    for method in ("gradcam", "gradcam++"):
        np.testing.assert_allclose(got[method].heatmaps, want[method].heatmaps, atol=1e-4)
    assert feature == want["gradcam"].raw.shape[1:]
