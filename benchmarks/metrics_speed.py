"""Speed of the evaluation metrics: onnxcam vs its forward-pass floor vs pytorch-grad-cam.

Model: ResNet-50 (torchvision, ``torch.manual_seed(0)`` random weights: latency does not depend
on the values), exported with ``onnxcam.exporter.export("torchvision:resnet50", weights=...)``
from that very state_dict, so that the torch model pytorch-grad-cam runs is the same network.
Images: skimage.data chelsea, coffee, astronaut, rocket, preprocessed by ``Explainer.prepare``;
maps: onnxcam's Grad-CAM heatmaps at 224×224 and the class each explains (top-1), fed unchanged
to both implementations. Scores are logits (pytorch-grad-cam's ``ClassifierOutputTarget``), so
the two implementations compute the same numbers (the Δ column; ROAD differs by its noise).

For each metric, per run (median of ``--runs`` runs, runs interleaved across the columns):

* onnxcam: the metric function of ``onnxcam.runtime.metrics`` called as ``onnxcam evaluate``
  calls it: on the ``Explainer`` (its session: the explanation graph fetched for ``logits``
  only), explicit classes, ``batch_size = --batch-size``. Every call of the Explainer's scoring
  function is counted (images and batch sizes) and timed: "in session" is the time spent inside
  those calls, "numpy" the rest (building the perturbed batches, imputation, scores).
* plain-inference floor: the SAME forward passes — the recorded sequence of batch sizes — as
  plain ``session.run(["logits"], ...)`` on the classifier alone (the export's forward graph,
  logits output only, same thread count), on a preallocated batch.
* pytorch-grad-cam 1.5.7: its torch implementation of the same metric where one exists
  (``CamMultImageConfidenceChange``, ``DropInConfidence``, ``ROADMostRelevantFirstAverage``,
  ``ROADLeastRelevantFirstAverage``); it has no top-k removal or deletion / insertion metric.

Threads: onnxruntime ``intra_op_num_threads = --threads`` (default 2), ``inter_op = 1``; torch
``set_num_threads(--threads)``, ``set_num_interop_threads(1)``. The machine's load average is
printed with the table (the numbers are only as quiet as the machine). Not a test; run on demand:

    python benchmarks/metrics_speed.py [--threads 2] [--runs 3] [--batch-size 16] [--step 1792]
                                       [--fine-step 224] [--metrics confidence,drop,topk,deletion,insertion,
                                       deletion_fine,insertion_fine,road_morf,road_lerf,road_morf_avg,road_lerf_avg]
                                       [--road-morf-percentiles 80] [--road-lerf-percentiles 20]
                                       [--road-average-percentiles 10,20,30,40,50,60,70,80,90] [--skip-pgc]

Deletion / insertion run twice: at the coarse ``--step`` (1792 px = 8 rows, 29 points per image
at 224×224, seconds per run) and at the fine ``--fine-step`` (RISE's 224 px: 225 points per image,
900 forward passes per run for 4 photos — minutes per run), so that their ratio to the floor is
shown where the per-step numpy work is the largest share too.
ROAD runs at pytorch-grad-cam's single thresholds (``road_morf``: ``ROADMostRelevantFirst(80)``,
top 20 % removed; ``road_lerf``: ``ROADLeastRelevantFirst(20)``, bottom 80 % removed) and averaged
over ``--road-average-percentiles`` (``road_*_avg``: the metrics ``onnxcam evaluate`` reports;
pytorch-grad-cam takes minutes per run there, ``--skip-pgc`` leaves its columns out). ROAD's noise
(0.01) comes from different generators on the two sides, so its "max Δ" is noise; the "Δ at
noise 0" column re-runs both once with the noise off (pytorch-grad-cam's ``NoisyLinearImputer(noise=0)``,
scipy's direct sparse solve in float64) — the parity of the imputation plus the network's float32
differences between onnxruntime and torch.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from _common import plain_classifier, session

METRICS = ("confidence", "drop", "topk", "deletion", "insertion", "deletion_fine", "insertion_fine", "road_morf",
           "road_lerf", "road_morf_avg", "road_lerf_avg")
LABELS = {"confidence": "confidence change with map", "drop": "drop in confidence (x ⊙ map)",
          "topk": "drop after removing top-25 %", "deletion": "deletion AUC", "insertion": "insertion AUC",
          "deletion_fine": "deletion AUC", "insertion_fine": "insertion AUC",
          "road_morf": "ROAD MoRF", "road_lerf": "ROAD LeRF", "road_morf_avg": "ROAD MoRF",
          "road_lerf_avg": "ROAD LeRF"}
ROAD = {"road_morf": "morf", "road_lerf": "lerf", "road_morf_avg": "morf", "road_lerf_avg": "lerf"}
ROAD_NAMES = {"morf": "MoRF", "lerf": "LeRF"}


class Counting:
    """Wraps a scoring callable: records each call's batch size and the time spent inside."""

    def __init__(self, fn):
        self.fn, self.batches, self.inside = fn, [], 0.0

    def reset(self) -> None:
        self.batches, self.inside = [], 0.0

    def __call__(self, xb: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self.fn(xb)
        self.inside += time.perf_counter() - start
        self.batches.append(len(xb))
        return out


def photos() -> list:
    from PIL import Image
    from skimage import data

    return [Image.fromarray(getattr(data, name)()).convert("RGB") for name in ("chelsea", "coffee", "astronaut", "rocket")]


def plain_model(net, input_size=(3, 224, 224)):
    """The network's forward graph with only its ``logits`` output (the floor's model)."""
    from onnxcam.exporter.torch_export import export_with_target

    model, _ = export_with_target(net, "layer4", input_size)
    return plain_classifier(model)


def parse_args() -> argparse.Namespace:
    """The options, with the metrics chosen, ROAD's percentiles (``road_p``) and the table's labels."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--step", type=int, default=1792)
    parser.add_argument("--fine-step", type=int, default=224)
    parser.add_argument("--road-average-percentiles", default="10,20,30,40,50,60,70,80,90")
    parser.add_argument("--skip-pgc", action="store_true", help="leave pytorch-grad-cam's columns out")
    parser.add_argument("--metrics", default=",".join(METRICS))
    parser.add_argument("--road-morf-percentiles", default="80")
    parser.add_argument("--road-lerf-percentiles", default="20")
    args = parser.parse_args()
    assert args.runs >= 3, "the median of at least 3 runs"
    args.metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    assert all(m in METRICS for m in args.metrics), f"metrics among {METRICS}"
    morf_p, lerf_p, avg_p = ([float(p) for p in text.split(",")] for text in (
        args.road_morf_percentiles, args.road_lerf_percentiles, args.road_average_percentiles))
    args.road_p = {"road_morf": morf_p, "road_lerf": lerf_p, "road_morf_avg": avg_p, "road_lerf_avg": avg_p}
    for kind in ("deletion", "insertion"):
        LABELS[kind] = f"{kind} AUC (step {args.step} px)"
        LABELS[f"{kind}_fine"] = f"{kind} AUC (step {args.fine_step} px)"
    for name, percentiles in (("road_morf", args.road_morf_percentiles), ("road_lerf", args.road_lerf_percentiles),
                              ("road_morf_avg", args.road_average_percentiles),
                              ("road_lerf_avg", args.road_average_percentiles)):
        LABELS[name] = f"ROAD {ROAD_NAMES[ROAD[name]]} (noise 0.01, percentiles {percentiles})"
    return args


@dataclass
class Bench:
    """The network on both sides, the photos, their maps and classes, and the counted scorer."""

    net: object
    explainer: object
    plain: object
    x: np.ndarray
    maps: np.ndarray
    classes: np.ndarray
    counter: Counting


def setup(args: argparse.Namespace) -> Bench:
    """Seeded ResNet-50, its explanation graph and plain classifier, the photos' Grad-CAM maps."""
    import torch
    import torchvision

    from onnxcam.exporter import export
    from onnxcam.runtime import Explainer

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None).eval()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "resnet50_seed0.pt"
        torch.save(net.state_dict(), weights)
        graph = Path(tmp) / "resnet50.onnx"
        export("torchvision:resnet50", weights=str(weights), out=graph)
        explainer = Explainer(graph, intra_op_threads=args.threads, batch_size=args.batch_size)
        plain = session(plain_model(net), args.threads)
    x, _ = explainer.prepare(photos())
    expl = explainer.explain(x, "gradcam")
    counter = Counting(explainer.scores)
    explainer.scores = counter  # Scorer takes model.scores: every forward pass of a metric goes through here
    return Bench(net, explainer, plain, x, expl.heatmaps.astype(np.float32), expl.class_index.astype(np.int64),
                 counter)


