"""Load test of ``onnxcam serve`` (Open Inference Protocol over HTTP, loopback only).

Starts ``onnxcam serve`` in a subprocess on a free 127.0.0.1 port, then ``--clients`` threads
send ``--requests`` inference requests in total (binary tensors, encoded and decoded with the
official ``tritonclient.http`` codec, sent on one keep-alive ``http.client`` connection per
thread: the standard library's leanest client, since on a small machine the load generator shares
the server's cores). Prints a Markdown table: throughput (requests/s, images/s), p50/p99 latency,
failed requests, and the ratio to plain onnxruntime inference of the same classifier (the graph
cut down to ``logits``) and to the in-process ``Explainer``, both measured in the same run (before
and after the load, averaged) with the server's structure: ``--workers`` threads calling one
session of ``--threads`` threads; also one caller on a session with every core (a script's loop).
Then the CPU time per image of each side: plain inference, the server, the load generator.

    python benchmarks/serve_load.py [--model X.cam.onnx] [--providers cpu|cuda] [--clients 4] [--requests 200] [--batch 1]
                                    [--method gradcam] [--workers 2] [--threads 1]
                                    [--max-batch-size 8] [--max-batch-delay 2]

Without ``--model`` it exports torchvision ResNet-18 (seeded random weights; latency does not
depend on them) at ``--input-shape`` into a temporary directory. Exit status 1 if any request failed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPException
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tritonclient.http as triton

from _common import plain_classifier, session

from onnxcam.runtime import Explainer
from onnxcam.runtime.serving.models import model_name


def start_server(model: Path, workers: int, threads: int, max_batch_size: int = 1,
                 max_batch_delay: float = 2.0, provider: str = "cpu") -> tuple[subprocess.Popen, str]:
    """``onnxcam serve MODEL --port 0``; returns the process and its ``host:port``."""
    cmd = [sys.executable, "-m", "onnxcam.cli.main", "serve", str(model), "--host", "127.0.0.1", "--port", "0",
           "--workers", str(workers), "--threads", str(threads), "--providers", provider,
           "--max-batch-size", str(max_batch_size), "--max-batch-delay", str(max_batch_delay)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        if line.startswith("serving "):
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining the log
            return proc, line.split("http://")[1].split("/v2")[0]
    proc.kill()
    raise SystemExit("the server did not start within 120 s")


def request_body(x: np.ndarray, image_input: str, method: str) -> tuple[bytes, dict[str, str]]:
    inp = triton.InferInput(image_input, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    outputs = [triton.InferRequestedOutput(n, binary_data=True) for n in ("heatmap", "logits", "target")]
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [inp], outputs=outputs, parameters={"method": method})
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return body, headers


def load(url: str, name: str, body: bytes, headers: dict, clients: int, requests: int,
         batch: int) -> tuple[float, list[float], int]:
    """Wall time, per-request latencies (s) and the number of failed requests."""
    latencies: list[float] = []
    failures = [0]
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        host, port = url.rsplit(":", 1)
        http = HTTPConnection(host, int(port), timeout=300)
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            start = time.perf_counter()
            ok = False
            try:
                http.request("POST", f"/v2/models/{name}/infer", body=body, headers=headers)
                r = http.getresponse()
                content = r.read()
                if r.status == 200:
                    length = r.getheader("Inference-Header-Content-Length")
                    res = triton.InferenceServerClient.parse_response_body(
                        content, header_length=None if length is None else int(length))
                    ok = res.as_numpy("heatmap").shape[0] == batch
            except (OSError, HTTPException):
                http.close()  # reconnects on the next request
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                failures[0] += not ok
        http.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, failures[0]


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def images_per_second(run, images_per_call: int, calls: int, workers: int) -> tuple[float, float]:
    """Throughput of ``run`` called ``calls`` times by ``workers`` threads at once (the server's
    parallel structure, without HTTP), after one warm-up call per thread; and the CPU
    milliseconds the process spent per image meanwhile."""
    counter = iter(range(calls))
    lock = threading.Lock()

    def worker() -> None:
        run()
        barrier.wait()
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            run()

    barrier = threading.Barrier(workers + 1)
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    images = images_per_call * calls
    return images / (time.perf_counter() - start), (time.process_time() - cpu) / images * 1e3


@dataclass
class LoadResult:
    """One load test: the server's throughput and latencies, and the in-process baselines."""

    label: str
    images: int
    wall: float
    latencies: list[float]
    failed: int
    plain: tuple[float, float]     # (images/s, CPU ms per image): plain inference, the server's structure
    explainer: tuple[float, float]  # the same for Explainer.explain
    alone: float                   # images/s of one caller on a session with every core
    server_cpu: float | None       # CPU seconds of the server process during the load
    client_cpu: float              # CPU seconds of this process (the load generator) during the load

    @property
    def served(self) -> float:
        return self.images / self.wall


