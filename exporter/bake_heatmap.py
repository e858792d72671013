"""Bake one CAM method and the contract's post-processing into an explanation graph.

``bake_heatmap(model, method)`` appends ONNX ops that turn the graph's own outputs
A = ``activations``, g = ``gradients``, g2 = ``gradients_pow2``, g3 = ``gradients_pow3``
(float32 [N, K, h, w]) into a new output ``heatmap`` float32 [N, H, W], exactly as the runtime
does (``runtime/methods.py`` then ``runtime/postprocess.py``, i.e. pytorch-grad-cam 1.5.7).

Raw maps (sums over i, j run over space, Σ_k over channels):

- ``gradcam``:              w_k = mean_ij g_kij;                    map = Σ_k w_k A_k
- ``gradcam++``:            α = g2 / (2·g2 + (Σ_ab A_kab)·g3 + 1e-6), α = 0 where g = 0;
                            w_k = Σ_ij α_kij·ReLU(g_kij);            map = Σ_k w_k A_k
- ``xgradcam``:             w_k = Σ_ij g_kij·A_kij / (Σ_ij A_kij + 1e-7); map = Σ_k w_k A_k
- ``hirescam``:             map = Σ_k g_k ⊙ A_k
- ``layercam``:             map = Σ_k ReLU(g_k) ⊙ A_k
- ``gradcam-elementwise``:  map = Σ_k ReLU(g_k ⊙ A_k)

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
from onnxcam.exporter.probe import TensorFacts
from onnxcam.models.contract import HEATMAP, GraphMetadata, Key

#: Methods that can be baked (those that are closed-form functions of A, g, g2, g3).
BAKEABLE_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "gradcam-elementwise")
EPS = 1e-7  # the min-max epsilon of pytorch-grad-cam's scale_cam_image


def check_method(method: str) -> str:
    """``method`` if it can be baked, else an ExportError listing the valid names."""
    if method not in BAKEABLE_METHODS:
        raise ExportError(f"cannot bake heatmap method {method!r}; choose from {', '.join(BAKEABLE_METHODS)}")
    return method


class _Ops:
    """Float32 helpers over a GraphBuilder (spatial axes are 2, 3 of [N, K, h, w])."""

    def __init__(self, builder: GraphBuilder) -> None:
        self.b = builder

    def f32(self, value: float) -> ir.Value:
        return self.b.const(np.array(value, np.float32), "scalar")

    def spatial_sum(self, x: ir.Value) -> ir.Value:
        return self.b.reduce("ReduceSum", x, [2, 3], keepdims=True)

    def channel_sum(self, x: ir.Value) -> ir.Value:
        """Σ_k over axis 1, [N, K, h, w] → [N, h, w]."""
        return self.b.reduce("ReduceSum", x, [1], keepdims=False)

    def weighted(self, weights: ir.Value, A: ir.Value) -> ir.Value:
        """Σ_k w_k A_k for weights [N, K, 1, 1]."""
        return self.channel_sum(self.b.op("Mul", weights, A))

    def minmax(self, cam: ir.Value) -> ir.Value:
        """Per-image x ← x − min x; x ← x / (1e-7 + max x) over the last two axes of [N, H, W]."""
        low = self.b.reduce("ReduceMin", cam, [1, 2], keepdims=True)
        shifted = self.b.op("Sub", cam, low)
        high = self.b.reduce("ReduceMax", shifted, [1, 2], keepdims=True)
        return self.b.op("Div", shifted, self.b.op("Add", self.f32(EPS), high))


def raw_map(ops: _Ops, method: str, A: ir.Value, g: ir.Value, g2: ir.Value, g3: ir.Value) -> ir.Value:
    """The method's raw map [N, h, w] (see the module docstring for the formulas)."""
    b = ops.b
    if method == "gradcam":
        return ops.weighted(b.reduce("ReduceMean", g, [2, 3], keepdims=True), A)
    if method == "gradcam++":
        sum_a = ops.spatial_sum(A)
        denominator = b.op("Add", b.op("Add", b.op("Mul", ops.f32(2.0), g2), b.op("Mul", sum_a, g3)), ops.f32(1e-6))
        alpha = b.op("Div", g2, denominator)
        nonzero = b.op("Not", b.op("Equal", g, ops.f32(0.0)))
        alpha = b.op("Where", nonzero, alpha, ops.f32(0.0))
        return ops.weighted(ops.spatial_sum(b.op("Mul", b.op("Relu", g), alpha)), A)
    if method == "xgradcam":
        sum_a = ops.spatial_sum(A)
        ratio = b.op("Div", b.op("Mul", g, A), b.op("Add", sum_a, ops.f32(1e-7)))
        return ops.weighted(ops.spatial_sum(ratio), A)
    if method == "hirescam":
        return ops.channel_sum(b.op("Mul", g, A))
    if method == "layercam":
        return ops.channel_sum(b.op("Mul", b.op("Relu", g), A))
    if method == "gradcam-elementwise":
        return ops.channel_sum(b.op("Relu", b.op("Mul", g, A)))
    raise ExportError(f"internal: no baking rule for {method!r}")


