"""The Starlette application: V2 health, metadata, repository and inference endpoints over a
``ModelRegistry``.

An inference request is first read whole: a body larger than ``max_request_bytes`` (declared or
streamed, also after gzip/deflate decompression) gets 413, one that takes longer than
``body_timeout`` to arrive 408, and bodies being read may hold at most ``max_buffered_bytes`` in
all (then 503). Only a request whose body has arrived is admitted for inference: at most
``max_queue`` at a time (waiting or running, else 503), decoded, explained and encoded on a
bounded pool of ``workers`` threads, never on the event loop. So slow or stalled uploads hold
neither an inference slot nor memory, and cannot starve the real requests. Every error is the
protocol's ``{"error": "..."}`` JSON with a 4xx (a 500 only for a fault of the server's own); a
client that disconnects is one log line. One log line per request: ``METHOD path status ms``.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from onnxcam.runtime.serving.batching import Batcher
from onnxcam.runtime.serving.models import ModelRegistry
from onnxcam.runtime.serving.protocol import ProtocolError, encode_response, error_json, parse_request

log = logging.getLogger(__name__)
HEADER_LENGTH = "Inference-Header-Content-Length"
SERVER_NAME = "onnxcam"
EXTENSIONS = ["binary_tensor_data", "parameters", "model_repository"]
CLIENT_CLOSED = 499  # the status the access log shows for a client that went away (nginx's convention)


@dataclass(frozen=True)
class ServerSettings:
    """Limits of one server: inference threads, admitted requests, body size in bytes, the time
    a client may take to send its body, the bytes all bodies being read may hold, and dynamic
    batching (``max_batch_size`` images per graph run, gathered for up to ``max_batch_delay``
    seconds; 1: every request runs alone)."""

    workers: int = 2
    max_queue: int = 64
    max_request_bytes: int = 64 << 20
    body_timeout: float = 30.0   # seconds to receive a request body before 408
    max_buffered_bytes: int = 256 << 20
    max_batch_size: int = 1
    max_batch_delay: float = 0.0


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload).encode(), status, media_type="application/json")


def _error(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(error_json(message), status, headers=headers, media_type="application/json")


class AccessLog:
    """ASGI middleware: one INFO line per HTTP request, ``METHOD path status ms``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status,
                     (time.perf_counter() - start) * 1e3)


