"""Dynamic batching in ``onnxcam serve``: concurrent requests for one model run as one graph call,
each keeping its own classes and method, and a request that breaks its batch fails alone."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from onnxcam.runtime import Explainer  # noqa: E402
from onnxcam.runtime.serving.app import ServerSettings, create_app  # noqa: E402
from onnxcam.runtime.serving.batching import Batcher  # noqa: E402
from onnxcam.runtime.serving.models import ModelRegistry  # noqa: E402
from serve_helpers import BackgroundServer  # noqa: E402

TINY = Path(__file__).parent / "data" / "tiny.cam.onnx"


def _request(x: np.ndarray, **parameters) -> dict:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
            "parameters": parameters}


@pytest.fixture(scope="module")
def batched():
    """A server batching up to 16 images within 200 ms, and the sizes its session was run with."""
    registry = ModelRegistry.load([TINY], providers=["CPUExecutionProvider"], intra_op_threads=1)
    model = registry.models["tiny"]
    sizes, explain = [], model.explainer.explain

    def recording(x, *args, **kwargs):
        sizes.append(len(x))
        return explain(x, *args, **kwargs)

    model.explainer.explain = recording
    server = BackgroundServer(create_app(registry, ServerSettings(workers=2, max_batch_size=16, max_batch_delay=0.2)))
    yield server, sizes
    server.stop()


def _concurrently(url: str, bodies: list[dict]) -> list[httpx.Response]:
    answers: list = [None] * len(bodies)

    def send(i: int) -> None:  # json.dumps writes NaN as the server's parser reads it
        answers[i] = httpx.post(f"http://{url}/v2/models/tiny/infer", content=json.dumps(bodies[i]),
                                headers={"content-type": "application/json"}, timeout=30)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_concurrent_requests_share_a_batch_and_keep_their_classes(batched) -> None:
    server, sizes = batched
    reference = Explainer(TINY, providers=["CPUExecutionProvider"], intra_op_threads=1)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1 + i % 2, 3, 32, 32)).astype(np.float32) for i in range(6)]
    classes = [3, 7, 1, 0, 9, 5]
    sizes.clear()
    answers = _concurrently(server.url, [_request(x, class_index=c) for x, c in zip(xs, classes)])
    assert max(sizes) > 2, f"no batch formed: session runs of {sizes}"
    for x, c, answer in zip(xs, classes, answers):
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in answer.json()["outputs"]}
        assert outputs["target"].tolist() == [c] * len(x)
        want = reference.explain(x, class_index=c)
        np.testing.assert_allclose(outputs["heatmap"], want.heatmaps, atol=1e-5)
        np.testing.assert_allclose(outputs["logits"], want.logits, atol=1e-5)


def test_methods_and_a_bad_request_in_one_window(batched) -> None:
    server, _ = batched
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    bodies = [_request(x, method="gradcam"), _request(x, method="layercam"), _request(bad), _request(x, class_index=99)]
    good_gradcam, good_layercam, nan, out_of_range = _concurrently(server.url, bodies)
    reference = Explainer(TINY, providers=["CPUExecutionProvider"], intra_op_threads=1)
    for answer, method in ((good_gradcam, "gradcam"), (good_layercam, "layercam")):
        assert answer.status_code == 200
        heatmap = next(o for o in answer.json()["outputs"] if o["name"] == "heatmap")
        np.testing.assert_allclose(np.asarray(heatmap["data"]).reshape(heatmap["shape"]),
                                   reference.explain(x, method=method).heatmaps, atol=1e-5)
    assert nan.status_code == 400 and "NaN" in nan.json()["error"]
    assert out_of_range.status_code == 400 and "out of range" in out_of_range.json()["error"]


def test_a_request_larger_than_the_batch_runs_alone() -> None:
    explainer = Explainer(TINY, providers=["CPUExecutionProvider"], intra_op_threads=1)
    batcher = Batcher(explainer, max_batch_size=2, max_delay=0.01)
    try:
        x = np.random.default_rng(2).standard_normal((5, 3, 32, 32)).astype(np.float32)
        res = batcher.explain(x, np.full(5, -1), "gradcam")
        np.testing.assert_allclose(res.heatmaps, explainer.explain(x).heatmaps, atol=1e-6)
    finally:
        batcher.close()


def test_two_runners_run_batches_at_the_same_time() -> None:
    """The first two batches wait for each other at a barrier: they only meet if two runners run
    them side by side (with one runner the barrier breaks and those requests fail)."""
    explainer = Explainer(TINY, providers=["CPUExecutionProvider"], intra_op_threads=1)
    meet, lock, gated = threading.Barrier(2, timeout=10), threading.Lock(), [0]

    class Gated:
        info = explainer.info

        def explain(self, x, **kwargs):
            with lock:
                gated[0] += 1
                wait = gated[0] <= 2
            if wait:
                meet.wait()
            return explainer.explain(x, **kwargs)

    batcher = Batcher(Gated(), max_batch_size=1, max_delay=0.0, runners=2)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(6)]
    results: list = [None] * len(xs)

    def send(i: int) -> None:
        results[i] = batcher.explain(xs[i], np.array([i]), "gradcam")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(xs))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        batcher.close()
    for i, (x, res) in enumerate(zip(xs, results)):
        assert res is not None and res.class_index.tolist() == [i]
        np.testing.assert_allclose(res.heatmaps, explainer.explain(x, class_index=i).heatmaps, atol=1e-6)
