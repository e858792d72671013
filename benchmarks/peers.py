"""onnxcam vs the torch CAM libraries: latency of one explanation, same model, same threads.

ResNet-50 (torchvision, seeded random weights: latency does not depend on the values), target
``layer4``, CPU only, the same thread count for everyone (torch: ``set_num_threads(n)``,
``set_num_interop_threads(1)``; onnxruntime: ``intra_op_num_threads = n``). Every number in the
printed tables comes from this one run of the script.

What each row times (one call = one batch explained, an explicit class per image):

* onnxcam: ``Explainer.explain(x, method, class_index)`` on a preprocessed float32 batch — one
  run of the explanation graph, the method in numpy, post-processing (ReLU, min-max, bilinear
  resize to 224×224, min-max). The "graph only" row is the bare ``session.run`` for Grad-CAM's
  outputs, to show how much the numpy side costs; the "in-graph" rows compute the method and its
  post-processing in a small ONNX graph instead (``in_graph=True``, the GPU's default path).
* pytorch-grad-cam 1.5.7: ``GradCAM`` / ``GradCAMPlusPlus`` called with one
  ``ClassifierOutputTarget`` per image; returns post-processed maps at input resolution (it
  back-propagates through every parameter: ``loss.backward()``).
* Captum ``LayerGradCam.attribute(x, target=..., relu_attributions=True)`` +
  ``LayerAttribution.interpolate(..., "bilinear")`` to 224×224 + per-image min-max (torch).
* torchcam 0.5 ``GradCAM`` (forward, then ``extractor(class_idx, scores)``, which normalises
  at 7×7) + bilinear ``F.interpolate`` to 224×224 + per-image min-max (torch). torchcam 0.5's
  ``GradCAMpp`` is not Grad-CAM++ (REFERENCES §1), so it has no Grad-CAM++ row.
* plain inference, for reference: onnxruntime on the classifier alone (logits only) and a torch
  forward under ``inference_mode``.

Each peer gets its own copy of the network, so no library's hooks fire during another's call.
Grad-CAM / Grad-CAM++: per method, ``--warmup`` calls then ``--runs`` timed calls, in
``--rounds`` rounds (every method once per round); a row shows the lowest of its per-round
medians. The max |Δ| column compares each row's heatmaps with onnxcam's (same maps expected).

Ablation-CAM / Score-CAM (batch 1): pytorch-grad-cam runs the whole network once per channel
(2048 channels: minutes per call), so these rows use ``--heavy-runs`` calls (default 3, no
warm-up call: each call is itself 2048 forward passes); onnxcam's Ablation-CAM (head only) gets
``--runs`` calls. Batch sizes: pytorch-grad-cam ``batch_size = --cam-batch`` (AblationCAM's
argument, ScoreCAM's attribute), onnxcam ``head_batch_size`` / ``batch_size`` = the same value.
``--quick`` skips the minutes-long rows (pytorch-grad-cam's AblationCAM and ScoreCAM, onnxcam's
Score-CAM).

    python benchmarks/peers.py [--threads 2] [--runs 9] [--rounds 2] [--batches 1,8]
                               [--cam-batch 64] [--heavy-runs 3] [--quick]
"""
from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam draws progress bars in ScoreCAM/AblationCAM

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch
import torch.nn.functional as F
import torchvision

from _common import load_average, plain_classifier, session as ort_session, time_calls

from onnxcam.exporter.explain_graph import GraphSpec, build_explanation_graph
from onnxcam.exporter.onnx_source import load_classifier
from onnxcam.exporter.torch_export import TARGET, export_with_target
from onnxcam.runtime import Explainer

MODEL, TARGET_LAYER, SIZE = "resnet50", "layer4", 224
PREPROCESS = {"layout": "NCHW", "size": [SIZE, SIZE], "resize": 256, "mean": [0.485, 0.456, 0.406],
              "std": [0.229, 0.224, 0.225], "color": "RGB"}


