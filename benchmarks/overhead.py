"""Cost of an explanation: explanation-graph latency ÷ plain ONNX inference latency.

Rows: ResNet-50 (torchvision) at ``layer4``; the same network quantized by onnxruntime
(``quantize_static`` QDQ with int8 and with uint8 activations, QOperator, ``quantize_dynamic``) at the
exporter's default target, each against the quantized model itself; and a ViT (timm
``vit_small_patch16_224``) at ``blocks.11.norm1``. Seeded random weights (latency does not
depend on the values), onnxruntime CPU with a fixed thread count, batch 1 and 8, the best of three
medians of ``--runs`` timed runs after warm-up, the two sessions interleaved so that machine noise
hits both alike. Prints a Markdown table. Goals: float ≤ 1.2×, int8 ≤ 1.1×, ViT ≤ 1.05×.

    python benchmarks/overhead.py [--threads 2] [--runs 15] [--rows resnet50,int8,uint8,qoperator,dynamic,vit]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch
import torchvision

from _common import plain_classifier, session, time_calls

from onnxcam.exporter import export
from onnxcam.exporter.explain_graph import GraphSpec, build_explanation_graph
from onnxcam.exporter.onnx_source import load_classifier
from onnxcam.exporter.torch_export import TARGET, export_with_target

EXPLANATION_OUTPUTS = ["logits", "target", "activations", "gradients", "gradients_pow2", "gradients_pow3"]
ROWS = ("resnet50", "int8", "uint8", "qoperator", "dynamic", "vit")


def median_latency(run, runs: int, warmup: int = 3) -> float:
    return statistics.median(time_calls(run, runs, warmup))


def _torch_pair(net: torch.nn.Module, target: str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(plain classifier, explanation graph at ``target``) from one torch.onnx export."""
    exported, _ = export_with_target(net.eval(), target, (3, 224, 224))
    proto = ir.to_proto(exported)
    classifier = load_classifier(proto)
    spec = GraphSpec(classifier.model, classifier.image_input, classifier.logits, TARGET, "benchmark", target, {})
    return plain_classifier(proto), build_explanation_graph(spec, classifier.facts)


class _Calibration:
    def __init__(self, name: str) -> None:
        self.name = name
        self.batches = iter([{name: np.random.default_rng(i).standard_normal((1, 3, 224, 224)).astype(np.float32)}
                             for i in range(8)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def _quantized_pair(kind: str, workdir: Path) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(the quantized resnet50, its explanation graph at the default target)."""
    from onnxruntime import quantization

    torch.manual_seed(0)
    source, out = workdir / "resnet50.onnx", workdir / f"resnet50_{kind}.onnx"
    torch.onnx.export(torchvision.models.resnet50(weights=None).eval(), (torch.randn(1, 3, 224, 224),), str(source),
                      input_names=["input"], output_names=["logits"], dynamo=False, dynamic_axes={"input": {0: "N"}},
                      opset_version=17)
    if kind == "dynamic":
        quantization.quantize_dynamic(str(source), str(out), weight_type=quantization.QuantType.QInt8)
    else:
        activations = quantization.QuantType.QInt8 if kind == "int8" else quantization.QuantType.QUInt8
        form = quantization.QuantFormat.QOperator if kind == "qoperator" else quantization.QuantFormat.QDQ
        if kind == "qoperator":  # its quantizer needs the shapes inferred
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(source), str(source))
        quantization.quantize_static(str(source), str(out), _Calibration("input"), quant_format=form,
                                     per_channel=True, activation_type=activations)
    return onnx.load(str(out)), export(str(out), mean=[0, 0, 0], std=[1, 1, 1])


def _pairs(rows: list[str]) -> Iterator[tuple[str, onnx.ModelProto, onnx.ModelProto]]:
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            torch.manual_seed(0)
            if row == "resnet50":
                yield "resnet50 @ layer4 (float32)", *_torch_pair(torchvision.models.resnet50(weights=None), "layer4")
            elif row == "vit":
                import timm

                net = timm.create_model("vit_small_patch16_224", pretrained=False)
                yield "vit_small_patch16_224 @ blocks.11.norm1", *_torch_pair(net, "blocks.11.norm1")
            else:
                label = {"int8": "QDQ int8", "uint8": "QDQ uint8", "qoperator": "QOperator uint8",
                         "dynamic": "dynamic int8"}[row]
                yield f"resnet50 {label} @ default target", *_quantized_pair(row, Path(tmp))


def _measure(plain: ort.InferenceSession, explain: ort.InferenceSession, batch: int, runs: int) -> tuple[float, float]:
    name = plain.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    class_index = np.full(batch, -1, np.int64)
    plain_times, explain_times = [], []
    for _ in range(3):
        plain_times.append(median_latency(lambda: plain.run(None, {name: x}), runs))
        explain_times.append(median_latency(
            lambda: explain.run(EXPLANATION_OUTPUTS, {name: x, "class_index": class_index}), runs))
    return min(plain_times), min(explain_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rows", default=",".join(ROWS))
    args = parser.parse_args()
    assert args.runs >= 7, "the median of at least 7 runs"
    rows = args.rows.split(",")
    assert set(rows) <= set(ROWS), f"rows are {', '.join(ROWS)}"

    print(f"onnxruntime {ort.__version__} CPU, {args.threads} threads, best of 3 medians of {args.runs} runs\n")
    print("| model | batch | plain inference (ms) | explanation graph (ms) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for label, plain_model, graph in _pairs(rows):
        plain, explain = session(plain_model, args.threads), session(graph, args.threads)
        for batch in (int(b) for b in args.batches.split(",")):
            t_plain, t_explain = _measure(plain, explain, batch, args.runs)
            print(f"| {label} | {batch} | {t_plain * 1e3:.1f} | {t_explain * 1e3:.1f} | {t_explain / t_plain:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