def measure(model: Path, *, provider: str = "cpu", clients: int = 8, requests: int = 160, batch: int = 1,
            method: str = "gradcam", workers: int = 2, threads: int = 1, max_batch_size: int = 1,
            max_batch_delay: float = 2.0, baseline_calls: int = 40) -> LoadResult:
    """Serve ``model`` on ``provider`` (cpu, cuda), load it, and time the baselines around it."""
    ort_providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if provider == "cuda" else (
        "CPUExecutionProvider",)
    explainer = Explainer(model, providers=list(ort_providers), intra_op_threads=threads)
    info = explainer.info
    shape = [batch] + [d if isinstance(d, int) and d > 0 else 224 for d in info.image_shape[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    plain_model = plain_classifier(onnx.load(str(model)))
    plain, alone = session(plain_model, threads, ort_providers), session(plain_model, os.cpu_count() or 1,
                                                                          ort_providers)
    feeds = {info.image_input: x}
    if "class_index" in [i.name for i in plain.get_inputs()]:  # still declared; logits do not use it
        feeds["class_index"] = np.full(batch, -1, np.int64)

    def baselines() -> tuple[tuple[float, float], ...]:
        return (images_per_second(lambda: plain.run(["logits"], feeds), batch, baseline_calls, workers),
                images_per_second(lambda: explainer.explain(x, method=method), batch, baseline_calls, workers),
                images_per_second(lambda: alone.run(["logits"], feeds), batch, baseline_calls, 1))

    before = baselines()
    proc, url = start_server(model, workers, threads, max_batch_size, max_batch_delay, provider)
    try:
        body, headers = request_body(x, info.image_input, method)
        load(url, model_name(model), body, headers, clients, 2 * clients, batch)  # warm-up
        server_cpu, client_cpu = process_cpu_seconds(proc.pid), time.process_time()
        wall, latencies, failed = load(url, model_name(model), body, headers, clients, requests, batch)
        client_cpu = time.process_time() - client_cpu
        end = process_cpu_seconds(proc.pid)
        server_cpu = None if server_cpu is None or end is None else end - server_cpu
    finally:
        proc.terminate()
        proc.wait(60)
    after = baselines()  # before and after the load test: machine noise hits all rows alike
    plain_r, explain_r, alone_r = (((a[0] + b[0]) / 2, (a[1] + b[1]) / 2) for a, b in zip(before, after))
    label = (f"{info.source or model.name} {shape}, method {method}, onnxruntime {ort.__version__} {provider}; "
             f"server: {workers} workers × {threads} threads, dynamic batching up to {max_batch_size} "
             f"images within {max_batch_delay:g} ms; {clients} clients, {requests} requests of batch {batch}, "
             f"loopback HTTP, binary tensors; {os.cpu_count()} CPUs")
    return LoadResult(label, requests * batch, wall, latencies, failed, plain_r, explain_r, alone_r[0],
                      server_cpu, client_cpu)


def report(r: LoadResult, workers: int, threads: int) -> None:
    """The Markdown table and the CPU time per image."""
    plain_ips, explain_ips = r.plain[0], r.explainer[0]
    p50, p99 = (float(np.percentile(r.latencies, q)) * 1e3 for q in (50, 99))
    print(r.label + "\n")
    print("| path | images/s | p50 (ms) | p99 (ms) | failed | ÷ plain ORT |")
    print("|---|---:|---:|---:|---:|---:|")
    same = f"in-process, {workers} threads × {threads} intra-op"
    print(f"| plain onnxruntime, logits only ({same}) | {plain_ips:.1f} | - | - | - | 1.00 |")
    print(f"| Explainer.explain ({same}) | {explain_ips:.1f} | - | - | - | {explain_ips / plain_ips:.2f} |")
    print(f"| plain onnxruntime, one caller, {os.cpu_count()} intra-op threads (a script's loop) | "
          f"{r.alone:.1f} | - | - | - | {r.alone / plain_ips:.2f} |")
    print(f"| onnxcam serve over HTTP | {r.served:.1f} | {p50:.1f} | {p99:.1f} | {r.failed} | "
          f"{r.served / plain_ips:.2f} |")
    print(f"\nmedian latency {statistics.median(r.latencies) * 1e3:.1f} ms; HTTP ÷ in-process Explainer: "
          f"{r.served / explain_ips:.2f}")
    server = "n/a" if r.server_cpu is None else f"{r.server_cpu / r.images * 1e3:.1f}"
    print(f"CPU ms per image: plain inference {r.plain[1]:.1f}, Explainer {r.explainer[1]:.1f}; during the load "
          f"test the server {server} (explanation + HTTP) and this load generator "
          f"{r.client_cpu / r.images * 1e3:.1f}, of the {(os.cpu_count() or 1) * r.wall / r.images * 1e3:.1f} "
          f"the machine's cores had per image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a .cam.onnx graph (default: export torchvision ResNet-18)")
    parser.add_argument("--input-shape", default="3,224,224", help="C,H,W for the default export")
    parser.add_argument("--providers", choices=("cpu", "cuda"), default="cpu", help="where the server runs")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--workers", type=int, default=2, help="server inference threads")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per session")
    parser.add_argument("--baseline-calls", type=int, default=40, help="calls timed for each in-process baseline")
    parser.add_argument("--max-batch-size", type=int, default=1, help="the server's dynamic batching (1: off)")
    parser.add_argument("--max-batch-delay", type=float, default=2.0, help="ms a request waits for its batch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            import torch

            from onnxcam.exporter import export
            torch.manual_seed(0)
            model = Path(tmp) / "resnet18.cam.onnx"
            export("torchvision:resnet18", input_shape=[int(v) for v in args.input_shape.split(",")], out=model)
        result = measure(model, provider=args.providers, clients=args.clients, requests=args.requests,
                         batch=args.batch, method=args.method, workers=args.workers, threads=args.threads,
                         max_batch_size=args.max_batch_size, max_batch_delay=args.max_batch_delay,
                         baseline_calls=args.baseline_calls)
    report(result, args.workers, args.threads)
    if result.failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
