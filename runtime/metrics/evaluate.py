"""Evaluating explanation methods: the metric registry, one batch at a time, aggregated exactly.

Each metric is one entry (name, group, which direction is better, whether it needs ground truth,
and a function giving one value per image). :func:`evaluate_batch` explains a batch with every
method in one graph run and computes the metrics asked for, sharing work between metrics of the
same method (the confidence scores of x ⊙ map feed three metrics, ROAD's scores three more);
:class:`Aggregate` keeps every per-image value, so the summary is the mean over all images (not
a mean of batch means) and Win % compares methods image by image.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxcam.models.errors import param
from onnxcam.runtime.images import Geometry, heatmap_to_original
from onnxcam.runtime.metrics import faithfulness as F
from onnxcam.runtime.metrics import localisation as L
from onnxcam.runtime.metrics.road import road_scores

GROUPS = ("faithfulness", "road", "localisation", "complexity", "sanity")


@dataclass(frozen=True)
class EvaluationOptions:
    """``percent``: k of drop_topk / topk_iou (the top k % pixels); ``step``: pixels moved per
    deletion / insertion step; ``tolerance``: pointing-game tolerance in photo pixels;
    ``road_noise``: σ of ROAD's imputation noise; ``randomise_layers``: how many layers the sanity
    metrics re-draw from the top; ``batch_size``: perturbed images per graph run."""

    percent: float = 25.0
    step: int = 224
    tolerance: float = 0.0
    road_noise: float = 0.01
    randomise_layers: int = 10**9
    batch_size: int = 16


@dataclass
class MetricContext:
    """One method's maps on one batch, and the work its metrics share."""

    explainer: Any
    method: str
    x: np.ndarray
    maps: np.ndarray                 # heatmaps [N, H, W] in [0, 1]
    classes: np.ndarray              # the class explained per image
    geometries: Sequence[Geometry | None]
    ground_truth: Sequence[np.ndarray | None]
    options: EvaluationOptions
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    _shared: dict[str, Any] = field(default_factory=dict)

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]

    def confidence(self) -> tuple[np.ndarray, np.ndarray]:
        """(y, o): the class probability of x and of x ⊙ map."""
        y, o, _ = self.shared("cam_mult", lambda: F.cam_mult_scores(
            self.explainer, self.x, self.maps, self.classes, batch_size=self.options.batch_size))
        return y, o

    def road(self, order: str) -> np.ndarray:
        return self.shared(f"road_{order}", lambda: road_scores(
            self.explainer, self.x, self.maps, order, class_index=self.classes, noise=self.options.road_noise,
            seed=0, batch_size=self.options.batch_size).mean(axis=1))

    def on_photo(self) -> list[np.ndarray]:
        """The maps mapped back onto the original photos (localisation compares there)."""
        return self.shared("on_photo", lambda: [heatmap_to_original(h, g) for h, g in zip(self.maps, self.geometries)])

    def curve(self, kind: str) -> np.ndarray:
        fn = F.deletion_curve if kind == "deletion" else F.insertion_curve
        self.curves[kind] = fn(self.explainer, self.x, self.maps, self.classes, step=self.options.step,
                               batch_size=self.options.batch_size)
        return self.curves[kind]

    def randomisation(self):
        from onnxcam.runtime.metrics.sanity import model_randomisation

        return self.shared("randomisation", lambda: model_randomisation(
            self.explainer.info.path, self.x, self.method, self.classes, steps=[self.options.randomise_layers],
            seed=0, providers=self.explainer.providers, batch_size=self.options.batch_size))


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``compute(context)`` → float64 [N], one value per image."""

    name: str
    group: str
    better: str                      # "↑" higher is better, "↓" lower is better
    summary: str
    compute: Callable[[MetricContext], np.ndarray]
    ground_truth: bool = False


METRICS: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec) -> MetricSpec:
    if spec.name in METRICS or spec.group not in GROUPS:
        raise ValueError(f"metric {spec.name!r}: a new name and a group of {GROUPS}")
    METRICS[spec.name] = spec
    return spec


def metric_names(group: str | None = None) -> tuple[str, ...]:
    return tuple(m.name for m in METRICS.values() if group is None or m.group == group)


def _per_photo(fn: Callable[[np.ndarray, np.ndarray, MetricContext], float]) -> Callable[[MetricContext], np.ndarray]:
    return lambda c: np.asarray([fn(h, gt, c) for h, gt in zip(c.on_photo(), c.ground_truth)], np.float64)


for _spec in (
    MetricSpec("confidence_change", "faithfulness", "↑", "p(x ⊙ map) − p(x) (seed method 1)",
               lambda c: c.confidence()[1] - c.confidence()[0]),
    MetricSpec("drop_topk", "faithfulness", "↓", "100·(p after removing the top --percent % pixels − p)/p (seed method 2)",
               lambda c: F.remove_top_percent(c.explainer, c.x, c.maps, c.options.percent, c.classes, relative=True,
                                              batch_size=c.options.batch_size)),
    MetricSpec("average_drop", "faithfulness", "↓", "Average Drop % (Grad-CAM++)",
               lambda c: 100.0 * F.relative_drop(*c.confidence())),
    MetricSpec("increase_in_confidence", "faithfulness", "↑", "Increase in Confidence % (Grad-CAM++)",
               lambda c: 100.0 * (c.confidence()[1] > c.confidence()[0])),
    MetricSpec("deletion", "faithfulness", "↓", "RISE deletion AUC", lambda c: F.auc(c.curve("deletion"))),
    MetricSpec("insertion", "faithfulness", "↑", "RISE insertion AUC", lambda c: F.auc(c.curve("insertion"))),
    MetricSpec("road_morf", "road", "↓", "ROAD, most relevant first (noisy linear imputation, p = 10..90)",
               lambda c: c.road("morf")),
    MetricSpec("road_lerf", "road", "↑", "ROAD, least relevant first", lambda c: c.road("lerf")),
    MetricSpec("road_combined", "road", "↑", "ROAD (LeRF − MoRF)/2", lambda c: (c.road("lerf") - c.road("morf")) / 2),
    MetricSpec("topk_iou", "localisation", "↑", "IoU of the top --percent % box with the ground truth (seed method 3)",
               _per_photo(lambda h, gt, c: L.topk_box_iou(h, gt, c.options.percent)[0]), ground_truth=True),
    MetricSpec("pointing_game", "localisation", "↑", "hit = 1 when the map's maximum lies on the object",
               _per_photo(lambda h, gt, c: float(L.pointing_game(h, gt, c.options.tolerance)[0])), ground_truth=True),
    MetricSpec("energy_pointing_game", "localisation", "↑", "share of the map's mass on the object",
               _per_photo(lambda h, gt, c: L.energy_pointing_game(h, gt)[0]), ground_truth=True),
    MetricSpec("box_localisation", "localisation", "↑", "Grad-CAM localisation (15 % threshold, largest segment, "
               "IoU ≥ 0.5 → 1)", _per_photo(lambda h, gt, c: float(L.box_localisation(h, gt)[1][0])),
               ground_truth=True),
    MetricSpec("sparsity", "complexity", "↑", "max / mean of the map", lambda c: L.sparsity(c.maps)),
    MetricSpec("gini", "complexity", "↑", "Gini index of the map", lambda c: L.gini(c.maps)),
    MetricSpec("randomisation_spearman", "sanity", "↓", "Spearman correlation with the map of the model with its top "
               "--randomise-layers layers re-drawn (needs onnx)", lambda c: c.randomisation().spearman[-1]),
    MetricSpec("randomisation_ssim", "sanity", "↓", "SSIM with that map", lambda c: c.randomisation().ssim[-1]),
):
    register_metric(_spec)


def default_metrics(has_ground_truth: bool) -> list[str]:
    """faithfulness and complexity, and localisation when there is ground truth."""
    groups = ("faithfulness", "complexity") + (("localisation",) if has_ground_truth else ())
    return [m.name for m in METRICS.values() if m.group in groups]


def resolve_metrics(names: Sequence[str]) -> list[str]:
    """Metric names and group names (``all`` for every metric) → metric names, in order; a
    ValueError names the first unknown one."""
    out: list[str] = []
    for name in (n.strip().lower().replace("-", "_") for n in names):
        group = {"localization": "localisation"}.get(name, name)
        if group == "all":
            out.extend(METRICS)
        elif group in GROUPS:
            out.extend(metric_names(group))
        elif name in METRICS:
            out.append(name)
        elif name:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)} (or {', '.join(GROUPS)}, all)")
    if not out:
        raise ValueError("no metric given")
    return list(dict.fromkeys(out))


@dataclass
class ImageScores:
    """One image's results for one method: the metric values, the class explained, its deletion /
    insertion curves, and the relative drop in confidence (for Win %; None with one method)."""

    values: dict[str, float]
    class_index: int
    curves: dict[str, np.ndarray]
    drop: float | None


@dataclass
class BatchResult:
    """Per method: ``values`` {metric: float64 [N]}, the class explained, the deletion / insertion
    curves, and the relative drops in confidence (for Win %)."""

    values: dict[str, dict[str, np.ndarray]]
    classes: dict[str, np.ndarray]
    curves: dict[str, dict[str, np.ndarray]]
    drops: dict[str, np.ndarray]

    def image(self, j: int) -> dict[str, ImageScores]:
        """Image ``j``'s results, per method."""
        return {m: ImageScores({k: float(v[j]) for k, v in self.values[m].items()}, int(self.classes[m][j]),
                               {kind: curve[j] for kind, curve in self.curves[m].items()},
                               float(self.drops[m][j]) if m in self.drops else None)
                for m in self.values}