class V2Server:
    """The endpoint handlers, the worker pool and the admission counter."""

    def __init__(self, registry: ModelRegistry, settings: ServerSettings) -> None:
        if min(settings.workers, settings.max_queue, settings.max_request_bytes, settings.max_buffered_bytes,
               settings.max_batch_size) < 1 or settings.body_timeout <= 0 or settings.max_batch_delay < 0:
            raise ValueError("workers, max_queue, max_request_bytes, max_buffered_bytes and max_batch_size must be "
                             "≥ 1, body_timeout > 0 and max_batch_delay ≥ 0")
        self.registry, self.settings = registry, settings
        self.executor: ThreadPoolExecutor | None = None
        self.in_flight = 0   # admitted inference requests; touched only on the event loop thread
        self.buffered = 0    # bytes held by bodies being read; likewise

    # -- lifecycle -----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        settings = self.settings
        batching = settings.max_batch_size > 1
        if batching:  # `workers` runners per model; a waiting request holds a pool thread
            for model in self.registry.models.values():
                model.batcher = Batcher(model.explainer, settings.max_batch_size, settings.max_batch_delay,
                                        runners=settings.workers)
        # enough pool threads for every runner's batch and the one being gathered
        threads = (settings.workers + 1) * settings.max_batch_size if batching else settings.workers
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="onnxcam-infer")
        try:
            yield
        finally:  # uvicorn has drained the open requests by now
            self.executor.shutdown(wait=True, cancel_futures=True)
            for model in self.registry.models.values():
                if model.batcher is not None:
                    model.batcher.close()
                    model.batcher = None

    # -- health and metadata -------------------------------------------------------------------
    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def ready(self, request: Request) -> Response:
        """200 when ready, a 4xx when not (the protocol's health endpoints never answer 5xx)."""
        if self.executor is None:
            return _error("not ready", 400)
        return Response(status_code=200)

    async def repository_index(self, request: Request) -> Response:
        """The model-repository extension's index: every served model, ready (``{"ready": true}``
        asks for the ready ones only, which here are all of them)."""
        try:
            body = await asyncio.wait_for(request.body(), self.settings.body_timeout)
            query = json.loads(body) if body.strip() else {}
        except (asyncio.TimeoutError, ClientDisconnect):
            return _error("request body not received", 408)
        except (ValueError, RecursionError):
            return _error("the repository index request must be a JSON object", 400)
        if not isinstance(query, dict) or not isinstance(query.get("ready", False), bool):
            return _error("the repository index request must be a JSON object like {\"ready\": true}", 400)
        return _json([{"name": name, "version": "1", "state": "READY", "reason": ""}
                      for name in sorted(self.registry.models)])

    async def server_metadata(self, request: Request) -> Response:
        return _json({"name": SERVER_NAME, "version": _version(), "extensions": EXTENSIONS})

    async def model_metadata(self, request: Request) -> Response:
        try:
            model = self.registry.get(request.path_params["name"], request.path_params.get("version"))
        except ProtocolError as exc:
            return _error(str(exc), exc.status)
        return _json(model.metadata())

    async def model_ready(self, request: Request) -> Response:
        try:
            self.registry.get(request.path_params["name"], request.path_params.get("version"))
        except ProtocolError as exc:
            return _error(str(exc), exc.status)
        return Response(status_code=200)

    # -- inference -----------------------------------------------------------------------------
    async def infer(self, request: Request) -> Response:
        try:
            model = self.registry.get(request.path_params["name"], request.path_params.get("version"))
            header_length = _header_length(request)
            body = await asyncio.wait_for(self._read_body(request), self.settings.body_timeout)
        except asyncio.TimeoutError:
            return _error(f"request body not received within {self.settings.body_timeout:g} s", 408)
        except ClientDisconnect:
            log.info("%s %s: the client disconnected before sending its whole body", request.method, request.url.path)
            return Response(status_code=CLIENT_CLOSED)
        except ProtocolError as exc:
            return _error(str(exc), exc.status)
        limit = self.settings.max_queue
        if self.in_flight >= limit:
            return _error(f"server busy: {limit} inference requests in flight; retry later", 503,
                          {"Retry-After": "1"})
        self.in_flight += 1
        try:
            return await self._infer(model, body, header_length)
        finally:
            self.in_flight -= 1

    async def _infer(self, model: Any, body: bytes, header_length: int | None) -> Response:
        loop = asyncio.get_running_loop()
        try:
            payload, json_length = await loop.run_in_executor(self.executor, _run, model, body, header_length)
        except ProtocolError as exc:
            return _error(str(exc), exc.status)
        except Exception as exc:  # noqa: BLE001  (a bug or an onnxruntime failure: 500, keep serving)
            log.exception("inference failed on model '%s'", model.name)
            return _error(f"inference failed: {type(exc).__name__}: {exc}".splitlines()[0], 500)
        if json_length is None:
            return Response(payload, 200, media_type="application/json")
        return Response(payload, 200, headers={HEADER_LENGTH: str(json_length)},
                        media_type="application/octet-stream")

    async def _read_body(self, request: Request) -> bytes:
        """The (decompressed) body, or ``ProtocolError`` 413 past ``max_request_bytes``."""
        limit = self.settings.max_request_bytes
        too_big = ProtocolError(f"request body exceeds the server's limit of {limit} bytes "
                                f"({limit / 2**20:g} MiB)", 413)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > 2 * limit:
            raise too_big  # not worth draining: the connection is closed after the answer
        chunks: list[bytes] = []
        size, held = 0, 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size <= limit:
                    if self.buffered + len(chunk) > self.settings.max_buffered_bytes:
                        raise ProtocolError("server busy: too many request bodies being received; retry later", 503)
                    chunks.append(chunk)
                    held += len(chunk)
                    self.buffered += len(chunk)
                elif size > 2 * limit:
                    break
                else:  # drain up to 2 × limit, so that the client reads the 413 rather than a reset
                    chunks.clear()
        finally:
            self.buffered -= held
        if size > limit:
            raise too_big
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding not in ("gzip", "deflate"):
            raise ProtocolError(f"unsupported Content-Encoding '{encoding}' (gzip, deflate or none)", 415)
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise ProtocolError(f"corrupt {encoding} body: {exc}") from None
        if len(out) > limit:
            raise too_big
        return out


@functools.lru_cache(maxsize=1)
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("onnxcam")
    except PackageNotFoundError:  # pragma: no cover  (source checkout without install)
        return "unknown"


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise ProtocolError(f"{HEADER_LENGTH} must be a non-negative integer of at most 19 digits, "
                            f"got {value[:40]!r}")
    return int(text)


def _run(model: Any, body: bytes, header_length: int | None) -> tuple[bytes, int | None]:
    """Worker thread: decode, explain, encode."""
    request = parse_request(body, header_length)
    outputs = model.infer(request)
    return encode_response(model.name, "1", outputs, request.id)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", None) or "error"
    if status == 404:
        detail = f"no such endpoint: {request.method} {request.url.path}"
    elif status == 405:
        detail = f"method {request.method} not allowed on {request.url.path}"
    return _error(str(detail), status, getattr(exc, "headers", None))


def create_app(registry: ModelRegistry, settings: ServerSettings | None = None) -> ASGIApp:
    """The ASGI application serving ``registry`` (wrapped in the access log)."""
    server = V2Server(registry, settings or ServerSettings())
    model = "/v2/models/{name}"
    version = model + "/versions/{version}"
    routes = [
        Route("/v2/health/live", server.live, methods=["GET"]),
        Route("/v2/health/ready", server.ready, methods=["GET"]),
        Route("/v2", server.server_metadata, methods=["GET"]),
        Route(model, server.model_metadata, methods=["GET"]),
        Route(version, server.model_metadata, methods=["GET"]),
        Route(model + "/ready", server.model_ready, methods=["GET"]),
        Route(version + "/ready", server.model_ready, methods=["GET"]),
        Route(model + "/infer", server.infer, methods=["POST"]),
        Route(version + "/infer", server.infer, methods=["POST"]),
        Route("/v2/repository/index", server.repository_index, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=server.lifespan, exception_handlers={HTTPException: _http_error})
    app.state.server = server
    return AccessLog(app)
