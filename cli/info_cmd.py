"""``onnxcam info``: what an explanation graph contains and how it would run here."""
from __future__ import annotations

import json
import os
from typing import Any

import click
from onnxcam.cli.common import make_explainer, providers_option, setup_logging


def _shape(shape: Any) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def describe(explainer: Any) -> dict[str, Any]:
    """Everything ``info`` prints, as JSON-able values."""
    from onnxcam.models.contract import INPUT_GRADIENT_OUTPUTS

    info = explainer.info
    pre = info.preprocess
    return {
        "file": info.path,
        "size_bytes": os.path.getsize(info.path),
        "format": info.metadata.format,
        "source": info.source or None,
        "target_layer": info.target_layer or None,
        "image_input": info.image_input,
        "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in info.inputs],
        "outputs": [{"name": o.name, "shape": list(o.shape), "dtype": o.dtype} for o in info.output_info],
        "preprocess": None if pre is None else pre.to_dict(),
        "num_classes": info.num_classes,
        "labels": None if info.labels is None else len(info.labels),
        "head_piecewise_linear": info.piecewise_linear,
        "target_layout": info.metadata.target_layout.to_dict(),
        "gradients_straight_through": info.metadata.straight_through,
        "ablationcam_head": info.head_input is not None,
        "head_input": info.head_input,
        "methods": list(explainer.available_methods),
        "raw_input": info.raw_input,
        "heatmap_method": info.heatmap_method,
        "input_gradient_outputs": [o for o in INPUT_GRADIENT_OUTPUTS if o in info.outputs],
        "input_gradient_switches": info.input_gradient_switches,
        "providers": list(explainer.providers),
        "producer": info.producer or None,
    }


def _layout_text(layout: dict[str, Any]) -> str:
    if layout["layout"] == "tokens":
        h, w = layout["grid"]
        return f"tokens: {layout['prefix']} prefix + {h}x{w} grid → activations NCHW"
    return layout["layout"] + ("" if layout["layout"] == "NCHW" else " → activations NCHW")


def _text(d: dict[str, Any]) -> str:
    def io_lines(items: list[dict]) -> list[str]:
        width = max(len(i["name"]) for i in items)
        return [f"  {i['name'].ljust(width)}  {i['dtype']:<7}  {_shape(i['shape'])}" for i in items]

    pre = d["preprocess"]
    if pre is None:
        pre_line = "none (the CLI cannot read image files for this model)"
    else:
        resize = f"short side → {pre['resize']}, centre crop" if pre["resize"] else "resize"
        pre_line = (f"{pre['layout']} {pre['color']}, {resize} {pre['size'][0]}x{pre['size'][1]}, "
                    f"x = (pixels·{pre['scale']:.6g} − mean) / std, mean {pre['mean']}, std {pre['std']}")
    flag = d["head_piecewise_linear"]
    flag_text = "unknown" if flag is None else (
        "yes (Grad-CAM++ higher-order terms exact)" if flag else "no (Grad-CAM++ terms are the standard approximation)")
    head_text = (f"present ({d['head_input']} → head_logits)" if d["ablationcam_head"]
                 else "absent (ablationcam unavailable)")
    labels = f"{d['labels']} class names" if d["labels"] is not None else "none"
    image = next((i for i in d["inputs"] if i["name"] == d["image_input"]), None)
    raw_text = (f"yes ({d['image_input']} takes uint8 RGB pixels {_shape(image['shape']) if image else ''}; "
                "the graph scales, normalises and reorders them)" if d["raw_input"] else "no (preprocessed float input)")
    baked_text = f"{d['heatmap_method']} (output heatmap)" if d["heatmap_method"] else "none"
    switches = d["input_gradient_switches"]
    passes = ", ".join(f"{o} (computed only while input {switches[o]} is true, its default)" if o in switches
                       else f"{o} (computed on every call: no switch input)" for o in d["input_gradient_outputs"])
    lines = [
        f"file:              {d['file']} ({d['size_bytes'] / 1e6:.2f} MB, onnxcam format {d['format']})",
        f"source:            {d['source'] or '-'}",
        f"target layer:      {d['target_layer'] or '-'}",
        "inputs:", *io_lines(d["inputs"]),
        "outputs:", *io_lines(d["outputs"]),
        f"preprocessing:     {pre_line}",
        f"raw input:         {raw_text}",
        f"baked heatmap:     {baked_text}",
        f"input gradients:   {passes or 'none'}",
        f"classes:           {d['num_classes'] if d['num_classes'] is not None else '?'}; labels: {labels}",
        f"piecewise linear:  {flag_text}",
        f"target layout:     {_layout_text(d['target_layout'])}",
        f"gradients:         {'straight-through (the head quantizes)' if d['gradients_straight_through'] else 'exact'}",
        f"ablationcam head:  {head_text}",
        f"methods:           {', '.join(d['methods'])}",
        f"providers:         {', '.join(d['providers'])}",
    ]
    return "\n".join(lines)


@click.command("info", short_help="Describe an explanation graph (.cam.onnx).")
@click.argument("model", metavar="MODEL.cam.onnx")
@providers_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def info_command(model: str, providers: Any, as_json: bool, debug: bool) -> None:
    """Show an explanation graph's inputs, outputs, source, target layer, preprocessing, labels,
    piecewise-linear flag, ablationcam head path and the execution providers it would use."""
    setup_logging(debug)
    explainer = make_explainer(model, providers, None, 1, debug)
    d = describe(explainer)
    click.echo(json.dumps(d, indent=2) if as_json else _text(d))