def check_evaluable(explainer: Any, methods: Sequence[str], metrics: Sequence[str]) -> None:
    """Raise ModelError when the metrics cannot run on this graph with these methods: they perturb
    the normalised float input (not a raw-pixel graph), read images (the preprocessing metadata),
    and the sanity metrics rewrite weights (onnx)."""
    from onnxcam.runtime.errors import ModelError

    if explainer.info.raw_input:
        raise ModelError(f"{explainer.info.path} takes raw uint8 pixels (exported with {param('raw_input', True)}); "
                         "the metrics perturb the normalised float input, so evaluate a graph exported without it")
    explainer.preprocessing()
    explainer.method_specs(list(methods))
    if any(METRICS[m].group == "sanity" for m in metrics):
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise ModelError("the sanity metrics (randomisation_*) need the onnx package to rewrite weights: "
                             "pip install onnx") from None


def evaluate_batch(explainer: Any, x: np.ndarray, geometries: Sequence[Geometry | None],
                   ground_truth: Sequence[np.ndarray | None], methods: Sequence[str], metrics: Sequence[str],
                   class_index: Any = None, options: EvaluationOptions = EvaluationOptions()) -> BatchResult:
    """Explain ``x`` with every method (one graph run) and compute ``metrics`` for each."""
    explained = explainer.explain_many(x, methods=list(methods), class_index=class_index)
    result = BatchResult({}, {}, {}, {})
    for method in methods:
        res = explained[method]
        ctx = MetricContext(explainer, method, x, res.heatmaps, res.class_index, geometries, ground_truth, options)
        result.values[method] = {m: np.asarray(METRICS[m].compute(ctx), np.float64) for m in metrics}
        result.classes[method] = res.class_index
        result.curves[method] = ctx.curves
        if len(methods) > 1:
            result.drops[method] = F.relative_drop(*ctx.confidence())
    return result


