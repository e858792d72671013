"""Bake one CAM method and the contract's post-processing into an explanation graph.

:class:`BakeHeatmapPass` appends ONNX ops that turn the graph's own outputs A = ``activations``,
g = ``gradients``, g2 = ``gradients_pow2``, g3 = ``gradients_pow3`` (float32 [N, K, h, w]) into
a new output ``heatmap`` float32 [N, H, W], exactly as the runtime does: the raw map is the
method's formula from ``onnxcam.models.formulas`` — the very function the runtime evaluates with
numpy — written as ONNX nodes through :class:`OnnxArrays`, then post-processed as
pytorch-grad-cam 1.5.7 does.

Post-processing (per image): cam = ReLU(map); cam ← (cam − min cam) / (1e-7 + max(cam − min cam));
cam ← bilinear resize to (H, W) with half-pixel centres (ONNX ``Resize``, mode linear,
coordinate_transformation_mode half_pixel, output sizes given: the source coordinate of output
pixel d is (d + 0.5)·h/H − 0.5, clamped to the border, as cv2 INTER_LINEAR and the runtime's
``resize_bilinear``); cam ← ReLU(cam); min-max again. (H, W) is the model input size from the
``onnxcam.preprocess`` metadata.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnxcam.exporter.builder import GraphBuilder
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.graph_values import default_opset
from onnxcam.exporter.probe import TensorFacts
from onnxcam.models.contract import (
    ACTIVATIONS,
    GRADIENTS,
    GRADIENTS_POW2,
    GRADIENTS_POW3,
    HEATMAP,
    GraphMetadata,
    Key,
)
from onnxcam.models.errors import param
from onnxcam.models.formulas import FORMULAS

#: Methods that can be baked: those with a closed-form formula.
BAKEABLE_METHODS = tuple(FORMULAS)
EPS = 1e-7  # the min-max epsilon of pytorch-grad-cam's scale_cam_image


def check_method(method: str) -> str:
    """``method`` if it can be baked, else an ExportError listing the valid names."""
    if method not in FORMULAS:
        raise ExportError(f"{param('heatmap', method)}: cannot bake this method; choose from "
                          f"{', '.join(FORMULAS)}")
    return method


class Symbol:
    """A float32 tensor of the graph being built; arithmetic operators append ONNX nodes."""

    def __init__(self, arrays: OnnxArrays, value: ir.Value) -> None:
        self.arrays, self.value = arrays, value

    def _op(self, op_type: str, *operands: Symbol | float) -> Symbol:
        return self.arrays.symbol(self.arrays.b.op(op_type, *(self.arrays.lift(o) for o in operands)))

    def __add__(self, other): return self._op("Add", self, other)          # noqa: E704
    def __radd__(self, other): return self._op("Add", other, self)         # noqa: E704
    def __sub__(self, other): return self._op("Sub", self, other)          # noqa: E704
    def __rsub__(self, other): return self._op("Sub", other, self)         # noqa: E704
    def __mul__(self, other): return self._op("Mul", self, other)          # noqa: E704
    def __rmul__(self, other): return self._op("Mul", other, self)         # noqa: E704
    def __truediv__(self, other): return self._op("Div", self, other)      # noqa: E704
    def __rtruediv__(self, other): return self._op("Div", other, self)     # noqa: E704
    def __neg__(self): return self._op("Neg", self)                        # noqa: E704


class OnnxArrays:
    """The formulas' array vocabulary (``onnxcam.models.formulas``) as ONNX nodes on float32
    [N, K, h, w] tensors; spatial axes are 2, 3."""

    def __init__(self, builder: GraphBuilder) -> None:
        self.b = builder

    def symbol(self, value: ir.Value) -> Symbol:
        return Symbol(self, value)

    def lift(self, operand: Symbol | float) -> ir.Value:
        if isinstance(operand, Symbol):
            return operand.value
        return self.b.const(np.array(operand, np.float32), "scalar")

    def relu(self, x: Symbol) -> Symbol:
        return self.symbol(self.b.op("Relu", x.value))

    def nonzero_or_zero(self, c: Symbol, x: Symbol) -> Symbol:
        nonzero = self.b.op("Not", self.b.op("Equal", c.value, self.lift(0.0)))
        return self.symbol(self.b.op("Where", nonzero, x.value, self.lift(0.0)))

    def sum_hw(self, x: Symbol) -> Symbol:
        return self.symbol(self.b.reduce("ReduceSum", x.value, [2, 3], keepdims=True))

    def mean_hw(self, x: Symbol) -> Symbol:
        return self.symbol(self.b.reduce("ReduceMean", x.value, [2, 3], keepdims=True))

    def sum_k(self, x: Symbol) -> Symbol:
        return self.symbol(self.b.reduce("ReduceSum", x.value, [1], keepdims=False))

    def weighted(self, w: Symbol, A: Symbol) -> Symbol:
        """Σ_k w_k A_k for weights [N, K, 1, 1]."""
        return self.sum_k(w * A)

    def minmax(self, cam: ir.Value) -> ir.Value:
        """Per-image x ← x − min x; x ← x / (1e-7 + max x) over the last two axes of [N, H, W]."""
        low = self.b.reduce("ReduceMin", cam, [1, 2], keepdims=True)
        shifted = self.b.op("Sub", cam, low)
        high = self.b.reduce("ReduceMax", shifted, [1, 2], keepdims=True)
        return self.b.op("Div", shifted, self.b.op("Add", self.lift(EPS), high))


def raw_map(arrays: OnnxArrays, method: str, A: ir.Value, g: ir.Value, g2: ir.Value | None,
            g3: ir.Value | None) -> ir.Value:
    """The method's raw map [N, h, w]: its formula written as ONNX nodes."""
    symbols = [None if v is None else arrays.symbol(v) for v in (A, g, g2, g3)]
    return FORMULAS[check_method(method)](arrays, *symbols).value