def onnxcam_metric(b: Bench, args: argparse.Namespace, name: str, noise: float = 0.01):
    """The onnxcam call of metric ``name``, as ``onnxcam evaluate`` makes it."""
    from onnxcam.runtime import metrics as M

    ex, x, maps, classes = b.explainer, b.x, b.maps, b.classes
    kw = dict(batch_size=args.batch_size, score="logit")
    if name in ROAD:
        fn = M.road_morf if ROAD[name] == "morf" else M.road_lerf
        return lambda: fn(ex, x, maps, percentiles=args.road_p[name], class_index=classes, noise=noise, seed=0, **kw)
    step = args.fine_step if name.endswith("_fine") else args.step
    curve = M.deletion_curve if name.startswith("deletion") else M.insertion_curve
    return {"confidence": lambda: M.confidence_change(ex, x, maps, classes, **kw),
            "drop": lambda: M.drop_in_confidence(ex, x, maps, classes, **kw),
            "topk": lambda: M.remove_top_percent(ex, x, maps, 25.0, classes, **kw)}.get(
        name, lambda: M.auc(curve(ex, x, maps, classes, step=step, **kw)))


def pgc_metric(b: Bench, args: argparse.Namespace, name: str, noise0: bool = False):
    """pytorch-grad-cam's implementation of ``name`` (None where it has none); ``noise0``: ROAD
    with the imputation's noise off."""
    import torch
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange, DropInConfidence
    from pytorch_grad_cam.metrics.perturbation_confidence import (AveragerAcrossThresholds,
                                                                  PerturbationConfidenceMetric,
                                                                  RemoveLeastRelevantFirst, RemoveMostRelevantFirst)
    from pytorch_grad_cam.metrics.road import (NoisyLinearImputer, ROADLeastRelevantFirstAverage,
                                               ROADMostRelevantFirstAverage)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if name in ROAD and noise0:
        remover = RemoveMostRelevantFirst if ROAD[name] == "morf" else RemoveLeastRelevantFirst
        metric = AveragerAcrossThresholds(
            lambda p: PerturbationConfidenceMetric(remover(p, NoisyLinearImputer(noise=0))), args.road_p[name])
    elif name in ROAD:
        metric = (ROADMostRelevantFirstAverage if ROAD[name] == "morf" else ROADLeastRelevantFirstAverage)(
            args.road_p[name])
    else:
        metric = {"confidence": CamMultImageConfidenceChange, "drop": DropInConfidence}.get(name, lambda: None)()
    if metric is None:
        return None
    xt, targets = torch.from_numpy(b.x), [ClassifierOutputTarget(int(c)) for c in b.classes]

    def run() -> np.ndarray:
        with torch.no_grad():
            return np.asarray(metric(xt, b.maps, targets, b.net), np.float32).reshape(-1)
    return run