class Aggregate:
    """Every image's values over any number of batches; the summary is their exact mean."""

    def __init__(self, methods: Sequence[str], metrics: Sequence[str]) -> None:
        self.methods, self.metrics = list(methods), list(metrics)
        self.values = {m: {k: [] for k in metrics} for m in methods}
        self.drops: dict[str, list[float]] = {m: [] for m in methods}
        self.curves: dict[str, dict[str, list[np.ndarray]]] = {m: {} for m in methods}
        self.rows: list[list] = []   # image, method, class, metric values...
        self.images = 0

    def add(self, names: Sequence[str], batch: BatchResult) -> None:
        for j, name in enumerate(names):
            self.add_image(name, batch.image(j))

    def add_image(self, name: str, scores: dict[str, ImageScores]) -> None:
        """One image's results (per method)."""
        self.images += 1
        for m in self.methods:
            s = scores[m]
            for k in self.metrics:
                self.values[m][k].append(s.values[k])
            if s.drop is not None:
                self.drops[m].append(s.drop)
            for kind, curve in s.curves.items():
                self.curves[m].setdefault(kind, []).append(np.asarray(curve)[None])
            self.rows.append([name, m, s.class_index] + [s.values[k] for k in self.metrics])

    def summary(self) -> dict[str, dict[str, float | None]]:
        """{method: {metric: mean over every image (non-finite values left out)}}, and with several
        methods ``win_vs_<other>``: Win % of each method against each other one."""
        out = {m: {k: _mean(self.values[m][k]) for k in self.metrics} for m in self.methods}
        if len(self.methods) > 1:
            for a in self.methods:
                for b in self.methods:
                    if a != b:
                        out[a][f"win_vs_{b}"] = F.win_percent(self.drops[a], self.drops[b])
        return out

    def mean_curves(self) -> dict[str, dict[str, np.ndarray]]:
        return {m: {k: np.mean(np.concatenate(c), axis=0) for k, c in kinds.items()} for m, kinds in self.curves.items()
                if kinds}


def _mean(values: list[float]) -> float | None:
    a = np.asarray(values, np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None
