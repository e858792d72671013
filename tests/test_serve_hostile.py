"""``onnxcam serve`` against hostile and careless clients: stalled uploads and slow headers cannot
starve it, every malformed request is a 4xx JSON error (never a 500), NaN never reaches a
response, a disconnect is one log line, and the protocol's repository index and readiness."""
from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
httpclient = pytest.importorskip("tritonclient.http")
httpx = pytest.importorskip("httpx")

from onnxcam.runtime.serving.app import ServerSettings, V2Server, create_app  # noqa: E402
from onnxcam.runtime.serving.models import ModelRegistry  # noqa: E402
from serve_helpers import BackgroundServer  # noqa: E402

TINY = Path(__file__).parent / "data" / "tiny.cam.onnx"
HEADER_TIMEOUT, BODY_TIMEOUT = 1.0, 3.0


@pytest.fixture(scope="module")
def registry():
    return ModelRegistry.load([TINY], providers=["CPUExecutionProvider"], intra_op_threads=1)


@pytest.fixture(scope="module")
def served(registry):
    settings = ServerSettings(workers=2, max_queue=8, max_request_bytes=1 << 20, body_timeout=BODY_TIMEOUT)
    server = BackgroundServer(create_app(registry, settings), header_timeout=HEADER_TIMEOUT, max_connections=1000)
    yield server
    server.stop()


def infer_body(x: np.ndarray, **parameters) -> dict:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}],
            **({"parameters": parameters} if parameters else {})}


@pytest.fixture()
def x():
    return np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)


def post(served, body: bytes | str, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"http://{served.url}/v2/models/tiny/infer", content=body, headers=headers or {}, timeout=30)


def assert_json_error(response: httpx.Response, status: int = 400, needle: str = "") -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert needle in response.json()["error"]


def open_stalled(served, count: int, payload: bytes) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        s = socket.create_connection((served.host, served.port))
        s.sendall(payload)
        sockets.append(s)
    return sockets


def test_stalled_uploads_do_not_starve_real_requests(served, x) -> None:
    """64 connections that send headers and 10 body bytes each (the issue's attack held all 64
    admission slots): the real client's requests all succeed while they hang."""
    stalled = open_stalled(served, 64, b"POST /v2/models/tiny/infer HTTP/1.1\r\nhost: x\r\ncontent-type: "
                                       b"application/json\r\ncontent-length: 100000\r\n\r\n0123456789")
    try:
        client = httpclient.InferenceServerClient(served.url)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        for _ in range(10):
            assert client.infer("tiny", [inp]).as_numpy("heatmap").shape == (1, 32, 32)
        client.close()
    finally:
        for s in stalled:
            s.close()