def postprocess(ops: OnnxArrays, raw: ir.Value, fmap: tuple, size: tuple[int, int] | ir.Value) -> ir.Value:
    """ReLU → min-max → bilinear half-pixel resize to ``size`` (skipped when the sizes agree;
    a [2] tensor when the image size is only known at run time) → ReLU → min-max."""
    b = ops.b
    cam = ops.minmax(b.op("Relu", raw))
    if isinstance(size, ir.Value) or tuple(fmap) != tuple(size):
        batch = b.op("Slice", b.op("Shape", cam), b.ints([0]), b.ints([1]))
        sizes = b.op("Concat", batch, size if isinstance(size, ir.Value) else b.ints(list(size)), axis=0)
        cam = b.op("Resize", cam, None, None, sizes, mode="linear", coordinate_transformation_mode="half_pixel")
    return ops.minmax(b.op("Relu", cam))


class BakeHeatmapPass(ir.passes.InPlacePass):
    """Append the output ``heatmap`` [N, H, W] of ``method`` and the metadata
    ``onnxcam.heatmap_method`` to an explanation graph (see the module docstring)."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = check_method(method)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        meta = GraphMetadata.from_props(model.metadata_props)
        if meta.heatmap_method is not None:
            raise ExportError(f"the graph already has a baked heatmap ({meta.heatmap_method})")
        if meta.preprocess is None:
            raise ExportError(f"cannot bake a heatmap: no {Key.PREPROCESS} metadata (the input size)")
        graph, size = model.graph, meta.preprocess.size
        outputs = {v.name: v for v in graph.outputs}
        if HEATMAP in outputs:
            raise ExportError(f"the graph already has a '{HEATMAP}' output")
        A = outputs[ACTIVATIONS]
        dims = list(A.shape) if A.shape is not None else []
        if len(dims) != 4:
            raise ExportError(f"cannot bake a heatmap: the activations are not [N, K, h, w], got {dims}")
        ops = OnnxArrays(GraphBuilder(graph, TensorFacts(), default_opset(model), prefix="onnxcam/heatmap"))
        image = next(v for v in graph.inputs if v.name == meta.image_input)
        hw_axes = [1, 2] if meta.preprocess.layout == "NHWC" else [2, 3]
        image_hw = [image.shape[a] for a in hw_axes] if image.shape is not None else [None, None]
        if not all(isinstance(d, int) for d in image_hw + dims[2:]):  # any image size: read it at run time
            size = ops.b.op("Gather", ops.b.op("Shape", image), ops.b.ints(hw_axes), axis=0)
            image_hw = [d if isinstance(d, int) else str(d) for d in image_hw]
        else:
            image_hw = list(size)
        raw = raw_map(ops, self.method, A, outputs[GRADIENTS], outputs.get(GRADIENTS_POW2), outputs.get(GRADIENTS_POW3))
        heatmap = postprocess(ops, raw, (dims[2], dims[3]), size)
        heatmap.name = HEATMAP
        heatmap.type = ir.TensorType(ir.DataType.FLOAT)
        heatmap.shape = ir.Shape([dims[0], *image_hw])
        graph.outputs.append(heatmap)
        model.metadata_props[Key.HEATMAP_METHOD] = self.method
        return ir.passes.PassResult(model, modified=True)


def bake_heatmap(model: onnx.ModelProto, method: str) -> onnx.ModelProto:
    """A copy of the explanation graph ``model`` with ``method`` baked in (:class:`BakeHeatmapPass`)."""
    ir_model = ir.from_proto(model)
    BakeHeatmapPass(method)(ir_model)
    return ir.to_proto(ir_model)
