"""Connections that cannot starve the server: a header timeout and a cap on open connections.

uvicorn's HTTP/1.1 protocol waits forever for a request's headers (one byte every few seconds
keeps a connection open) and accepts any number of connections. :class:`GuardedH11Protocol`
closes a connection whose request line and headers have not all arrived ``header_timeout``
seconds after it opened (or after its previous response) with a 408, and answers 503 to a new
connection beyond ``max_connections``. Idle keep-alive connections are closed by uvicorn's own
``timeout_keep_alive``; slow bodies by the application's body timeout (``app.py``).
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


def _raw_response(status: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a connection cap (see the module docstring);
    the limits come from the uvicorn ``Config`` (``onnxcam_header_timeout``,
    ``onnxcam_max_connections``, set by :func:`server_config`)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.header_timeout: float = config.onnxcam_header_timeout
        self.max_connections: int = config.onnxcam_max_connections
        self._header_timer: asyncio.TimerHandle | None = None
        self._cycle_before: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_raw_response("503 Service Unavailable",
                                          f"server busy: {self.max_connections} connections open; retry later"))
            transport.close()
            return
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_timer is not None and self.cycle is not self._cycle_before:
            self._stop_header_timer()  # the request line and headers have arrived

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_headers()  # the next request on this keep-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._stop_header_timer()
        self._cycle_before = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(_raw_response("408 Request Timeout",
                                               f"request headers not received within {self.header_timeout:g} s"))
            self.transport.close()


def server_config(app: Any, header_timeout: float = 10.0, max_connections: int = 1000,
                  keep_alive_timeout: float = 5.0, **kwargs: Any) -> uvicorn.Config:
    """A uvicorn ``Config`` for ``app`` with :class:`GuardedH11Protocol` and these limits."""
    if header_timeout <= 0 or max_connections < 1 or keep_alive_timeout <= 0:
        raise ValueError("header_timeout and keep_alive_timeout must be > 0 and max_connections ≥ 1")
    config = uvicorn.Config(app, http=GuardedH11Protocol, timeout_keep_alive=keep_alive_timeout, **kwargs)
    config.onnxcam_header_timeout = float(header_timeout)
    config.onnxcam_max_connections = int(max_connections)
    return config