def test_a_stalled_body_times_out(served) -> None:
    s = socket.create_connection((served.host, served.port))
    s.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{")
    s.settimeout(BODY_TIMEOUT + 10)
    start = time.monotonic()
    answer = b""
    while b"not received within" not in answer and (chunk := s.recv(4096)):  # head and body may
        answer += chunk  # arrive in separate segments
    s.close()
    assert b" 408 " in answer.split(b"\r\n")[0] and b"not received within" in answer
    assert time.monotonic() - start < BODY_TIMEOUT + 5


def test_slow_headers_are_cut_off(served) -> None:
    """A client sending one header byte every 0.33 s (never closed before) and 300 half-sent
    requests: each gets a 408 and is closed once the header timeout has passed."""
    half = open_stalled(served, 300, b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-slow: ")
    trickle = socket.create_connection((served.host, served.port))
    trickle.setblocking(False)
    start, answer = time.monotonic(), b""
    for byte in b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-slow: " * 4:
        time.sleep(0.33)
        try:
            answer += trickle.recv(4096)
        except BlockingIOError:
            pass
        if answer:
            break
        try:
            trickle.send(bytes([byte]))
        except OSError:
            break
    elapsed = time.monotonic() - start
    trickle.close()
    assert answer.startswith(b"HTTP/1.1 408") and elapsed < HEADER_TIMEOUT + 1.5, (answer[:40], elapsed)
    for s in half:
        s.settimeout(5)
        assert s.recv(4096).startswith(b"HTTP/1.1 408")
        s.close()
    assert httpx.get(f"http://{served.url}/v2/health/live").status_code == 200


@pytest.mark.parametrize("case,needle", [
    ("header_length_digits", "at most 19 digits"),
    ("header_length_unicode", "must be a non-negative integer"),
    ("datatype_list", "unsupported datatype"),
    ("class_index_huge", "out of range"),
    ("class_index_float", "must be an integer"),
    ("class_index_string", "must be an integer"),
    ("class_index_list_parameter", "string, a number or a boolean"),
    ("nested", "nested too deeply"),
    ("nan", "NaN"),
])
def test_malformed_requests_are_4xx_json(served, x, case, needle) -> None:
    body, headers = json.dumps(infer_body(x)), {}
    if case == "header_length_digits":
        headers = {"Inference-Header-Content-Length": "9" * 4400}
    elif case == "header_length_unicode":
        body, headers = body.encode(), {"Inference-Header-Content-Length": "\xb9".encode("latin-1")}
    elif case == "datatype_list":
        body = json.dumps({"inputs": [{"name": "input", "datatype": [], "shape": [1], "data": [0]}]})
    elif case.startswith("class_index"):
        value = {"huge": 2**63, "float": 3.7, "string": "3", "list_parameter": [1]}[case.split("_", 2)[2]]
        body = json.dumps(infer_body(x, class_index=value))
    elif case == "nested":
        body = '{"inputs": ' + "[" * 100_000 + "]" * 100_000 + "}"
    elif case == "nan":
        x = x.copy()
        x[0, 0, 0, 0] = np.nan
        body = json.dumps(infer_body(x))  # json writes NaN, which Python's parser reads back
    assert_json_error(post(served, body, headers), 400, needle)
    assert httpx.get(f"http://{served.url}/v2/health/ready").status_code == 200


def test_a_disconnecting_client_is_one_log_line_not_a_500(served, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="onnxcam"):
        s = socket.create_connection((served.host, served.port))
        s.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"inp")
        time.sleep(0.3)
        s.close()
        time.sleep(0.5)
    records = [r for r in caplog.records if r.name.startswith("onnxcam.runtime.serving")]
    assert any("disconnected" in r.getMessage() for r in records)
    assert not any(r.exc_info for r in records) and not any(" 500 " in r.getMessage() for r in records)


def test_model_repository_index(served) -> None:
    client = httpclient.InferenceServerClient(served.url)
    assert client.get_model_repository_index() == [{"name": "tiny", "version": "1", "state": "READY", "reason": ""}]
    client.close()
    response = httpx.post(f"http://{served.url}/v2/repository/index", content=b'{"ready": "yes"}')
    assert_json_error(response, 400, "ready")


def test_readiness_answers_4xx_when_not_ready(registry) -> None:
    import asyncio

    server = V2Server(registry, ServerSettings())  # its worker pool is made at start-up (lifespan)
    response = asyncio.run(server.ready(None))
    assert 400 <= response.status_code < 500


def test_too_many_connections_get_503(registry) -> None:
    server = BackgroundServer(create_app(registry, ServerSettings()), max_connections=4, header_timeout=30)
    try:
        held = [socket.create_connection((server.host, server.port)) for _ in range(4)]
        extra = socket.create_connection((server.host, server.port))
        extra.settimeout(5)
        assert extra.recv(4096).startswith(b"HTTP/1.1 503")
        for s in held + [extra]:
            s.close()
        time.sleep(0.2)
        assert httpx.get(f"http://{server.url}/v2/health/live").status_code == 200
    finally:
        server.stop()


def test_host_other_than_loopback_warns(tmp_path) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "onnxcam.cli.main", "serve", str(TINY), "--host", "0.0.0.0",
                             "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "serving" in line or not line:
                break
        assert any("no authentication" in line and "reverse proxy" in line for line in lines), lines
    finally:
        proc.terminate()
        proc.wait(20)
