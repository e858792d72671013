"""Cost of an explanation: explanation-graph latency ÷ plain ONNX inference latency.

ResNet-50 (torchvision, seeded random weights: latency does not depend on the values), target
``layer4``, onnxruntime CPU with a fixed thread count, batch 1 and 8, median of ``--runs`` timed
runs after warm-up. Both sessions come from the same torch.onnx export: the plain one keeps only
the ``logits`` output. Prints a Markdown table.

    python benchmarks/overhead.py [--threads 2] [--runs 15] [--model resnet50] [--target layer4]
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import onnxruntime as ort
import torch
import torchvision

from _common import plain_classifier, session, time_calls

from onnxcam.exporter.explain_graph import GraphSpec, build_explanation_graph
from onnxcam.exporter.onnx_source import load_classifier
from onnxcam.exporter.torch_export import TARGET, export_with_target

EXPLANATION_OUTPUTS = ["logits", "target", "activations", "gradients", "gradients_pow2", "gradients_pow3"]


def median_latency(run, runs: int, warmup: int = 3) -> float:
    return statistics.median(time_calls(run, runs, warmup))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--target", default="layer4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    assert args.runs >= 7, "the median of at least 7 runs"

    torch.manual_seed(0)
    net = torchvision.models.get_model(args.model, weights=None).eval()
    proto, _ = export_with_target(net, args.target, (3, 224, 224))
    classifier = load_classifier(proto)
    spec = GraphSpec(classifier.model, classifier.image_input, classifier.logits, TARGET, args.model, args.target, {})
    explain = session(build_explanation_graph(spec, classifier.facts), args.threads)
    plain = session(plain_classifier(proto), args.threads)

    print(f"{args.model} @ {args.target}, onnxruntime {ort.__version__} CPU, {args.threads} threads, "
          f"median of {args.runs} runs\n")
    print("| batch | plain inference (ms) | explanation graph (ms) | ratio |")
    print("|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for batch in (int(b) for b in args.batches.split(",")):
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        class_index = np.full(batch, -1, np.int64)
        # interleave the two measurements so that machine noise hits both alike
        plain_times, explain_times = [], []
        for _ in range(3):
            plain_times.append(median_latency(lambda: plain.run(["logits"], {"input": x}), args.runs))
            explain_times.append(median_latency(
                lambda: explain.run(EXPLANATION_OUTPUTS, {"input": x, "class_index": class_index}), args.runs))
        t_plain, t_explain = min(plain_times), min(explain_times)
        print(f"| {batch} | {t_plain * 1e3:.1f} | {t_explain * 1e3:.1f} | {t_explain / t_plain:.3f} |")


if __name__ == "__main__":
    main()