# -- models --------------------------------------------------------------------------------------
def build_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(MODEL, weights=None).eval()


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max of [N, H, W] (as onnxcam / pytorch-grad-cam: eps 1e-7)."""
    flat = maps.flatten(1)
    lo = flat.min(1).values[:, None, None]
    shifted = maps - lo
    return shifted / (1e-7 + shifted.flatten(1).max(1).values[:, None, None])


# -- the contenders --------------------------------------------------------------------------------
class Contenders:
    """Callables ``batch (np + torch), classes → heatmaps np [N, 224, 224]`` for each library."""

    def __init__(self, net: torch.nn.Module, cam_path: Path, plain: onnx.ModelProto, threads: int,
                 cam_batch: int) -> None:
        from captum.attr import LayerAttribution, LayerGradCam
        from pytorch_grad_cam import AblationCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        from torchcam.methods import GradCAM as TorchcamGradCAM

        self.threads = threads
        self.onnxcam = Explainer(cam_path, providers=["CPUExecutionProvider"], intra_op_threads=threads,
                                 batch_size=cam_batch, head_batch_size=cam_batch)
        self.onnxcam_in_graph = Explainer(cam_path, providers=["CPUExecutionProvider"], intra_op_threads=threads,
                                          batch_size=cam_batch, in_graph=True)
        self.plain_ort = ort_session(plain, threads)
        self.target = ClassifierOutputTarget
        own = lambda: copy.deepcopy(net).eval()  # noqa: E731  (one network per library: no stray hooks)
        self.net_plain = own()
        n = own()
        self.pgc_gradcam = GradCAM(model=n, target_layers=[n.layer4])
        n = own()
        self.pgc_gradcampp = GradCAMPlusPlus(model=n, target_layers=[n.layer4])
        n = own()
        self.captum = LayerGradCam(n, n.layer4)
        self.interpolate = LayerAttribution.interpolate
        self.net_torchcam = own()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.torchcam = TorchcamGradCAM(self.net_torchcam, target_layer=TARGET_LAYER)
        n = own()
        self.pgc_ablation = AblationCAM(model=n, target_layers=[n.layer4], batch_size=cam_batch)
        n = own()
        self.pgc_score = ScoreCAM(model=n, target_layers=[n.layer4])
        self.pgc_score.batch_size = cam_batch

    # onnxcam
    def onnxcam_method(self, method: str):
        return lambda x, xt, c: self.onnxcam.explain(x, method, class_index=c).heatmaps

    def onnxcam_in_graph_method(self, method: str):
        return lambda x, xt, c: self.onnxcam_in_graph.explain(x, method, class_index=c).heatmaps

    def onnxcam_graph_only(self, x, xt, c):
        feeds = {self.onnxcam.info.image_input: x, "class_index": c}
        return self.onnxcam.runner.run(["logits", "target", "activations", "gradients"], feeds)

    # pytorch-grad-cam
    def pgc(self, cam):
        return lambda x, xt, c: cam(input_tensor=xt, targets=[self.target(int(k)) for k in c])

    # Captum
    def captum_gradcam(self, x, xt, c):
        attr = self.captum.attribute(xt, target=torch.from_numpy(c), relu_attributions=True)
        up = self.interpolate(attr, (SIZE, SIZE), interpolate_mode="bilinear")
        return minmax(up[:, 0].detach()).numpy()

    # torchcam
    def torchcam_gradcam(self, x, xt, c):
        scores = self.net_torchcam(xt)
        cams = self.torchcam([int(k) for k in c], scores)[0]  # [N, 7, 7], normalised
        up = F.interpolate(cams[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        return minmax(up[:, 0].detach()).numpy()

    # plain inference
    def ort_logits(self, x, xt, c):
        return self.plain_ort.run(["logits"], {"input": x})[0]

    def torch_forward(self, x, xt, c):
        with torch.inference_mode():
            return self.net_plain(xt).numpy()


# -- tables ----------------------------------------------------------------------------------------
def gradient_table(cont: Contenders, batches: list[int], runs: int, rounds: int, warmup: int) -> list[str]:
    rows = [  # (method family, library, callable, is a torch CAM peer)
        ("Grad-CAM", "**onnxcam** `gradcam`", cont.onnxcam_method("gradcam"), False),
        ("Grad-CAM", "onnxcam `gradcam`, heatmaps in-graph (`in_graph=True`)", cont.onnxcam_in_graph_method("gradcam"),
         False),
        ("Grad-CAM", "pytorch-grad-cam `GradCAM`", cont.pgc(cont.pgc_gradcam), True),
        ("Grad-CAM", "Captum `LayerGradCam` + `interpolate` + min-max", cont.captum_gradcam, True),
        ("Grad-CAM", "torchcam `GradCAM` + `interpolate` + min-max", cont.torchcam_gradcam, True),
        ("Grad-CAM++", "**onnxcam** `gradcam++`", cont.onnxcam_method("gradcam++"), False),
        ("Grad-CAM++", "onnxcam `gradcam++`, heatmaps in-graph (`in_graph=True`)",
         cont.onnxcam_in_graph_method("gradcam++"), False),
        ("Grad-CAM++", "pytorch-grad-cam `GradCAMPlusPlus`", cont.pgc(cont.pgc_gradcampp), True),
        ("reference", "onnxcam graph only (`session.run`, Grad-CAM outputs, no numpy)", cont.onnxcam_graph_only,
         False),
        ("reference", "plain inference, onnxruntime (logits only)", cont.ort_logits, False),
        ("reference", "plain inference, torch forward (`inference_mode`)", cont.torch_forward, False),
    ]
    lines = ["| batch | method | implementation | median (ms) | per image (ms) | onnxcam speed-up | max abs Δ vs onnxcam |",
             "|---:|---|---|---:|---:|---:|---:|"]
    rng = np.random.default_rng(0)
    verdicts = []
    for batch in batches:
        x = rng.standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
        xt = torch.from_numpy(x.copy())
        classes = (np.arange(batch, dtype=np.int64) * 97 + 295) % 1000
        reference = {fam: None for fam in ("Grad-CAM", "Grad-CAM++")}
        deltas: dict[int, str] = {}
        for i, (fam, _, fn, _) in enumerate(rows):
            out = fn(x, xt, classes)
            if fam in reference:
                if reference[fam] is None:
                    reference[fam] = out
                    deltas[i] = "—"
                else:
                    deltas[i] = f"{float(np.abs(np.asarray(out) - reference[fam]).max()):.1e}"
        medians = {i: float("inf") for i in range(len(rows))}
        for _ in range(rounds):
            for i, (_, _, fn, _) in enumerate(rows):
                t = statistics.median(time_calls(lambda: fn(x, xt, classes), runs, warmup))
                medians[i] = min(medians[i], t)
        for fam in ("Grad-CAM", "Grad-CAM++"):
            ours = next(i for i, r in enumerate(rows) if r[0] == fam and not r[3])
            peers = [i for i, r in enumerate(rows) if r[0] == fam and r[3]]
            fastest = min(peers, key=lambda i: medians[i])
            speedup = medians[fastest] / medians[ours]
            for i in peers:
                deltas.setdefault(i, "")
            verdicts.append(f"- batch {batch}, {fam}: onnxcam {medians[ours] * 1e3:.1f} ms vs fastest torch peer "
                            f"({rows[fastest][1]}) {medians[fastest] * 1e3:.1f} ms → **{speedup:.2f}×** "
                            f"(goal ≥ 2×: {'met' if speedup >= 2 else 'NOT met'})")
            in_graph = next(i for i, r in enumerate(rows) if r[0] == fam and "in-graph" in r[1])
            ratio = medians[in_graph] / medians[ours]
            verdicts.append(f"- batch {batch}, {fam}: heatmaps in-graph ÷ numpy = **{ratio:.3f}** on the CPU "
                            f"(goal: not slower, ≤ 1.05 within noise: {'met' if ratio <= 1.05 else 'NOT met'})")
        for i, (fam, name, _, is_peer) in enumerate(rows):
            if fam in reference and not is_peer:
                peers = [j for j, r in enumerate(rows) if r[0] == fam and r[3]]
                fastest = min(medians[j] for j in peers)
                speed = f"**{fastest / medians[i]:.2f}×** vs fastest peer"
            elif fam in reference:
                ours = next(j for j, r in enumerate(rows) if r[0] == fam and not r[3])
                speed = f"{medians[i] / medians[ours]:.2f}×"
            else:
                speed = ""
            lines.append(f"| {batch} | {fam} | {name} | {medians[i] * 1e3:.1f} | {medians[i] * 1e3 / batch:.1f} "
                         f"| {speed} | {deltas.get(i, '')} |")
    return lines + [""] + verdicts


def perturbation_table(cont: Contenders, runs: int, heavy_runs: int, warmup: int, quick: bool,
                       cam_batch: int) -> list[str]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    xt = torch.from_numpy(x.copy())
    classes = np.array([295], np.int64)
    A = cont.onnxcam.runner.run(["activations"], {"input": x, "class_index": classes})[0]
    live = int(A[0].reshape(A.shape[1], -1).any(axis=1).sum())

    def med(times: list[float]) -> float:
        return statistics.median(times)

    abl_ours = cont.onnxcam_method("ablationcam")
    t_abl_ours = med(time_calls(lambda: abl_ours(x, xt, classes), runs, warmup))
    out_abl = abl_ours(x, xt, classes)
    lines = ["| method | implementation | calls timed | median (s) | onnxcam speed-up | goal | max abs Δ vs onnxcam |",
             "|---|---|---:|---:|---:|---|---:|",
             f"| Ablation-CAM | **onnxcam** `ablationcam` (head only, `head_batch_size={cam_batch}`) | {runs} "
             f"| {t_abl_ours:.3f} | | | — |"]
    verdicts = []
    if quick:
        lines.append("| Ablation-CAM | pytorch-grad-cam `AblationCAM` | skipped (`--quick`) | | | ≥ 100× | |")
        lines.append("| Score-CAM | (skipped with `--quick`) | | | | faster | |")
        return lines + [""] + [f"- `--quick`: the minutes-long rows were skipped; live channels: {live}/{A.shape[1]}"]

    score_ours = cont.onnxcam_method("scorecam")
    pgc_abl, pgc_score = cont.pgc(cont.pgc_ablation), cont.pgc(cont.pgc_score)
    out_pgc_abl, out_score_ours, out_pgc_score = None, None, None
    t_pgc_abl, t_score_ours, t_pgc_score = [], [], []
    for _ in range(heavy_runs):  # interleaved: machine noise hits all three alike
        for fn, times, slot in ((pgc_abl, t_pgc_abl, "a"), (score_ours, t_score_ours, "o"),
                                (pgc_score, t_pgc_score, "s")):
            start = time.perf_counter()
            out = fn(x, xt, classes)
            times.append(time.perf_counter() - start)
            print(f"[{slot}] {times[-1]:.1f} s (load {load_average()})", file=sys.stderr, flush=True)
            if slot == "a":
                out_pgc_abl = out
            elif slot == "o":
                out_score_ours = out
            else:
                out_pgc_score = out
    abl_speed = med(t_pgc_abl) / t_abl_ours
    score_speed = med(t_pgc_score) / med(t_score_ours)
    d_abl = float(np.abs(out_pgc_abl - out_abl).max())
    d_score = float(np.abs(out_pgc_score - out_score_ours).max())
    lines += [
        f"| Ablation-CAM | pytorch-grad-cam `AblationCAM` (whole network per channel, `batch_size={cam_batch}`) "
        f"| {heavy_runs} | {med(t_pgc_abl):.2f} | **{abl_speed:.0f}×** | ≥ 100× "
        f"{'met' if abl_speed >= 100 else 'NOT met'} | {d_abl:.1e} |",
        f"| Score-CAM | **onnxcam** `scorecam` (`batch_size={cam_batch}`, {live} live of {A.shape[1]} channels) "
        f"| {heavy_runs} | {med(t_score_ours):.2f} | | | — |",
        f"| Score-CAM | pytorch-grad-cam `ScoreCAM` (`batch_size={cam_batch}`) | {heavy_runs} | {med(t_pgc_score):.2f} "
        f"| **{score_speed:.2f}×** | faster: {'met' if score_speed > 1 else 'NOT met'} | {d_score:.1e} |",
    ]
    verdicts.append(f"- Ablation-CAM: **{abl_speed:.0f}×** (goal ≥ 100×: {'met' if abl_speed >= 100 else 'NOT met'}); "
                    f"Score-CAM: **{score_speed:.2f}×** (goal > 1×: {'met' if score_speed > 1 else 'NOT met'})")
    return lines + [""] + verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--cam-batch", type=int, default=64, help="Ablation-/Score-CAM batch size (both libraries)")
    parser.add_argument("--heavy-runs", type=int, default=3, help="calls of the minutes-long rows")
    parser.add_argument("--quick", action="store_true", help="skip the minutes-long rows")
    parser.add_argument("--skip-gradients", action="store_true", help="only the Ablation-/Score-CAM table")
    args = parser.parse_args()
    if args.runs < 7:
        parser.error("--runs: the median of at least 7 runs")
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    import captum
    import pytorch_grad_cam  # noqa: F401
    import torchcam
    from importlib.metadata import version

    net = build_net()
    with tempfile.TemporaryDirectory() as tmp:
        exported, _ = export_with_target(copy.deepcopy(net), TARGET_LAYER, (3, SIZE, SIZE))
        proto = ir.to_proto(exported)  # the explanation pass below changes the IR model in place
        classifier = load_classifier(proto)
        spec = GraphSpec(classifier.model, classifier.image_input, classifier.logits, TARGET, MODEL, TARGET_LAYER,
                         PREPROCESS)
        cam_path = Path(tmp) / f"{MODEL}.cam.onnx"
        onnx.save(build_explanation_graph(spec, classifier.facts), str(cam_path))
        cont = Contenders(net, cam_path, plain_classifier(proto), args.threads, args.cam_batch)

        load_before = load_average()
        print(f"{MODEL} @ {TARGET_LAYER} (seeded random weights), CPU, {args.threads} threads for everyone; "
              f"onnxruntime {ort.__version__}, torch {torch.__version__}, grad-cam {version('grad-cam')}, "
              f"captum {captum.__version__}, torchcam {torchcam.__version__}; load average (1/5/15 min) at start "
              f"{load_before}\n")
        if not args.skip_gradients:
            print(f"### Grad-CAM / Grad-CAM++ (median of {args.runs} calls after {args.warmup} warm-up, lowest of "
                  f"{args.rounds} rounds)\n")
            print("\n".join(gradient_table(cont, [int(b) for b in args.batches.split(",")], args.runs, args.rounds,
                                           args.warmup)))
            print(f"\nGrad-CAM++ has one torch peer: Captum has no Grad-CAM++, torchcam 0.5's `GradCAMpp` is not "
                  f"Grad-CAM++. Load average after this table: {load_average()}\n")
        print("### Ablation-CAM / Score-CAM (batch 1)\n")
        print("\n".join(perturbation_table(cont, args.runs, args.heavy_runs, args.warmup, args.quick,
                                           args.cam_batch)))
        print(f"\nLoad average at the end: {load_average()}")


if __name__ == "__main__":
    main()
