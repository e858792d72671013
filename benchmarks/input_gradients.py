"""Cost of input-space explanations: the input-gradient graph's latency ÷ plain inference, and the
same run's Captum ``GuidedGradCam`` (torch, CPU) for comparison.

ResNet-50 (torchvision, seeded random weights: latency does not depend on the values), target
``layer4``, exported twice: with ``input_gradients="guided"`` (the one reverse pass Guided
Grad-CAM needs) and with ``"both"`` (plain and guided passes); onnxruntime CPU and torch with the same
thread count; median of ``--runs`` timed runs after warm-up, the contenders interleaved run by
run so that load on the machine hits them alike. Rows:

- plain inference: the same torch.onnx export with only its ``logits`` output (onnxruntime);
- ``--input-gradients guided`` graph, Guided Grad-CAM outputs: ``logits``, ``target``,
  ``activations``, ``gradients``, ``guided_gradients`` (everything ``guided-gradcam`` reads; the
  map itself is numpy, ~1 ms);
- ``--input-gradients both`` graph, all outputs (adds ``input_gradients`` and the Grad-CAM++
  terms: both reverse passes);
- the same ``both`` graph, Guided Grad-CAM outputs with ``input_gradients_enabled = false`` (what
  the Explainer feeds for ``guided-gradcam``: each reverse pass to the input sits behind its own
  ``If`` and the unread one is skipped);
- the same ``both`` graph with both switches false and the Grad-CAM outputs (what the Explainer
  feeds for CAM methods and Score-CAM's masked batches);
- Captum ``GuidedGradCam(model, model.layer4)`` (torch float32, ``torch.set_num_threads``);
- torch forward (no grad), for scale.

Goal: the guided graph (Guided Grad-CAM outputs) ≤ 3× plain inference. Prints a Markdown table.

    python benchmarks/input_gradients.py [--threads 2] [--runs 10] [--batch 1 4]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
import torch
import torchvision

from _common import plain_classifier, session

from onnxcam.exporter.explain_graph import GraphSpec, build_explanation_graph
from onnxcam.exporter.onnx_source import load_classifier
from onnxcam.exporter.torch_export import TARGET, export_with_target

GUIDED_GRADCAM_OUTPUTS = ["logits", "target", "activations", "gradients", "guided_gradients"]
CAM_OUTPUTS = ["logits", "target", "activations", "gradients"]
PAUSE_SECONDS = 0.1


def interleaved_medians(contenders: dict, runs: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each callable, timed round-robin in a new random order every round, each
    call after a short pause (torch's and onnxruntime's worker threads keep spinning for a while
    after a call and slow down whatever runs next: a fixed order without pauses measured one
    contender 20 % faster than the same work run in isolation)."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contenders}
    rng = np.random.default_rng(0)
    for _ in range(runs):
        for name in rng.permutation(list(contenders)):
            fn = contenders[name]
            time.sleep(PAUSE_SECONDS)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from captum.attr import GuidedGradCam

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    start = time.perf_counter()
    proto, _ = export_with_target(model, "layer4", (3, 224, 224))
    classifier = load_classifier(proto)
    graphs = {}
    for mode in ("guided", "both"):
        spec = GraphSpec(classifier.model, classifier.image_input, classifier.logits, TARGET,
                         "torchvision:resnet50", "layer4", {}, None, mode)
        graphs[mode] = session(build_explanation_graph(spec, classifier.facts), args.threads)
    export_seconds = time.perf_counter() - start
    plain = session(plain_classifier(classifier.model), args.threads)
    explained, guided = graphs["both"], graphs["guided"]
    all_outputs = [o.name for o in explained.get_outputs()]
    for module in model.modules():  # Captum's backward hooks need out-of-place ReLUs
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    captum = GuidedGradCam(model, model.layer4)

    rows = []
    for batch in args.batch:
        x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        xt = torch.from_numpy(x)
        cls = np.full(batch, -1, np.int64)
        feeds = {classifier.image_input: x, "class_index": cls}
        target = torch.from_numpy(explained.run(["target"], feeds)[0])

        def torch_forward():
            with torch.no_grad():
                model(xt)

        medians = interleaved_medians({
            "plain": lambda: plain.run(["logits"], {classifier.image_input: x}),
            "guided": lambda: guided.run(GUIDED_GRADCAM_OUTPUTS, feeds),
            "all": lambda: explained.run(all_outputs, feeds),
            "both_guided": lambda: explained.run(GUIDED_GRADCAM_OUTPUTS,
                                                 {**feeds, "input_gradients_enabled": np.array(False)}),
            "off": lambda: explained.run(CAM_OUTPUTS, {**feeds, "input_gradients_enabled": np.array(False),
                                                       "guided_gradients_enabled": np.array(False)}),
            "captum": lambda: captum.attribute(xt.clone(), target=target),
            "torch": torch_forward,
        }, args.runs)
        rows.append((batch, medians))

    print(f"ResNet-50, 224×224, CPU, {args.threads} threads, onnxruntime {ort.__version__}, torch "
          f"{torch.__version__}, median of {args.runs} interleaved runs (export and build of both graphs: "
          f"{export_seconds:.0f} s)\n")
    print("| batch | plain ORT (ms) | `guided` graph: Guided Grad-CAM outputs (ms) | ÷ plain "
          "| `both` graph: Guided Grad-CAM outputs (ms) | ÷ plain | `both` graph: all outputs (ms) | ÷ plain "
          "| `both` graph, switches off: Grad-CAM outputs (ms) | ÷ plain "
          "| Captum GuidedGradCam (ms) | ÷ plain ORT | Captum ÷ `guided` graph | torch forward (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for batch, m in rows:
        print(f"| {batch} | {m['plain'] * 1e3:.1f} | {m['guided'] * 1e3:.1f} | {m['guided'] / m['plain']:.2f}× "
              f"| {m['both_guided'] * 1e3:.1f} | {m['both_guided'] / m['plain']:.2f}× "
              f"| {m['all'] * 1e3:.1f} | {m['all'] / m['plain']:.2f}× | {m['off'] * 1e3:.1f} "
              f"| {m['off'] / m['plain']:.2f}× | {m['captum'] * 1e3:.1f} "
              f"| {m['captum'] / m['plain']:.2f}× | {m['captum'] / m['guided']:.2f}× | {m['torch'] * 1e3:.1f} |")


if __name__ == "__main__":
    main()
