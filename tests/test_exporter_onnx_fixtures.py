"""Real third-party ONNX classifiers (CNTK, TFLite converters, fp16 weights behind Casts, opset 8).

For each fixture and each of an automatic and a named target: the explanation graph passes the
full ONNX checker, its logits equal the source model's, and its gradients agree with central
finite differences of the head (target tensor → scores, cut out of the source with onnx's
extractor) along random directions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
import onnx_ir as ir  # noqa: E402
import onnxruntime as ort  # noqa: E402

from onnxcam.exporter import export  # noqa: E402
from onnxcam.exporter.onnx_source import load_classifier, load_onnx  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "models"
CASES = [
    ("mnist-8_onnxzoo_cntk.onnx", "ReLU114_Output_0"),
    ("mobilenet_v2_1.0_224_quant_dequant.fp16w.onnx", "features"),
    ("mobilenet_v1_0.25_128_quant_dequant.onnx", "features"),
]
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/fixtures is not beside the project")


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("target", ["auto", "named"])
@pytest.mark.parametrize("filename,named_target", CASES, ids=[c[0].split("_")[0] + c[0].split("_")[1] for c in CASES])
def test_fixture_exports_and_gradients_match_finite_differences(filename: str, named_target: str, target: str,
                                                                 tmp_path: Path) -> None:
    path = FIXTURES / filename
    graph = export(str(path), None if target == "auto" else named_target)
    onnx.checker.check_model(graph, full_check=True)
    assert all(node.domain in ("", "ai.onnx") for node in graph.graph.node)
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["onnxcam.head_piecewise_linear"] == "true"
    target_name = meta["onnxcam.target_layer"]
    if target == "named":
        assert target_name == named_target

    classifier = load_classifier(load_onnx(path))
    batch = 1 if not classifier.facts.batch_dynamic else 3
    image_shape = classifier.facts.shape(classifier.image_input)[1:]
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, *image_shape)).astype(np.float32)
    class_index = np.array([-1, 5, 17][:batch], np.int64)

    explained = dict(zip([o.name for o in graph.graph.output],
                         _session(graph).run(None, {classifier.image_input: x, "class_index": class_index})))
    source = ir.to_proto(classifier.model)
    source_logits = _session(source).run(None, {classifier.image_input: x})[0]  # no Softmax in these
    np.testing.assert_allclose(explained["logits"], source_logits, rtol=1e-4, atol=1e-4 * np.abs(source_logits).max())

    # the head, target tensor -> logits, cut out of the source model
    onnx.save(source, str(tmp_path / "source.onnx"))
    onnx.utils.extract_model(str(tmp_path / "source.onnx"), str(tmp_path / "head.onnx"), [target_name], [classifier.logits])
    head = _session(onnx.load(str(tmp_path / "head.onnx")))
    activations, gradients = explained["activations"], explained["gradients"]
    chosen = explained["target"]

    def score(a: np.ndarray) -> np.ndarray:
        logits = head.run(None, {target_name: a.astype(np.float32)})[0]
        return logits[np.arange(batch), chosen].astype(np.float64)

    np.testing.assert_allclose(score(activations), explained["logits"][np.arange(batch), chosen], rtol=1e-5, atol=1e-5)
    for _ in range(3):
        # exact zeros (ReLU outputs) feeding a max-pool are ties where the score is not
        # differentiable; finite differences are only meaningful along the other entries
        direction = rng.standard_normal(activations.shape) * (activations != 0)
        eps = 1e-3 * np.abs(activations).max() / np.abs(direction).max()
        finite = (score(activations + eps * direction) - score(activations - eps * direction)) / (2 * eps)
        analytic = (gradients.astype(np.float64) * direction).reshape(batch, -1).sum(1)
        scale = np.linalg.norm(gradients.reshape(batch, -1), axis=1) * np.linalg.norm(direction.reshape(batch, -1), axis=1)
        assert np.all(np.abs(finite - analytic) <= 1e-3 * scale), (finite, analytic)