def postprocess(ops: _Ops, raw: ir.Value, fmap: tuple[int, int], size: tuple[int, int]) -> ir.Value:
    """ReLU → min-max → bilinear half-pixel resize to ``size`` (skipped when the sizes agree) →
    ReLU → min-max."""
    b = ops.b
    cam = ops.minmax(b.op("Relu", raw))
    if tuple(fmap) != tuple(size):
        batch = b.op("Slice", b.op("Shape", cam), b.ints([0]), b.ints([1]))
        sizes = b.op("Concat", batch, b.ints(list(size)), axis=0)
        cam = b.op("Resize", cam, None, None, sizes, mode="linear", coordinate_transformation_mode="half_pixel")
    return ops.minmax(b.op("Relu", cam))


def _outputs(graph: ir.Graph) -> dict[str, ir.Value]:
    return {v.name: v for v in graph.outputs}


def bake_heatmap(model: onnx.ModelProto, method: str) -> onnx.ModelProto:
    """A copy of the explanation graph ``model`` with the output ``heatmap`` [N, H, W] of ``method``
    and the metadata ``onnxcam.heatmap_method`` (see the module docstring)."""
    check_method(method)
    meta = GraphMetadata.from_props({p.key: p.value for p in model.metadata_props})
    if meta.heatmap_method is not None:
        raise ExportError(f"the graph already has a baked heatmap ({meta.heatmap_method})")
    if meta.preprocess is None:
        raise ExportError(f"cannot bake a heatmap: no {Key.PREPROCESS} metadata (the input size)")
    size = meta.preprocess.size
    ir_model = ir.from_proto(model)
    graph = ir_model.graph
    outputs = _outputs(graph)
    if HEATMAP in outputs:
        raise ExportError("the graph already has a 'heatmap' output")
    A = outputs["activations"]
    dims = list(A.shape) if A.shape is not None else []
    if len(dims) != 4 or not all(isinstance(d, int) for d in dims[2:]):
        raise ExportError(f"cannot bake a heatmap: the activations need a static spatial size, got {dims}")
    opset = next((v for d, v in ir_model.opset_imports.items() if d in ("", "ai.onnx")), 17)
    builder = GraphBuilder(graph, TensorFacts(), opset, prefix="onnxcam/heatmap")
    ops = _Ops(builder)
    raw = raw_map(ops, method, A, outputs["gradients"], outputs.get("gradients_pow2"), outputs.get("gradients_pow3"))
    heatmap = postprocess(ops, raw, (dims[2], dims[3]), size)
    heatmap.name = HEATMAP
    heatmap.type = ir.TensorType(ir.DataType.FLOAT)
    heatmap.shape = ir.Shape([dims[0], size[0], size[1]])
    graph.outputs.append(heatmap)
    ir_model.metadata_props[Key.HEATMAP_METHOD] = method
    return ir.to_proto(ir_model)
