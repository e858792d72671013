"""Serve the browser page (examples/web) and explanation graphs on loopback, for a person to open.

    python examples/web/serve.py MODEL.cam.onnx [MORE.cam.onnx ...] [--port 8000]

Each graph must be exported with ``--raw-input --heatmap METHOD``; with several (one per method)
the page offers a method switch. Only this folder's page, ``examples/js`` and the named graphs
are served (``/web/…``, ``/js/…``, ``/models/<n>.onnx``; ``/models.json`` lists the graphs), with
the cross-origin isolation headers that let onnxruntime-web run WebAssembly on several threads.
The standard library only: no Python package of onnxcam is needed to serve.
"""
from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

EXAMPLES = Path(__file__).resolve().parent.parent
SERVED = ("/web/", "/js/")
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".mjs")


def _method(path: Path) -> str:
    """What the page's method switch shows for a graph: its name without ``.cam.onnx`` and
    before that its last dotted part (``lite0.gradcam.cam.onnx`` → ``gradcam``)."""
    name = path.name.removesuffix(".onnx").removesuffix(".cam")
    return name.rpartition(".")[2] or name


class Handler(SimpleHTTPRequestHandler):
    """Static files under ``examples/`` (the page and the shared module only) and the graphs."""

    models: list[Path] = []

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002  (http.server's signature)
        if os.environ.get("ONNXCAM_WEB_LOG"):
            super().log_message(format, *args)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/", "/web"):
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", "/web/")
            self.end_headers()
        elif path == "/models.json":
            listing = [{"name": m.name, "method": _method(m), "url": f"/models/{i}.onnx"}
                       for i, m in enumerate(self.models)]
            self._send(json.dumps(listing).encode(), "application/json")
        elif path.startswith("/models/") and path.endswith(".onnx") and path[8:-5].isdigit() \
                and int(path[8:-5]) < len(self.models):
            self._send(self.models[int(path[8:-5])].read_bytes(), "application/octet-stream")
        elif path.startswith(SERVED) and "/." not in path:
            super().do_GET()
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    do_HEAD = do_GET

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def make_server(models: list[Path], port: int = 0, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A server for ``models`` on ``host:port`` (0: any free port), not started."""
    handler = type("PageHandler", (Handler,), {"models": [Path(m).resolve() for m in models]})
    return ThreadingHTTPServer((host, port), partial(handler, directory=str(EXAMPLES)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="graphs exported with --raw-input --heatmap METHOD")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free one)")
    args = parser.parse_args(argv)
    missing = [m for m in args.models if not m.is_file()]
    if missing:
        print(f"error: {missing[0]}: no such file", file=sys.stderr)
        return 2
    if not (EXAMPLES / "web" / "node_modules" / "onnxruntime-web").is_dir():
        print("error: onnxruntime-web is not installed: run `npm ci` in examples/web", file=sys.stderr)
        return 2
    try:
        server = make_server(args.models, args.port)
    except OSError as exc:
        print(f"error: cannot listen on 127.0.0.1:{args.port} ({exc.strerror or exc})", file=sys.stderr)
        return 2
    print(f"serving on http://127.0.0.1:{server.server_address[1]}/web/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
