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
from pathlib import Path

import numpy as np

METRICS = ("confidence", "drop", "topk", "deletion", "insertion", "deletion_fine", "insertion_fine", "road_morf",
           "road_lerf", "road_morf_avg", "road_lerf_avg")
LABELS = {"confidence": "confidence change with map", "drop": "drop in confidence (x ⊙ map)",
          "topk": "drop after removing top-25 %", "deletion": "deletion AUC", "insertion": "insertion AUC",
          "deletion_fine": "deletion AUC", "insertion_fine": "insertion AUC",
          "road_morf": "ROAD MoRF", "road_lerf": "ROAD LeRF", "road_morf_avg": "ROAD MoRF",
          "road_lerf_avg": "ROAD LeRF"}
ROAD = {"road_morf": "morf", "road_lerf": "lerf", "road_morf_avg": "morf", "road_lerf_avg": "lerf"}


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


def ort_session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def plain_classifier_bytes(net, input_size=(3, 224, 224)) -> bytes:
    """The network's forward graph with only its ``logits`` output (the floor's model)."""
    from onnxcam.exporter.torch_export import export_with_target

    proto, _ = export_with_target(net, "layer4", input_size)
    kept = [o for o in proto.graph.output if o.name == "logits"]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    return proto.SerializeToString()


