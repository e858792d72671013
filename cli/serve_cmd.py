"""``onnxcam serve``: explanation graphs behind the Open Inference Protocol (KServe V2, HTTP/REST)."""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from typing import Any

import click

from onnxcam.cli.common import EXIT_USAGE, fail, providers_option, setup_logging

log = logging.getLogger("onnxcam")


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@click.command("serve", short_help="Serve graphs over the Open Inference Protocol (KServe V2 REST).")
@click.argument("models", nargs=-1, required=True, metavar="MODEL.cam.onnx...")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: any free port, printed at start).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256),
              help="Inference threads: requests decoded, explained and encoded at the same time "
                   "(all in one process; the sessions are shared).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="onnxruntime intra-op threads of each model's session, shared by the workers "
                   "[default: CPU cores ÷ workers, so that busy workers do not oversubscribe the CPU].")
@click.option("--max-request-mb", default=64.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Largest request body (after decompression); larger ones get 413.")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(1),
              help="Inference requests admitted at once (running + waiting); the next gets 503.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1),
              help="Images per graph run (larger requests run in chunks).")
@providers_option
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def serve_command(models: tuple[str, ...], host: str, port: int, workers: int, threads: int | None,
                  max_request_mb: float, max_queue: int, batch_size: int, providers: Any, debug: bool) -> None:
    """Serve explanation graphs over the Open Inference Protocol (KServe "V2") HTTP/REST API.

    Each MODEL is served as its file name without `.cam.onnx`: GET /v2, /v2/health/live|ready,
    /v2/models/NAME[/versions/1][/ready]; POST /v2/models/NAME/infer with the graph's image input
    (FP32, or UINT8 for --raw-input graphs) and optional `class_index` INT64 [N]; parameters
    `method` (default gradcam) and `class_index`; outputs `heatmap`, `logits`, `target`, as JSON
    or with the binary tensor extension. Ctrl-C (SIGINT/SIGTERM) finishes the open requests and
    stops. Needs the serve extra: pip install 'onnxcam[serve]'.
    """
    setup_logging(debug)
    try:
        import uvicorn

        from onnxcam.runtime.serving.app import ServerSettings, create_app
    except ImportError as exc:
        fail(f"onnxcam serve needs the serve extra ({exc.name or exc} is missing): "
             "pip install 'onnxcam[serve]'", EXIT_USAGE, debug)
    from onnxcam.runtime import OnnxcamError
    from onnxcam.runtime.serving.models import ModelRegistry

    intra = threads or max(1, (os.cpu_count() or 1) // workers)
    try:
        registry = ModelRegistry.load(models, providers=providers, intra_op_threads=intra,
                                      batch_size=batch_size)
    except OnnxcamError as exc:
        fail(exc, EXIT_USAGE, debug)
    except Exception as exc:  # noqa: BLE001
        fail(f"cannot load the models ({type(exc).__name__}: {exc})".splitlines()[0], EXIT_USAGE, debug)
    settings = ServerSettings(workers=workers, max_queue=max_queue,
                              max_request_bytes=int(max_request_mb * 2**20))
    try:
        sock = _bind(host, port)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port} ({exc.strerror or exc})", EXIT_USAGE, debug)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    for name, model in registry.models.items():
        log.info("model %-20s %s %s %s, methods: %s", name, model.image_input, model.image_datatype,
                 model.image_shape, ", ".join(model.methods))
    log.info("serving %d model(s) on http://%s:%d/v2 (%d workers × %d onnxruntime threads); Ctrl-C stops",
             len(registry.models), shown, bound[1], workers, intra)
    config = uvicorn.Config(create_app(registry, settings), log_level="debug" if debug else "warning",
                            access_log=False, timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)
    # uvicorn drains the open requests on SIGINT/SIGTERM, then re-raises the signal: exit 0 then
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        _stopped()
    finally:
        signal.signal(signal.SIGTERM, previous)
    log.info("stopped")


def _stopped(*_: object) -> None:
    log.info("stopped after finishing the open requests")
    sys.exit(0)
