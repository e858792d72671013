"""A check for the first machine with an NVIDIA GPU: does onnxcam really run there, and does it pay?

Prints (a few minutes; on a machine without a working CUDA it is a dry run that says what it
skipped and why):

1. ``onnxcam doctor``: the onnxruntime build, every provider probed, the default choice;
2. CPU-vs-GPU parity of every method the graph offers on a seeded resnet50 at ``layer4``
   (heatmaps within 1e-4; batch of 4 random images);
3. explanation ÷ plain inference on the GPU for resnet50, batch 1 and 32 (median of 20);
4. the fp16 export (``--precision fp16``): Grad-CAM and Grad-CAM++ maps against the float32 graph's
   on the GPU (within 1e-2) and its speed-up at batch 32;
5. ``onnxcam serve`` on the GPU (``benchmarks/serve_load.py``'s load test, 8 clients, one image per
   request): throughput without and with dynamic batching, ÷ plain single-image GPU inference.

    python benchmarks/gpu_check.py [--runs 20]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision

from _common import time_calls
from serve_load import measure

from onnxcam.runtime import Explainer
from onnxcam.runtime.doctor import report, text
from onnxcam.runtime.providers import CUDA, probe

SKIPPED_METHODS = {"scorecam", "ablationcam"}  # thousands of runs each: parity is checked on 1 image below


def _median_ms(fn, runs: int) -> float:
    return 1000 * statistics.median(time_calls(fn, runs, warmup=3))


def _graphs(workdir: Path) -> tuple[Path, Path, Path]:
    """(plain resnet50 ONNX, its explanation graph at layer4, the same in fp16), seeded random weights."""
    from onnxcam.exporter import export

    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None).eval()
    plain = workdir / "resnet50.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), str(plain), input_names=["input"], output_names=["logits"],
                      dynamo=False, dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17)
    graph = workdir / "resnet50.cam.onnx"
    onnx.save(export(str(plain), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]), str(graph))
    half = workdir / "resnet50.fp16.cam.onnx"
    onnx.save(export(str(plain), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], precision="fp16"), str(half))
    return plain, graph, half


def parity(graph: Path) -> None:
    cpu, gpu = Explainer(str(graph), providers=["cpu"]), Explainer(str(graph), providers=["cuda"])
    print(f"\nparity (GPU session providers: {', '.join(gpu.providers)})")
    x = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    for method in cpu.available_methods:
        batch = x[:1] if method in SKIPPED_METHODS else x
        a = cpu.explain(batch, method=method).heatmaps
        b = gpu.explain(batch, method=method).heatmaps
        error = float(np.abs(a - b).max())
        print(f"  {method:<24} max|Δ| = {error:.2e}  {'ok' if error <= 1e-4 else 'FAIL'}")


def overhead(plain: Path, graph: Path, runs: int) -> None:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = [ort.InferenceSession(str(p), options, providers=[CUDA, "CPUExecutionProvider"]) for p in (plain, graph)]
    print("\n| batch | plain (ms) | explanation (ms) | ratio |\n|---:|---:|---:|---:|")
    for batch in (1, 32):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        plain_ms = _median_ms(lambda: sessions[0].run(None, {"input": x}), runs)
        explain_ms = _median_ms(lambda: sessions[1].run(None, {"input": x, "class_index": np.full(batch, -1)}), runs)
        print(f"| {batch} | {plain_ms:.2f} | {explain_ms:.2f} | {explain_ms / plain_ms:.3f} |")


def fp16(graph: Path, half: Path, runs: int) -> None:
    full, reduced = Explainer(str(graph), providers=["cuda"]), Explainer(str(half), providers=["cuda"])
    x = np.random.default_rng(1).standard_normal((32, 3, 224, 224)).astype(np.float32)
    print("\nfp16 graph on the GPU")
    for method in ("gradcam", "gradcam++"):
        maps = [e.explain(x[:4], method=method).heatmaps for e in (full, reduced)]
        error = float(np.abs(maps[0] - maps[1]).max())
        print(f"  {method:<10} max|Δ| vs float32 = {error:.2e}  {'ok' if error <= 1e-2 else 'FAIL'}")
    times = [_median_ms(lambda e=e: e.explain(x, method="gradcam"), runs) for e in (full, reduced)]
    print(f"  batch 32 Grad-CAM: float32 {times[0]:.1f} ms, fp16 {times[1]:.1f} ms, "
          f"speed-up {times[0] / times[1]:.2f}×")


def serving(graph: Path, requests: int) -> None:
    print("\n| onnxcam serve on the GPU, 8 clients | images/s | p50 (ms) | plain GPU inference (images/s) | ÷ plain |")
    print("|---|---:|---:|---:|---:|")
    for size in (1, 8):
        r = measure(graph, provider="cuda", clients=8, requests=requests, max_batch_size=size, threads=1)
        label = "no batching" if size == 1 else f"--max-batch-size {size} --max-batch-delay 2"
        print(f"| {label} | {r.served:.1f} | {np.percentile(r.latencies, 50) * 1e3:.1f} | {r.plain[0]:.1f} | "
              f"{r.served / r.plain[0]:.2f} |" + (f" ({r.failed} failed)" if r.failed else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print(text(report()))
    cuda = probe(CUDA)
    if not cuda.works:
        print(f"\ndry run: CUDA does not work here ({cuda.reason}); skipped the parity, GPU timing, fp16 and "
              "serving checks")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            plain, graph, half = _graphs(Path(tmp))
            parity(graph)
            overhead(plain, graph, args.runs)
            fp16(graph, half, args.runs)
            serving(graph, 20 * args.runs)


if __name__ == "__main__":
    main()