def main() -> None:
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
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    assert all(m in METRICS for m in metrics), f"metrics among {METRICS}"
    morf_p = [float(p) for p in args.road_morf_percentiles.split(",")]
    lerf_p = [float(p) for p in args.road_lerf_percentiles.split(",")]
    avg_p = [float(p) for p in args.road_average_percentiles.split(",")]
    for kind in ("deletion", "insertion"):
        LABELS[kind] = f"{kind} AUC (step {args.step} px)"
        LABELS[f"{kind}_fine"] = f"{kind} AUC (step {args.fine_step} px)"
    LABELS["road_morf"] = f"ROAD MoRF (noise 0.01, percentiles {args.road_morf_percentiles})"
    LABELS["road_lerf"] = f"ROAD LeRF (noise 0.01, percentiles {args.road_lerf_percentiles})"
    LABELS["road_morf_avg"] = f"ROAD MoRF (noise 0.01, percentiles {args.road_average_percentiles})"
    LABELS["road_lerf_avg"] = f"ROAD LeRF (noise 0.01, percentiles {args.road_average_percentiles})"
    road_p = {"road_morf": morf_p, "road_lerf": lerf_p, "road_morf_avg": avg_p, "road_lerf_avg": avg_p}

    import onnxruntime as ort
    import torch
    import torchvision
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange, DropInConfidence
    from pytorch_grad_cam.metrics.perturbation_confidence import (AveragerAcrossThresholds,
                                                                  PerturbationConfidenceMetric,
                                                                  RemoveLeastRelevantFirst, RemoveMostRelevantFirst)
    from pytorch_grad_cam.metrics.road import (NoisyLinearImputer, ROADLeastRelevantFirstAverage,
                                               ROADMostRelevantFirstAverage)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from onnxcam.exporter import export
    from onnxcam.runtime import Explainer
    from onnxcam.runtime import metrics as M

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
        plain = ort_session(plain_classifier_bytes(net), args.threads)

    x, _ = explainer.prepare(photos())
    expl = explainer.explain(x, "gradcam")
    maps, classes = expl.heatmaps.astype(np.float32), expl.class_index.astype(np.int64)
    xt = torch.from_numpy(x)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    counter = Counting(explainer.scores)
    explainer.scores = counter  # Scorer takes model.scores: every forward pass of a metric goes through here
    kw = dict(batch_size=args.batch_size, score="logit")

    onnxcam_fns = {
        "confidence": lambda: M.confidence_change(explainer, x, maps, classes, **kw),
        "drop": lambda: M.drop_in_confidence(explainer, x, maps, classes, **kw),
        "topk": lambda: M.remove_top_percent(explainer, x, maps, 25.0, classes, **kw),
        "deletion": lambda: M.auc(M.deletion_curve(explainer, x, maps, classes, step=args.step, **kw)),
        "insertion": lambda: M.auc(M.insertion_curve(explainer, x, maps, classes, step=args.step, **kw)),
        "deletion_fine": lambda: M.auc(M.deletion_curve(explainer, x, maps, classes, step=args.fine_step, **kw)),
        "insertion_fine": lambda: M.auc(M.insertion_curve(explainer, x, maps, classes, step=args.fine_step, **kw)),
    }

    def onnxcam_road(name, noise):
        fn = M.road_morf if ROAD[name] == "morf" else M.road_lerf
        return lambda: fn(explainer, x, maps, percentiles=road_p[name], class_index=classes, noise=noise, seed=0, **kw)

    def pgc_road_noise0(name):
        remover = RemoveMostRelevantFirst if ROAD[name] == "morf" else RemoveLeastRelevantFirst
        return AveragerAcrossThresholds(
            lambda p: PerturbationConfidenceMetric(remover(p, NoisyLinearImputer(noise=0))), road_p[name])

    for name in ROAD:
        onnxcam_fns[name] = onnxcam_road(name, 0.01)
    pgc_metric = {"confidence": CamMultImageConfidenceChange(), "drop": DropInConfidence()}
    for name in ROAD:
        pgc_metric[name] = (ROADMostRelevantFirstAverage if ROAD[name] == "morf" else ROADLeastRelevantFirstAverage)(
            road_p[name])
    if args.skip_pgc:
        pgc_metric = {}

    def pgc(name):
        with torch.no_grad():
            return np.asarray(pgc_metric[name](xt, maps, targets, net), np.float32).reshape(-1)

    # warm-up: both sessions and torch at the batch sizes used
    for b in sorted({min(args.batch_size, n) for n in (1, 4, args.batch_size)}):
        explainer.scores(np.repeat(x, -(-b // len(x)), axis=0)[:b])
        plain.run(["logits"], {plain.get_inputs()[0].name: np.repeat(x, -(-b // len(x)), axis=0)[:b]})
    with torch.no_grad():
        net(xt)
    pool = np.random.default_rng(0).standard_normal((args.batch_size, *x.shape[1:])).astype(np.float32)
    in_name = plain.get_inputs()[0].name

    rows = []
    total = {"passes": 0, "onnx": 0.0, "floor": 0.0, "inside": 0.0, "pgc": 0.0, "pgc_any": False}
    for name in metrics:
        t_onnx, t_floor, t_inside, t_pgc = [], [], [], []
        passes, calls, values = 0, 0, None
        for _ in range(args.runs):
            counter.reset()
            start = time.perf_counter()
            values = np.asarray(onnxcam_fns[name](), np.float32).reshape(-1)
            t_onnx.append(time.perf_counter() - start)
            t_inside.append(counter.inside)
            batches = list(counter.batches)
            passes, calls = sum(batches), len(batches)
            start = time.perf_counter()
            for b in batches:  # the floor: the same passes, same batch sizes, plain inference
                plain.run(["logits"], {in_name: pool[:b]})
            t_floor.append(time.perf_counter() - start)
            if name in pgc_metric:
                start = time.perf_counter()
                ref = pgc(name)
                t_pgc.append(time.perf_counter() - start)
        on, fl, ins = (statistics.median(t) for t in (t_onnx, t_floor, t_inside))
        pg = statistics.median(t_pgc) if t_pgc else None
        delta = float(np.abs(values - ref).max()) if name in pgc_metric else None
        delta0 = None
        if name in ROAD and not args.skip_pgc:  # parity with the noise off (untimed)
            with torch.no_grad():
                ref0 = np.asarray(pgc_road_noise0(name)(xt, maps, targets, net), np.float32).reshape(-1)
            delta0 = float(np.abs(np.asarray(onnxcam_road(name, 0.0)(), np.float32).reshape(-1) - ref0).max())
        rows.append((name, passes, calls, on, fl, ins, pg, delta, delta0))
        total["passes"] += passes
        total["onnx"] += on
        total["floor"] += fl
        total["inside"] += ins
        if pg is not None:
            total["pgc"] += pg
            total["pgc_any"] = True

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
    print(f"| **all above** | {total['passes']} | {total['onnx']:.3f} | {total['floor']:.3f} | "
          f"{total['onnx'] / total['floor']:.2f} | {total['inside']:.3f} | {total['onnx'] - total['inside']:.3f} | "
          f"— | — | — | — |")


before_load = os.getloadavg()

if __name__ == "__main__":
    main()
