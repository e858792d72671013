"""A server for the tests: ``onnxcam serve``'s application on a free loopback port in a thread."""
from __future__ import annotations

import socket
import threading
import time

import uvicorn

from onnxcam.runtime.serving.connections import server_config


class BackgroundServer:
    """uvicorn with onnxcam's connection guards (``server_config``) on a free 127.0.0.1 port in a
    daemon thread (no signal handlers off the main thread)."""

    def __init__(self, app, **limits) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(512)
        self.host, self.port = sock.getsockname()
        self.url = f"{self.host}:{self.port}"
        self.server = uvicorn.Server(server_config(app, log_level="warning", access_log=False, **limits))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
