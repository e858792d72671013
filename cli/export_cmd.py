"""``onnxcam export``: write a classifier's explanation graph (``*.cam.onnx``)."""
from __future__ import annotations

import click
from onnxcam.cli.common import fail, float_triplet, int_triplet, setup_logging
from onnxcam.models.contract import GraphMetadata
from onnxcam.models.formulas import FORMULAS


@click.command("export")
@click.argument("source")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Output .cam.onnx file.")
@click.option("--target-layer", help="Module name (torch) or tensor name (ONNX); default: chosen and printed.")
@click.option("--weights", type=click.Path(dir_okay=False), help="PyTorch state_dict file (.pt/.pth).")
@click.option("--input-shape", callback=int_triplet, help="C,H,W of one input image.")
@click.option("--opset", type=click.IntRange(17, 23), help="ONNX opset for PyTorch sources (default 18).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), help="Class names: .txt (one a line) or JSON list.")
@click.option("--mean", callback=float_triplet, help="Per-channel mean R,G,B (after scaling to 0..1).")
@click.option("--std", callback=float_triplet, help="Per-channel std R,G,B.")
@click.option("--resize", type=click.IntRange(0), help="Resize the short side to N before the centre crop (0: resize to the input size).")
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), help="Layout of the image input.")
@click.option("--bgr", is_flag=True, help="The model expects BGR channel order.")
@click.option("--verify", is_flag=True, help="Check the graph against torch.autograd (PyTorch sources).")
@click.option("--input-gradients", type=click.Choice(["plain", "guided", "both"]), is_flag=False,
              flag_value="both", default=None,
              help="Also output input_gradients (∂S/∂input; 'plain'), guided_gradients (Guided Backpropagation; "
                   "'guided') or both (the default when given without a value). Each costs one more reverse pass.")
@click.option("--heatmap", "heatmap", metavar="METHOD",
              help="Bake this CAM and its post-processing into the graph: output heatmap [N, H, W] "
                   f"({', '.join(FORMULAS)}).")
@click.option("--raw-input", is_flag=True,
              help="The image input takes uint8 NHWC RGB pixels [N, H, W, 3] at the model's input size; "
                   "the graph scales, normalises and reorders them itself.")
@click.option("--scores", metavar="OUTPUT",
              help="Which output holds the class scores (ONNX: an output name; torch: a ModelOutput/dict entry or "
                   "a tuple index); needed when several outputs could be the scores.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16: the classifier's forward pass in float16 (for GPUs); the outputs stay float32.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def export_command(source: str, out: str, target_layer: str | None, weights: str | None, input_shape,
                   opset: int | None, labels: str | None, mean, std, resize: int | None, layout: str | None,
                   bgr: bool, verify: bool, input_gradients: str | None, heatmap: str | None, raw_input: bool,
                   scores: str | None, precision: str, overwrite: bool, debug: bool) -> None:
    """Export SOURCE (torchvision:NAME, timm:NAME, package.module:callable, a registry name or an
    .onnx classifier) into an explanation graph with logits and target-layer gradients."""
    setup_logging(debug)
    try:
        from onnxcam.exporter import ExportError, export
    except ImportError as exc:
        fail(f"export needs the export extra: pip install 'onnxcam[export]' ({exc.name} is missing)", 2, debug)
    try:
        model = export(source, target_layer, weights=weights, input_shape=input_shape, opset=opset, labels=labels,
                       mean=mean, std=std, resize=resize, layout=layout, bgr=bgr, out=out, overwrite=overwrite,
                       verify=verify, input_gradients=input_gradients or False, heatmap=heatmap, raw_input=raw_input,
                       scores=scores, precision=precision)
    except ExportError as exc:
        fail(exc, 2, debug)
    except Exception as exc:  # an unexpected failure still gets one line
        fail(f"export failed: {type(exc).__name__}: {exc}".splitlines()[0], 2, debug)
    outputs = ", ".join(o.name for o in model.graph.output)
    meta = GraphMetadata.from_props({p.key: p.value for p in model.metadata_props})
    click.echo(f"exported {meta.source} → {out}")
    click.echo(f"  target layer: {meta.target_layer}; outputs: {outputs}")
    click.echo(f"  head piecewise linear: {str(meta.head_piecewise_linear).lower()}")
    if meta.heatmap_method:
        click.echo(f"  baked heatmap: {meta.heatmap_method} → output heatmap")
    if meta.raw_input:
        image = next(i for i in model.graph.input if i.name == meta.image_input)
        dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
        click.echo(f"  raw input: {image.name} uint8 {dims} (NHWC RGB pixels, normalised in the graph)")
