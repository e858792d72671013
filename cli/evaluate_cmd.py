"""``onnxcam evaluate``: faithfulness, localisation, complexity and sanity metrics of CAM methods on
a folder of images (``onnxcam.runtime.metrics``: the metrics, their ground truth and the reports)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from onnxcam.cli.dataset_cmd import engine_options, ray_options
from onnxcam.cli.common import (
    EXIT_PARTIAL,
    EXIT_USAGE,
    LazyHelp,
    Reporter,
    fail,
    make_explainer,
    own_output,
    parse_class,
    parse_methods,
    prepare_output_dir,
    provider_options,
    refuse_existing,
    save_png,
    save_text,
    setup_logging,
)


def parse_mask_values(values: tuple[str, ...]) -> tuple[int | None, dict[str, int]]:
    """``--mask-value`` entries → (default value or None, {stem: value})."""
    default: int | None = None
    per_stem: dict[str, int] = {}
    for value in values:
        stem, _, number = value.rpartition("=")
        try:
            v = int(number)
        except ValueError:
            fail(f"--mask-value takes V or STEM=V with an integer V, got {value!r}", EXIT_USAGE)
        if stem:
            per_stem[stem] = v
        else:
            default = v
    return default, per_stem


def list_images(data: Path, exclude: Path | None = None) -> list[Path]:
    """The images of DATA in name order: ground-truth ``*_mask`` files and, when ``exclude`` (the
    output directory) is DATA, the plots an earlier evaluation wrote there left out."""
    from onnxcam.runtime.images import IMAGE_EXTENSIONS

    def plot(name: str) -> bool:
        return name.startswith("curves_") and name.endswith(".png")

    return sorted(p for p in data.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS and not p.stem.lower().endswith("_mask")
                  and not own_output(p, exclude, plot))


def _metrics_help() -> str:
    from onnxcam.runtime.metrics.evaluate import GROUPS, METRICS

    return ("Comma-separated metrics or groups. Default: faithfulness and complexity, plus localisation when ground "
            "truth is present. " + "; ".join(f"{m.name}: {m.summary}" for m in METRICS.values())
            + f". Groups: {', '.join(GROUPS)}, all.")


def load_dataset(data: str, boxes_file: str | None, mask_values: tuple[str, ...], out: Path) -> Any:
    """DATA (a folder, or a .csv / .parquet manifest, local or a URI) as the runtime's
    ``EvaluationData``; one error line and exit 2 when it cannot be read."""
    from onnxcam.runtime.datasets import Source, storage
    from onnxcam.runtime.datasets.sources import SourceError
    from onnxcam.runtime.metrics.ground_truth import GroundTruthError, read_boxes
    from onnxcam.runtime.metrics.truth import EvaluationData

    mask_value, per_stem = parse_mask_values(mask_values)
    if storage.suffix(data) in (".csv", ".parquet") and (storage.is_uri(data) or Path(data).is_file()):
        if boxes_file:
            fail("--boxes goes with a folder of images; a manifest has its own boxes and mask columns", EXIT_USAGE)
        try:
            return EvaluationData.from_manifest(data, mask_value, per_stem)
        except SourceError as exc:
            fail(" ".join(str(exc).split()), EXIT_USAGE)
        except Exception as exc:  # noqa: BLE001  (an unreadable or corrupt file)
            fail(" ".join(f"{data}: cannot read the manifest ({type(exc).__name__}: {exc})".split()), EXIT_USAGE)
    folder = Path(data)
    if not folder.is_dir():
        fail(f"{data}: not a directory or a .csv / .parquet manifest (DATA is a folder of images or a manifest)",
             EXIT_USAGE)
    boxes_file = boxes_file or next((str(folder / n) for n in ("boxes.json", "boxes.csv") if (folder / n).is_file()),
                                    None)
    try:
        boxes = read_boxes(Path(boxes_file)) if boxes_file else {}
    except GroundTruthError as exc:
        fail(exc, EXIT_USAGE)
    return EvaluationData([Source(str(f)) for f in list_images(folder, exclude=out)], boxes, mask_value, per_stem)


def _run(explainer: Any, data: Any, sources: list, methods: list[str], metrics: list[str],
         class_index: int | None, options: Any, report: Reporter):
    """Evaluate every image on the dataset engine; images that fail get one error line each. → the aggregate."""
    from onnxcam.runtime.datasets.sources import relative_names
    from onnxcam.runtime.metrics.dataset import iter_evaluate
    from onnxcam.runtime.metrics.evaluate import METRICS, Aggregate
    from tqdm import tqdm

    need_gt = any(METRICS[m].ground_truth for m in metrics)
    aggregate, names = Aggregate(methods, metrics), relative_names([s.path for s in sources])
    items = iter_evaluate(explainer, sources, methods, metrics,
                          lambda source: data.load(explainer, source, need_gt), class_index, options)
    with tqdm(total=len(sources), desc="evaluating", unit="img", file=sys.stderr, leave=False, dynamic_ncols=True,
              disable=None) as bar:
        for item in items:
            if item.error is not None:
                report.error(item.error)
                bar.set_postfix(failed=report.failed, refresh=False)
            else:
                aggregate.add_image(names[item.index], item.results)
            bar.update(1)
    return aggregate


def _run_to_parquet(explainer: Any, model: str, data: Any, sources: list, methods: list[str],
                    metrics: list[str], class_index: int | None, options: Any, report: Reporter, out: str,
                    shard_size: int, overwrite: bool, debug: bool, ray: Any = None):
    """``_run`` with the rows kept in the Parquet dataset ``out`` (resumed when it holds this run;
    on Ray Data with ``ray``)."""
    from onnxcam.cli.dataset_cmd import count_earlier_failures, file_digest, parquet_run
    from onnxcam.runtime.metrics.dataset import evaluate_to_parquet
    from onnxcam.runtime.metrics.evaluate import METRICS
    from onnxcam.runtime.metrics.truth import Loader

    need_gt = any(METRICS[m].ground_truth for m in metrics)
    with parquet_run("evaluating", len(sources), out, report, debug) as progress:
        summary, aggregate = evaluate_to_parquet(
            explainer, sources, out, methods, metrics, Loader(data, need_gt), class_index, options,
            shard_size=shard_size, overwrite=overwrite, parameters={"model_sha256": file_digest(model)},
            progress=progress, ray=ray)
    if summary.skipped_shards:
        click.echo(f"{summary.skipped_shards} shard(s) of {out} already done; the summary covers them too", err=True)
    count_earlier_failures(summary, out, report)
    return aggregate


def report_files(out_dir: Path, methods: list[str], metrics: list[str]) -> list[Path]:
    """Every file the evaluation writes."""
    from onnxcam.runtime.metrics import report as R

    curves = [out_dir / R.curve_file_name(m) for m in methods] if {"deletion", "insertion"} & set(metrics) else []
    return [out_dir / "per_image.csv", out_dir / "metrics.json", out_dir / "metrics.md", *curves]


def _write_reports(aggregate: Any, out_dir: Path, overwrite: bool, debug: bool) -> str:
    from onnxcam.models.files import OutputError
    from onnxcam.runtime.metrics import report as R

    summary = aggregate.summary()
    table = R.markdown_table(summary, aggregate.metrics, aggregate.images)
    try:
        save_text(R.per_image_csv(aggregate), out_dir / "per_image.csv", overwrite)
        save_text(R.summary_json(summary), out_dir / "metrics.json", overwrite)
        save_text(table, out_dir / "metrics.md", overwrite)
        for method, plot in R.curve_plots(aggregate).items():
            save_png(plot, out_dir / R.curve_file_name(method), overwrite)
    except OutputError as exc:
        fail(exc, EXIT_USAGE, debug)
    except OSError as exc:
        fail(f"{out_dir}: cannot write results ({exc.strerror or exc})", EXIT_USAGE, debug)
    return table


@click.command("evaluate", short_help="Faithfulness, localisation and complexity metrics on a folder of images.")
@click.argument("model", metavar="MODEL.cam.onnx")
@click.argument("data", metavar="DATA")
@click.option("-m", "--methods", "--method", "methods", multiple=True, metavar="NAME",
              help="CAM methods to compare (repeatable or comma-separated; 'all'). Default: gradcam.")
@click.option("--metrics", default=None, metavar="LIST", cls=LazyHelp, help_text=_metrics_help)
@click.option("-o", "--out", default="onnxcam-eval", show_default=True, help="Output directory (created if missing).")
@click.option("--boxes", "boxes_file", default=None, type=click.Path(dir_okay=False),
              help="Ground-truth boxes, JSON or CSV (default: DATA/boxes.json or DATA/boxes.csv when present).")
@click.option("--mask-value", "mask_values", multiple=True, metavar="[STEM=]V",
              help="Object pixel value in <stem>_mask.png ground-truth masks (default: any non-zero pixel); "
                   "STEM=V for one image (repeatable).")
@click.option("-c", "--class", "class_", default="top1", show_default=True, metavar="top1|INDEX",
              help="Class to explain and score: each image's top-1 class, or one index for all images.")
@click.option("--percent", type=click.FloatRange(0, 100, min_open=True), default=25.0, show_default=True,
              help="k of drop_topk and topk_iou: the top k % most salient pixels.")
@click.option("--step", type=click.IntRange(1), default=224, show_default=True,
              help="Pixels moved per step of the deletion / insertion curves (RISE: 224).")
@click.option("--tolerance", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Pointing-game tolerance in photo pixels (the original protocol uses 15).")
@click.option("--road-noise", type=click.FloatRange(0), default=0.01, show_default=True,
              help="Standard deviation of the noise added by ROAD's imputation (seeded).")
@click.option("--randomise-layers", type=click.IntRange(1), default=10**9, show_default="all",
              help="Sanity metrics: how many layers to re-draw, from the top (cascading).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate at most N images (in name order).")
@click.option("-b", "--batch-size", type=click.IntRange(1), default=16, show_default=True,
              help="Images per graph run, also the perturbed images per run of the metrics.")
@click.option("--overwrite", is_flag=True, help="Replace existing result files (never replaced otherwise).")
@click.option("--parquet", "parquet", metavar="DIR", default=None,
              help="Also keep the per-image rows as a sharded Parquet dataset in DIR (scores/, errors/); a rerun "
                   "resumes, and the summary covers every shard.")
@click.option("--shard-size", type=click.IntRange(1), default=256, show_default=True,
              help="With --parquet: images per Parquet file.")
@engine_options
@provider_options
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def evaluate_command(model: str, data: str, methods: tuple[str, ...], metrics: str | None, out: str,
                     boxes_file: str | None, mask_values: tuple[str, ...], class_: str, percent: float, step: int,
                     tolerance: float, road_noise: float, randomise_layers: int, limit: int | None, batch_size: int,
                     overwrite: bool, parquet: str | None, shard_size: int, engine: str, ray_address: str | None,
                     actors: int, cpus_per_actor: float, gpus_per_actor: float, providers: Any, threads: int | None,
                     debug: bool) -> None:
    """Evaluate CAM methods of an explanation graph on the images in DATA: a folder, or a .csv /
    .parquet manifest (path, optional class, boxes as JSON [[x_min, y_min, x_max, y_max], ...] and
    mask; local or a pyarrow.fs URI).

    Writes OUT/per_image.csv (one row per image and method), OUT/metrics.json
    ({method: {metric: mean}}, with win_vs_<other> = Win % when several methods are compared),
    OUT/metrics.md (the same as a Markdown table, also printed) and OUT/curves_<method>.png
    (mean deletion / insertion curves); existing results are replaced only with --overwrite. Images
    that cannot be read, or lack valid ground truth
    when a localisation metric is asked for, get one error line and are left out. Exit status:
    0 all done, 1 some images failed, 2 usage or model errors.
    """
    setup_logging(debug)
    from onnxcam.runtime import ClassIndexError, ModelError
    from onnxcam.runtime.metrics.evaluate import (
        EvaluationOptions,
        check_evaluable,
        default_metrics,
        resolve_metrics,
    )

    method_list = parse_methods(methods, family_only=True)
    class_index = parse_class(class_)
    dataset = load_dataset(data, boxes_file, mask_values, Path(out))
    try:
        metric_list = resolve_metrics(metrics.split(",")) if metrics is not None else \
            default_metrics(dataset.has_ground_truth())
    except ValueError as exc:
        fail(exc, EXIT_USAGE)
    explainer = make_explainer(model, providers, threads, batch_size, debug, spinning=False)  # decoders beside it
    try:
        check_evaluable(explainer, method_list, metric_list)
    except ModelError as exc:
        fail(exc, EXIT_USAGE, debug)
    refuse_existing(report_files(Path(out), method_list, metric_list), overwrite)
    out_dir = prepare_output_dir(out, debug)
    report = Reporter(debug)
    if not dataset.sources:
        report.error(f"{data}: directory has no images (*_mask files are ground truth)")
        sys.exit(EXIT_PARTIAL)
    files = dataset.sources[:limit] if limit is not None else dataset.sources
    options = EvaluationOptions(percent, step, tolerance, road_noise, randomise_layers, batch_size)
    try:
        if parquet is None:
            aggregate = _run(explainer, dataset, files, method_list, metric_list, class_index, options, report)
        else:
            ray = ray_options(engine, ray_address, actors, cpus_per_actor, gpus_per_actor, debug)
            aggregate = _run_to_parquet(explainer, model, dataset, files, method_list, metric_list, class_index,
                                        options, report, parquet, shard_size, overwrite, debug, ray)
    except (ClassIndexError, ModelError) as exc:
        fail(exc, EXIT_USAGE, debug)
    if aggregate.images:
        click.echo(_write_reports(aggregate, out_dir, overwrite, debug), nl=False)
    line = f"evaluated {aggregate.images} of {len(files)} image{'s' if len(files) != 1 else ''} with " \
           f"{', '.join(method_list)}" + (f": results in {out_dir}" if aggregate.images else "")
    if report.failed:
        line += f"; {report.failed} failed (see the error lines)"
    click.echo(line)
    if report.failed:
        sys.exit(EXIT_PARTIAL)
