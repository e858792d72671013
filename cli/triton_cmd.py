"""``onnxcam triton-repo``: a Triton Inference Server model repository for an explanation graph."""
from __future__ import annotations

import click
from onnxcam.cli.common import EXIT_USAGE, fail, setup_logging


def _sizes(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is None:
        return None
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got '{value}'") from None
    if not sizes:
        raise click.BadParameter("expected at least one batch size")
    return sizes


@click.command("triton-repo", short_help="Write a Triton model repository for an explanation graph.")
@click.argument("model", metavar="MODEL.cam.onnx")
@click.option("-o", "--out", required=True, help="Repository directory (created if missing).")
@click.option("--name", help="Model name (directory) in the repository; default: MODEL without .cam.onnx.")
@click.option("--max-batch-size", type=int, default=None,
              help="Triton max_batch_size; default 8, or 0 (no batching) when the graph's batch axis is fixed.")
@click.option("--preferred-batch-sizes", callback=_sizes,
              help="dynamic_batching preferred sizes, comma-separated; default: max/2 and max.")
@click.option("--max-queue-delay-us", type=int, default=100, show_default=True,
              help="dynamic_batching max_queue_delay_microseconds.")
@click.option("--instances", type=int, default=1, show_default=True, help="instance_group count.")
@click.option("--kind", type=click.Choice(["KIND_CPU", "KIND_GPU"], case_sensitive=False), default="KIND_CPU",
              show_default=True, help="instance_group kind.")
@click.option("--tensorrt", is_flag=True,
              help="Run the graph with TensorRT (an optimization block: engine cache, a profile up to "
                   "max_batch_size); needs --kind KIND_GPU.")
@click.option("--fp16", is_flag=True, help="With --tensorrt: let TensorRT use fp16 kernels (precision_mode FP16).")
@click.option("--tensorrt-cache", metavar="DIR", default="/tmp/onnxcam-tensorrt", show_default=True,
              help="With --tensorrt: the engine cache directory inside the Triton server.")
@click.option("--overwrite", is_flag=True, help="Replace DIR/NAME if it exists.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def triton_command(model: str, out: str, name: str | None, max_batch_size: int | None,
                   preferred_batch_sizes: tuple[int, ...] | None, max_queue_delay_us: int, instances: int,
                   kind: str, tensorrt: bool, fp16: bool, tensorrt_cache: str, overwrite: bool,
                   debug: bool) -> None:
    """Write OUT/NAME/config.pbtxt and OUT/NAME/1/model.onnx for Triton's onnxruntime backend
    (platform onnxruntime_onnx): every graph input and output with its TYPE_* and dims, dynamic
    batching and an instance group. A graph with a fixed batch axis gets max_batch_size 0 (an
    explicit --max-batch-size > 0 is refused). Ablation-CAM's head_logits path is kept only without
    batching."""
    setup_logging(debug)
    from onnxcam.runtime.tensorrt import TensorRTSettings
    from onnxcam.runtime.triton_repo import (
        TritonRepoError,
        check_target_dir,
        default_model_name,
        plan_config,
        write_repository,
    )

    if fp16 and not tensorrt:
        fail("--fp16 goes with --tensorrt (it is TensorRT's precision mode)", EXIT_USAGE, debug)
    try:
        check_target_dir(out, name if name is not None else default_model_name(model), overwrite)  # before the load
        cfg = plan_config(model, name=name, max_batch_size=max_batch_size, instances=instances, kind=kind,
                          preferred_batch_sizes=preferred_batch_sizes, max_queue_delay_us=max_queue_delay_us,
                          tensorrt=TensorRTSettings(fp16=fp16, cache_dir=tensorrt_cache) if tensorrt else None)
        target = write_repository(model, out, cfg, overwrite=overwrite)
    except TritonRepoError as exc:
        fail(exc, EXIT_USAGE, debug)
    except Exception as exc:  # an unexpected failure still gets one line
        fail(f"triton-repo failed: {type(exc).__name__}: {exc}".splitlines()[0], EXIT_USAGE, debug)
    for note in cfg.notes:
        click.echo(f"note: {note}", err=True)
    batching = (f"max_batch_size {cfg.max_batch_size}, dynamic batching (preferred "
                f"{', '.join(map(str, cfg.preferred_batch_sizes))}, delay {cfg.max_queue_delay_us} µs)"
                if cfg.max_batch_size else "max_batch_size 0 (no batching)")
    click.echo(f"wrote {target}: config.pbtxt, 1/model.onnx" + (", labels.txt" if cfg.labels else ""))
    click.echo(f"  inputs: {', '.join(t.name for t in cfg.inputs)}; outputs: {', '.join(t.name for t in cfg.outputs)}")
    click.echo(f"  {batching}; {cfg.instances} × {cfg.kind}" + ("; TensorRT" + (" fp16" if fp16 else "")
                                                                   if cfg.tensorrt else ""))
