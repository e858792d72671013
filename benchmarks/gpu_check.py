"""A check for the first machine with an NVIDIA GPU: does onnxcam really run there, and does it pay?

Prints (a few minutes; on a machine without a working CUDA it is a dry run that says what it
skipped and why):

1. ``onnxcam doctor``: the onnxruntime build, every provider probed, the default choice;
2. CPU-vs-GPU parity of every method the graph offers on a seeded resnet50 at ``layer4``
   (heatmaps within 1e-4; batch of 4 random images);
3. explanation ÷ plain inference on the GPU for resnet50, batch 1 and 32 (median of 20);
4. the fp16 export (``--precision fp16``): Grad-CAM and Grad-CAM++ maps against the float32 graph's
   on the GPU (within 1e-2) and its speed-up at batch 32;
5. what it does not check: the server's throughput with and without dynamic batching on the GPU
   (``benchmarks/serve_load.py``) — listed so that the report says so.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print(text(report()))
    cuda = probe(CUDA)
    if not cuda.works:
        print(f"\ndry run: CUDA does not work here ({cuda.reason}); skipped the parity, GPU timing and fp16 checks")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            plain, graph, half = _graphs(Path(tmp))
            parity(graph)
            overhead(plain, graph, args.runs)
            fp16(graph, half, args.runs)
    print("\nnot checked here: the server's throughput with and without dynamic batching on the GPU "
          "(run benchmarks/serve_load.py --max-batch-size 1 / 8)")


if __name__ == "__main__":
    main()