def warm_up(b: Bench, args: argparse.Namespace) -> None:
    """Both sessions and torch at the batch sizes used."""
    import torch

    for size in sorted({min(args.batch_size, n) for n in (1, 4, args.batch_size)}):
        batch = np.repeat(b.x, -(-size // len(b.x)), axis=0)[:size]
        b.explainer.scores(batch)
        b.plain.run(["logits"], {b.plain.get_inputs()[0].name: batch})
    with torch.no_grad():
        b.net(torch.from_numpy(b.x))


def time_metric(b: Bench, args: argparse.Namespace, name: str) -> tuple:
    """(name, passes, session runs, onnxcam s, floor s, in-session s, pytorch-grad-cam s, max Δ, max Δ at noise 0)."""
    ours, theirs = onnxcam_metric(b, args, name), None if args.skip_pgc else pgc_metric(b, args, name)
    pool = np.random.default_rng(0).standard_normal((args.batch_size, *b.x.shape[1:])).astype(np.float32)
    in_name = b.plain.get_inputs()[0].name
    t_onnx, t_floor, t_inside, t_pgc = [], [], [], []
    for _ in range(args.runs):
        b.counter.reset()
        start = time.perf_counter()
        values = np.asarray(ours(), np.float32).reshape(-1)
        t_onnx.append(time.perf_counter() - start)
        t_inside.append(b.counter.inside)
        batches = list(b.counter.batches)
        start = time.perf_counter()
        for size in batches:  # the floor: the same passes, same batch sizes, plain inference
            b.plain.run(["logits"], {in_name: pool[:size]})
        t_floor.append(time.perf_counter() - start)
        if theirs is not None:
            start = time.perf_counter()
            ref = theirs()
            t_pgc.append(time.perf_counter() - start)
    on, fl, ins = (statistics.median(t) for t in (t_onnx, t_floor, t_inside))
    pg = statistics.median(t_pgc) if t_pgc else None
    delta = None if theirs is None else float(np.abs(values - ref).max())
    delta0 = None
    if name in ROAD and not args.skip_pgc:  # parity with the noise off (untimed)
        ref0 = pgc_metric(b, args, name, noise0=True)()
        delta0 = float(np.abs(np.asarray(onnxcam_metric(b, args, name, 0.0)(), np.float32).reshape(-1) - ref0).max())
    return name, sum(batches), len(batches), on, fl, ins, pg, delta, delta0


def print_table(rows: list[tuple], args: argparse.Namespace) -> None:
    import onnxruntime as ort
    import torch

    load = os.getloadavg()
    print(f"ResNet-50 (torchvision, seeded random weights), 4 photos (skimage chelsea, coffee, astronaut, rocket), "
          f"Grad-CAM maps; onnxruntime {ort.__version__} CPU / torch {torch.__version__}, {args.threads} threads; "
          f"metric batch size {args.batch_size}, deletion/insertion steps {args.step} and {args.fine_step} px; "
          f"median of {args.runs} runs. "
          f"Load average before / after: {before_load[0]:.2f} / {load[0]:.2f} (1 min), {load[1]:.2f} (5 min), "
          f"{os.cpu_count()} CPUs.\n")
    print("| metric | forward passes (session runs) | onnxcam s | plain-inference floor s | ratio to floor "
          "(goal ≤ 1.2) | onnxcam in session s | onnxcam numpy s | pytorch-grad-cam s | speed-up | max Δ | "
          "max Δ at noise 0 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, passes, calls, on, fl, ins, pg, delta, delta0 in rows:
        print(f"| {LABELS[name]} | {passes} ({calls}) | {on:.3f} | {fl:.3f} | {on / fl:.2f} | {ins:.3f} | "
              f"{on - ins:.3f} | {'—' if pg is None else f'{pg:.3f}'} | {'—' if pg is None else f'{pg / on:.2f}×'} | "
              f"{'—' if delta is None else f'{delta:.1e}'} | {'—' if delta0 is None else f'{delta0:.1e}'} |")
    passes, on, fl, ins = (sum(r[k] for r in rows) for k in (1, 3, 4, 5))
    print(f"| **all above** | {passes} | {on:.3f} | {fl:.3f} | {on / fl:.2f} | {ins:.3f} | {on - ins:.3f} | "
          f"— | — | — | — |")


def main() -> None:
    args = parse_args()
    bench = setup(args)
    warm_up(bench, args)
    print_table([time_metric(bench, args, name) for name in args.metrics], args)


before_load = os.getloadavg()

if __name__ == "__main__":
    main()
