"""``onnxcam serve``: explanation graphs behind the Open Inference Protocol (KServe V2, HTTP/REST)."""
from __future__ import annotations

import ipaddress
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


def _log_start(registry: Any, host: str, port: int, settings: Any, intra: int) -> None:
    """The models served and the line that says where (the load test reads its address)."""
    for name, model in registry.models.items():
        log.info("model %-20s %s %s %s, methods: %s", name, model.image_input, model.image_datatype,
                 model.image_shape, ", ".join(model.methods))
    batches = (f"batches of up to {settings.max_batch_size} images within {settings.max_batch_delay * 1000:g} ms"
               if settings.max_batch_size > 1 else "no batching")
    log.info("serving %d model(s) on http://%s:%d/v2 (%d workers, %d onnxruntime threads, %s); Ctrl-C stops",
             len(registry.models), host, port, settings.workers, intra, batches)


def _default_batch_size(providers: Any) -> int:
    """8 images per batch on a GPU, 1 (no batching) on the CPU, where it does not pay."""
    from onnxcam.runtime.providers import CPU, resolve_providers

    on_gpu = any((p if isinstance(p, str) else p[0]) != CPU for p in resolve_providers(providers))
    return 8 if on_gpu else 1


@click.command("serve", short_help="Serve graphs over the Open Inference Protocol (KServe V2 REST).")
@click.argument("models", nargs=-1, required=True, metavar="MODEL.cam.onnx...")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: any free port, printed at start).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256),
              help="Inference threads: requests decoded, explained and encoded at the same time "
                   "(all in one process; the sessions are shared); with dynamic batching, the batches "
                   "run at the same time per model.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="onnxruntime intra-op threads of each model's session, shared by the workers "
                   "[default: CPU cores ÷ workers, so that busy workers do not oversubscribe the CPU].")
@click.option("--max-request-mb", default=64.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Largest request body (after decompression); larger ones get 413.")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(1),
              help="Inference requests admitted at once (running + waiting, bodies received); the next gets 503.")
@click.option("--body-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds a client may take to send a request body (then 408).")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds a client may take to send a request's headers (then 408 and the connection closes).")
@click.option("--keep-alive-timeout", default=5.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds an idle keep-alive connection stays open.")
@click.option("--max-connections", default=1000, show_default=True, type=click.IntRange(1),
              help="Open connections at once; the next one gets 503.")
@click.option("--max-buffered-mb", default=256.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Memory all request bodies being received may hold at once (then 503).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1),
              help="Images per graph run (larger requests run in chunks).")
@click.option("--max-batch-size", default=None, type=click.IntRange(1),
              help="Dynamic batching: images of concurrent requests run as one graph call, up to this many "
                   "(1: every request alone). Default: 8 on a GPU, 1 on the CPU (where it does not pay).")
@click.option("--max-batch-delay", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="Dynamic batching: milliseconds a request waits for others to join its batch.")
@providers_option
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def serve_command(models: tuple[str, ...], host: str, port: int, workers: int, threads: int | None,
                  max_request_mb: float, max_queue: int, body_timeout: float, header_timeout: float,
                  keep_alive_timeout: float, max_connections: int, max_buffered_mb: float, batch_size: int,
                  max_batch_size: int | None, max_batch_delay: float, providers: Any, debug: bool) -> None:
    """Serve explanation graphs over the Open Inference Protocol (KServe "V2") HTTP/REST API.

    It listens on 127.0.0.1 by default and has no authentication or TLS: to expose it, put it behind a
    reverse proxy that provides them (a warning is printed for any other address).

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
        from onnxcam.runtime.serving.connections import server_config
    except ImportError as exc:
        fail(f"onnxcam serve needs the serve extra ({exc.name or exc} is missing): "
             "pip install 'onnxcam[serve]'", EXIT_USAGE, debug)
    from onnxcam.runtime import OnnxcamError
    from onnxcam.runtime.serving.models import ModelRegistry

    max_batch_size = max_batch_size or _default_batch_size(providers)
    intra = threads or max(1, (os.cpu_count() or 1) // workers)
    try:
        registry = ModelRegistry.load(models, providers=providers, intra_op_threads=intra,
                                      batch_size=batch_size)
    except OnnxcamError as exc:
        fail(exc, EXIT_USAGE, debug)
    except Exception as exc:  # noqa: BLE001
        fail(f"cannot load the models ({type(exc).__name__}: {exc})".splitlines()[0], EXIT_USAGE, debug)
    settings = ServerSettings(workers=workers, max_queue=max_queue, max_request_bytes=int(max_request_mb * 2**20),
                              body_timeout=body_timeout, max_buffered_bytes=int(max_buffered_mb * 2**20),
                              max_batch_size=max_batch_size, max_batch_delay=max_batch_delay / 1000)
    try:
        sock = _bind(host, port)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port} ({exc.strerror or exc})", EXIT_USAGE, debug)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    if not ipaddress.ip_address(bound[0]).is_loopback:
        log.warning("warning: listening on %s, reachable from other machines; onnxcam serve has no authentication "
                    "or TLS: put it behind a reverse proxy that provides them", shown)
    _log_start(registry, shown, bound[1], settings, intra)
    config = server_config(create_app(registry, settings), header_timeout=header_timeout,
                           max_connections=max_connections, keep_alive_timeout=keep_alive_timeout,
                           log_level="debug" if debug else "warning", access_log=False, timeout_graceful_shutdown=30)
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
