"""``export --precision fp16``: the classifier's forward pass in float16, for GPUs.

Before the classifier is differentiated, its float32 weights and tensors become float16 with
onnxcam-independent, well-kept tooling (onnxconverter-common's ``convert_float_to_float16``,
``keep_io_types``: the image input and the class scores stay float32, with a Cast at each
boundary; operators it knows to be unsafe in float16, such as Resize or TopK, stay float32). The
exporter then builds the reverse pass in the model's own dtype, as for any fp16 classifier, and
outputs ``activations``, ``gradients`` and the exponential-score powers in float32, where the
cubes and the Grad-CAM++ ratios are computed (in float16 they would underflow).
"""
from __future__ import annotations

import warnings

import onnx_ir as ir
from onnxcam.exporter.errors import ExportError

PRECISIONS = ("fp32", "fp16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ExportError(f"--precision {precision}: choose from {', '.join(PRECISIONS)}")
    return precision


def is_float32(model: ir.Model) -> bool:
    """Whether the classifier computes in float32 (its image input or its weights are float32)."""
    floats = [v.dtype for v in model.graph.initializers.values() if v.dtype is not None and v.dtype.is_floating_point()]
    return ir.DataType.FLOAT in floats or (not floats and any(
        v.type is not None and v.type.dtype == ir.DataType.FLOAT for v in model.graph.inputs))


def half_precision(model: ir.Model, internal_outputs: tuple[str, ...] = ()) -> ir.Model:
    """``model`` with float16 weights and computation (see the module docstring).
    ``internal_outputs``: graph outputs that are only there to name a tensor (the target layer);
    they are dropped first so the converter keeps them float16 on the forward path."""
    try:
        from onnxconverter_common.float16 import convert_float_to_float16
    except ImportError as exc:
        raise ExportError("--precision fp16 needs onnxconverter-common: pip install 'onnxcam[export]'") from exc
    graph = model.graph
    for value in [v for v in graph.outputs if v.name in internal_outputs]:
        graph.outputs.remove(value)
    try:
        with warnings.catch_warnings():  # one warning per weight clipped to float16's range
            warnings.simplefilter("ignore", UserWarning)
            half = convert_float_to_float16(ir.to_proto(model), keep_io_types=True)
    except Exception as exc:  # noqa: BLE001  (the converter's own failures)
        raise ExportError(f"--precision fp16: cannot convert the classifier to float16 "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return ir.from_proto(half)
