"""``onnxcam serve``: the Open Inference Protocol (V2 REST) checked with the official ``tritonclient``.

One uvicorn server per module runs in a background thread on a free loopback port and serves
``tests/data/tiny.cam.onnx`` (and a copy of it named ``twin``). Outputs are compared with
``Explainer`` on the same graph; malformed requests must get ``{"error": ...}`` with a 4xx and
leave the server answering.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
httpclient = pytest.importorskip("tritonclient.http")
httpx = pytest.importorskip("httpx")
from tritonclient.utils import InferenceServerException  # noqa: E402

from onnxcam.runtime import Explainer  # noqa: E402
from onnxcam.runtime.serving.app import ServerSettings, create_app  # noqa: E402
from onnxcam.runtime.serving.models import ModelRegistry, model_name  # noqa: E402
from serve_helpers import BackgroundServer  # noqa: E402

TINY = Path(__file__).parent / "data" / "tiny.cam.onnx"
LIMIT = 1 << 20  # 1 MiB request bodies in this module
TOL = 1e-6


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    twin = tmp_path_factory.mktemp("serve") / "twin.cam.onnx"
    shutil.copy(TINY, twin)
    registry = ModelRegistry.load([TINY, twin], providers=["CPUExecutionProvider"], intra_op_threads=1)
    server = BackgroundServer(create_app(registry, ServerSettings(workers=2, max_queue=16, max_request_bytes=LIMIT)))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(served):
    c = httpclient.InferenceServerClient(served.url, concurrency=2)
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference():
    return Explainer(TINY, providers=["CPUExecutionProvider"], intra_op_threads=1)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)


def image_input(x, binary=True, name="input", datatype="FP32"):
    inp = httpclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


def assert_alive(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")


# -- health and metadata -------------------------------------------------------------------------
def test_model_names():
    assert model_name("a/resnet18.cam.onnx") == "resnet18"
    assert model_name("plain.onnx") == "plain" and model_name("x.CAM.ONNX") == "x"


def test_server_health_and_metadata(client):
    assert_alive(client)
    meta = client.get_server_metadata()
    assert meta["name"] == "onnxcam" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata(client):
    meta = client.get_model_metadata("tiny")
    assert meta["name"] == "tiny" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]},
                              {"name": "class_index", "datatype": "INT64", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "heatmap", "datatype": "FP32", "shape": [-1, 32, 32]},
                               {"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
                               {"name": "target", "datatype": "INT64", "shape": [-1]}]
    assert client.get_model_metadata("tiny", model_version="1") == meta
    assert client.get_model_metadata("twin")["name"] == "twin"
    assert client.is_model_ready("twin", "1")
    for name, version in (("nope", ""), ("tiny", "2")):
        with pytest.raises(InferenceServerException) as err:
            client.get_model_metadata(name, version)
        assert err.value.status() == "404"


# -- inference -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "eigencam", "scorecam"])
@pytest.mark.parametrize("class_index", [None, 7, [1, -1, 9]])
def test_infer_binary_equals_explainer(client, reference, x, method, class_index):
    params = {"method": method} if method != "gradcam" else {}
    inputs = [image_input(x)]
    if isinstance(class_index, list):  # one class per image: the class_index input
        classes = httpclient.InferInput("class_index", [len(class_index)], "INT64")
        classes.set_data_from_numpy(np.array(class_index, np.int64))
        inputs.append(classes)
    elif class_index is not None:  # one class for all: a parameter (string, number or boolean only)
        params["class_index"] = class_index
    res = client.infer("tiny", inputs, parameters=params or None)
    ref = reference.explain(x, method=method, class_index=class_index)
    np.testing.assert_allclose(res.as_numpy("heatmap"), ref.heatmaps, rtol=0, atol=TOL)
    np.testing.assert_allclose(res.as_numpy("logits"), ref.logits, rtol=0, atol=TOL)
    np.testing.assert_array_equal(res.as_numpy("target"), ref.class_index)
    assert res.as_numpy("heatmap").dtype == np.float32 and res.as_numpy("target").dtype == np.int64


def test_json_and_binary_are_identical(client, x):
    outs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("heatmap", "logits", "target")]
    as_json = client.infer("tiny", [image_input(x, binary=False)], outputs=outs, parameters={"method": "gradcam++"})
    response = as_json.get_response()
    assert all("data" in o for o in response["outputs"])  # really JSON, both ways
    as_binary = client.infer("tiny", [image_input(x)], parameters={"method": "gradcam++"})
    for name in ("heatmap", "logits", "target"):
        np.testing.assert_array_equal(as_json.as_numpy(name), as_binary.as_numpy(name))


def test_class_index_input_outputs_subset_and_version(client, reference, x):
    classes = np.array([4, -1, 2], np.int64)
    cls = httpclient.InferInput("class_index", [3], "INT64")
    cls.set_data_from_numpy(classes)
    outs = [httpclient.InferRequestedOutput("target"), httpclient.InferRequestedOutput("heatmap", binary_data=False)]
    res = client.infer("tiny", [image_input(x), cls], outputs=outs, model_version="1", request_id="r-7")
    ref = reference.explain(x, class_index=classes)
    response = res.get_response()
    assert [o["name"] for o in response["outputs"]] == ["target", "heatmap"] and response["id"] == "r-7"
    assert res.as_numpy("logits") is None
    np.testing.assert_array_equal(res.as_numpy("target"), ref.class_index)
    np.testing.assert_allclose(res.as_numpy("heatmap"), ref.heatmaps, rtol=0, atol=TOL)


def test_gzip_request_and_second_model(client, reference, x):
    res = client.infer("twin", [image_input(x[:1])], request_compression_algorithm="gzip")
    np.testing.assert_allclose(res.as_numpy("heatmap"), reference.explain(x[:1]).heatmaps, rtol=0, atol=TOL)


def test_concurrent_requests(client, reference, x):
    pending = [client.async_infer("tiny", [image_input(x[i:i + 1])], parameters={"class_index": i})
               for i in range(3) for _ in range(4)]
    for k, p in enumerate(pending):
        i = k // 4
        np.testing.assert_allclose(p.get_result().as_numpy("heatmap"),
                                   reference.explain(x[i:i + 1], class_index=i).heatmaps, rtol=0, atol=TOL)


def test_request_log_line(client, x, caplog):
    with caplog.at_level(logging.INFO, logger="onnxcam.runtime.serving.app"):
        client.infer("tiny", [image_input(x[:1])])
        time.sleep(0.1)
    assert any(r.getMessage().startswith("POST /v2/models/tiny/infer 200 ") and r.getMessage().endswith(" ms")
               for r in caplog.records)


# -- a raw-input graph (uint8 NHWC pixels, heatmap baked in) -----------------------------------------
@pytest.fixture(scope="module")
def raw_graph(tmp_path_factory):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnx_ir")
    from onnxcam.exporter.bake_heatmap import bake_heatmap
    from onnxcam.exporter.raw_input import raw_input

    path = tmp_path_factory.mktemp("raw") / "pixels.cam.onnx"
    onnx.save(raw_input(bake_heatmap(onnx.load(str(TINY)), "gradcam")), str(path))
    registry = ModelRegistry.load([path], providers=["CPUExecutionProvider"], intra_op_threads=1)
    server = BackgroundServer(create_app(registry, ServerSettings(workers=1)))
    yield path, httpclient.InferenceServerClient(server.url), server
    server.stop()


def test_raw_input_graph_takes_uint8_pixels(raw_graph):
    path, raw_client, server = raw_graph
    meta = raw_client.get_model_metadata("pixels")
    assert meta["inputs"][0] == {"name": "input", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}
    pixels = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    ref = Explainer(path, providers=["CPUExecutionProvider"], intra_op_threads=1).explain(pixels, "gradcam++", 3)
    for binary in (True, False):
        outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("heatmap", "target")]
        res = raw_client.infer("pixels", [image_input(pixels, binary, datatype="UINT8")], outputs=outs,
                               parameters={"method": "gradcam++", "class_index": 3})
        np.testing.assert_allclose(res.as_numpy("heatmap"), ref.heatmaps, rtol=0, atol=TOL)
        np.testing.assert_array_equal(res.as_numpy("target"), [3, 3])
    for inputs, params, needle in (
            ([image_input(pixels.astype(np.float32))], None, "must be UINT8"),
            ([image_input(pixels, datatype="UINT8")], {"method": "scorecam"}, "unknown method 'scorecam'")):
        err = triton_error(raw_client, "pixels", inputs, parameters=params)
        assert err.status() == "400" and needle in err.message(), err.message()
    body = json.dumps({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 32, 32, 3],
                                   "data": [300] * (32 * 32 * 3)}]}).encode()
    r = raw_post(server, body, path="/v2/models/pixels/infer")
    assert r.status_code == 400 and "out of range" in r.json()["error"]
    assert raw_client.is_server_live()


# -- malformed requests --------------------------------------------------------------------------
def triton_error(client, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        client.infer(*args, **kwargs)
    return err.value


@pytest.mark.parametrize("case, needle", [
    ("shape", "expects [-1, 3, 32, 32]"), ("dtype", "must be FP32"), ("name", "unknown input 'image'"),
    ("method", "unknown method 'nope'"), ("class_range", "out of range"), ("class_count", "INT64 [3]"),
    ("class_type", "must be an integer"), ("output", "unknown output 'scores'"), ("model", "unknown model"),
])
def test_malformed_requests_triton(client, x, case, needle):
    model, inputs, kwargs = "tiny", [image_input(x)], {}
    if case == "shape":
        inputs = [image_input(x[:, :, :16, :16].copy())]
    elif case == "dtype":
        inputs = [image_input(x.astype(np.float64), datatype="FP64")]
    elif case == "name":
        inputs = [image_input(x, name="image")]
    elif case == "method":
        kwargs["parameters"] = {"method": "nope"}
    elif case == "class_range":
        kwargs["parameters"] = {"class_index": 10}
    elif case == "class_count":
        classes = httpclient.InferInput("class_index", [2], "INT64")
        classes.set_data_from_numpy(np.array([1, 2], np.int64))
        inputs.append(classes)
    elif case == "class_type":
        kwargs["parameters"] = {"class_index": "top1"}
    elif case == "output":
        kwargs["outputs"] = [httpclient.InferRequestedOutput("scores")]
    elif case == "model":
        model = "nope"
    err = triton_error(client, model, inputs, **kwargs)
    assert err.status() == ("404" if case == "model" else "400"), err
    assert needle in err.message(), err.message()
    assert_alive(client)


def raw_post(served, body: bytes, headers=None, path="/v2/models/tiny/infer") -> httpx.Response:
    return httpx.post(f"http://{served.url}{path}", content=body, headers=headers or {}, timeout=30)


@pytest.mark.parametrize("case, status", [
    ("invalid_json", 400), ("empty", 400), ("not_object", 400), ("no_inputs", 400), ("data_size", 400), ("ragged", 400),
    ("header_length", 400), ("binary_size", 400), ("oversize", 413), ("oversize_chunked", 413),
    ("gzip_bomb", 413), ("encoding", 415), ("get_infer", 405), ("no_route", 404),
])
def test_malformed_requests_raw(client, served, case, status):
    ok = {"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32]}
    headers, path, method = {}, "/v2/models/tiny/infer", "POST"
    body = {
        "invalid_json": b'{"inputs": [', "not_object": b"[1, 2]", "no_inputs": b'{"inputs": []}',
        "data_size": json.dumps({"inputs": [{**ok, "data": [0.0] * 5}]}).encode(),
        "ragged": json.dumps({"inputs": [{**ok, "shape": [2], "data": [[1.0], [1.0, 2.0]]}]}).encode(),
    }.get(case, b"")
    if case == "header_length":
        body, headers = b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}
    elif case == "binary_size":
        head = json.dumps({"inputs": [{**ok, "parameters": {"binary_data_size": 3 * 32 * 32 * 4}}]}).encode()
        body, headers = head + b"\0" * 100, {"Inference-Header-Content-Length": str(len(head))}
    elif case == "oversize":
        body = b" " * (LIMIT + 10)
    elif case == "oversize_chunked":
        body = iter([b" " * 65536] * (LIMIT // 65536 + 2))  # no Content-Length: streamed and counted
    elif case == "gzip_bomb":
        body, headers = gzip.compress(b" " * (LIMIT * 3)), {"Content-Encoding": "gzip"}
    elif case == "encoding":
        body, headers = b"{}", {"Content-Encoding": "br"}
    elif case == "get_infer":
        method = "GET"
    elif case == "no_route":
        path = "/v2/nothing/here"
    url = f"http://{served.url}{path}"
    r = httpx.request(method, url, content=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert isinstance(r.json()["error"], str) and r.json()["error"]
    assert_alive(client)


def test_queue_bound_gives_503():
    """With max_queue=1 a second request is refused with 503 while the first one is running."""
    release, entered = threading.Event(), threading.Event()

    class Slow:
        name = "slow"

        def infer(self, request):
            entered.set()
            release.wait(20)
            return [("target", np.zeros(1, np.int64), False)]

    class Registry:
        models = {"slow": Slow()}

        def get(self, name, version=None):
            return self.models[name]

    server = BackgroundServer(create_app(Registry(), ServerSettings(workers=1, max_queue=1)))
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [0.0]}]}).encode()
    first: dict = {}
    thread = threading.Thread(target=lambda: first.setdefault("r", raw_post(server, body, path="/v2/models/slow/infer")))
    try:
        thread.start()
        assert entered.wait(20)
        busy = raw_post(server, body, path="/v2/models/slow/infer")
        assert busy.status_code == 503 and "busy" in busy.json()["error"]
        release.set()
        thread.join(20)
        assert first["r"].status_code == 200 and first["r"].json()["outputs"][0]["data"] == [0]
        assert raw_post(server, body, path="/v2/models/slow/infer").status_code == 200
    finally:
        release.set()
        server.stop()


def test_slow_body_gets_408_and_frees_its_slot(client):
    registry = ModelRegistry.load([TINY], providers=["CPUExecutionProvider"], intra_op_threads=1)
    server = BackgroundServer(create_app(registry, ServerSettings(workers=1, max_queue=1, body_timeout=0.5)))
    try:
        host, port = server.url.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            answer = b""
            while b'"error"' not in answer and (chunk := sock.recv(65536)):  # until closed by the server
                answer += chunk
            answer = answer.decode()
        assert answer.startswith("HTTP/1.1 408") and '"error"' in answer, answer
        assert httpx.get(f"http://{server.url}/v2/models/tiny/ready", timeout=10).status_code == 200
        x = np.zeros((1, 3, 32, 32), np.float32)
        body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                       "data": x.ravel().tolist()}]}).encode()
        assert raw_post(server, body).status_code == 200  # the queue slot was released
    finally:
        server.stop()


# -- packaging and the command line --------------------------------------------------------------
def test_runtime_imports_without_starlette():
    code = ("import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
            "import onnxcam.runtime, onnxcam.runtime.serving, onnxcam.cli.main\n"
            "from onnxcam.runtime.serving import protocol, models\n"
            "assert 'starlette' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "from onnxcam.cli.main import main\n"
            "main(['serve', sys.argv[1]])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(TINY)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "pip install 'onnxcam[serve]'" in proc.stderr, proc.stderr


def test_cli_serve_and_graceful_shutdown(tmp_path):
    cmd = [sys.executable, "-m", "onnxcam.cli.main", "serve", str(TINY), "--port", "0", "--workers", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = ""
        deadline = time.monotonic() + 40
        while "serving" not in line:
            assert time.monotonic() < deadline, "no start line"
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "server exited"
        url = line.split("http://")[1].split("/v2")[0]
        assert httpx.get(f"http://{url}/v2/health/ready", timeout=10).status_code == 200
        assert httpx.get(f"http://{url}/v2/models/tiny", timeout=10).json()["name"] == "tiny"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        rest = proc.stderr.read()
        assert "GET /v2/models/tiny 200" in rest
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_serve_bad_model(tmp_path):
    bad = tmp_path / "bad.cam.onnx"
    bad.write_bytes(b"not onnx")
    proc = subprocess.run([sys.executable, "-m", "onnxcam.cli.main", "serve", str(bad), str(TINY), "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "bad.cam.onnx" in proc.stderr
