"""A small explanation graph written byte by byte (no onnx package needed), for runtime tests.

The toy classifier  image → Conv(3→8, 3×3, stride 2, pad 1) → Relu (= target A, [N, 8, 8, 10])
→ Flatten → Gemm → logits  gets the contract's interface: ``class_index`` input, outputs
``target``, ``activations``, ``gradients`` = reshape(onehot(target)·W_gemm) (exact for a
Flatten→Gemm head), ``gradients_pow2`` = g², ``gradients_pow3`` = g³, and the head-only path
``head_activations`` (empty default initializer) → Flatten → Gemm → ``head_logits``.
The protobuf is encoded here by hand so the runtime tests also run where onnx is absent;
where onnx is installed the result must pass ``onnx.checker.check_model(full_check=True)``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

K, C, H, W = 8, 5, 16, 20
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
FLOAT, INT64, BOOL = 1, 7, 9


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 → two's complement, as protobuf does
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _f(num: int, value) -> bytes:
    """One protobuf field: int → varint; str/bytes → length-delimited."""
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint((num << 3) | 2) + _varint(len(data)) + data


def tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto: dims (1), data_type (2), name (8), raw_data (9)."""
    dtype = {np.dtype(np.float32): FLOAT, np.dtype(np.int64): INT64}[array.dtype]
    return b"".join(_f(1, int(d)) for d in array.shape) + _f(2, dtype) + _f(8, name) + \
        _f(9, np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())


def value_info(name: str, elem: int, shape: list) -> bytes:
    """ValueInfoProto with a tensor type; str dims are symbolic (dim_param)."""
    dims = b"".join(_f(1, _f(2, d) if isinstance(d, str) else _f(1, d)) for d in shape)
    return _f(1, name) + _f(2, _f(1, _f(1, elem) + _f(2, dims)))


def node(op: str, inputs: list[str], outputs: list[str], **attrs) -> bytes:
    """NodeProto with int / ints attributes (AttributeProto: name 1, i 3, ints 8, type 20)."""
    out = b"".join(_f(1, i) for i in inputs) + b"".join(_f(2, o) for o in outputs) + _f(4, op)
    for key, val in attrs.items():
        body = _f(1, key) + (_f(3, val) + _f(20, 2) if isinstance(val, int)
                             else b"".join(_f(8, v) for v in val) + _f(20, 7))
        out += _f(5, body)
    return out


def toy_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"wc": rng.normal(0, 0.5, (K, 3, 3, 3)).astype(np.float32),
            "bc": rng.normal(0, 0.1, K).astype(np.float32),
            "wf": rng.normal(0, 0.2, (C, K * (H // 2) * (W // 2))).astype(np.float32),
            "bf": rng.normal(0, 0.1, C).astype(np.float32)}


def build_graph(path, weights, layout="NCHW", batch="N", gradients=True, head=True, meta=True) -> str:
    """Write the toy explanation graph (or a variant lacking parts of the interface) to ``path``."""
    h, w = H // 2, W // 2
    inits = [tensor(k, v) for k, v in weights.items()] + [
        tensor("onehot_values", np.array([0.0, 1.0], np.float32)),
        tensor("depth", np.array(C, np.int64)), tensor("zero", np.array(0, np.int64))]
    nodes, image = [], "image"
    if layout == "NHWC":
        nodes.append(node("Transpose", ["image"], ["image_nchw"], perm=[0, 3, 1, 2]))
        image = "image_nchw"
    nodes += [node("Conv", [image, "wc", "bc"], ["conv"], pads=[1, 1, 1, 1], strides=[2, 2]),
              node("Relu", ["conv"], ["activations"]),
              node("Flatten", ["activations"], ["flat"], axis=1),
              node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
              node("ArgMax", ["logits"], ["top1"], axis=1, keepdims=0),
              node("Less", ["class_index", "zero"], ["negative"]),
              node("Where", ["negative", "top1", "class_index"], ["target"])]
    outputs = [("logits", FLOAT, [batch, C]), ("target", INT64, [batch]), ("activations", FLOAT, [batch, K, h, w])]
    if gradients:
        nodes += [node("OneHot", ["target", "depth", "onehot_values"], ["onehot"], axis=-1),
                  node("MatMul", ["onehot", "wf"], ["gflat"]),
                  node("Shape", ["activations"], ["a_shape"]),
                  node("Reshape", ["gflat", "a_shape"], ["gradients"]),
                  node("Mul", ["gradients", "gradients"], ["gradients_pow2"]),
                  node("Mul", ["gradients_pow2", "gradients"], ["gradients_pow3"])]
        outputs += [(n, FLOAT, [batch, K, h, w]) for n in ("gradients", "gradients_pow2", "gradients_pow3")]
    inputs = [value_info("image", FLOAT, [batch, 3, H, W] if layout == "NCHW" else [batch, H, W, 3]),
              value_info("class_index", INT64, [batch])]
    if head:
        inits.append(tensor("head_activations", np.zeros((0, K, h, w), np.float32)))
        inputs.append(value_info("head_activations", FLOAT, ["M", K, h, w]))
        nodes += [node("Flatten", ["head_activations"], ["head_flat"], axis=1),
                  node("Gemm", ["head_flat", "wf", "bf"], ["head_logits"], transB=1)]
        outputs.append(("head_logits", FLOAT, ["M", C]))
    graph = b"".join(_f(1, n) for n in nodes) + _f(2, "toy") + b"".join(_f(5, t) for t in inits) + \
        b"".join(_f(11, i) for i in inputs) + b"".join(_f(12, value_info(*o)) for o in outputs)
    props = {}
    if meta:
        pre = {"layout": layout, "color": "RGB", "size": [H, W], "resize": 18, "scale": 1 / 255,
               "mean": MEAN, "std": STD}
        props = {"onnxcam.format": "1", "onnxcam.source": "test:toy", "onnxcam.target_layer": "relu",
                 "onnxcam.image_input": "image", "onnxcam.preprocess": json.dumps(pre),
                 "onnxcam.labels": json.dumps(list("abcde")), "onnxcam.head_piecewise_linear": "true"}
        if head:
            props["onnxcam.head_input"] = "head_activations"
    model = _f(1, 8) + _f(2, "onnxcam-tests") + _f(7, graph) + _f(8, _f(1, "") + _f(2, 17)) + \
        b"".join(_f(14, _f(1, k) + _f(2, v)) for k, v in props.items())
    with open(path, "wb") as fh:
        fh.write(model)
    return str(path)


def photos() -> list["Image.Image"]:
    """chelsea, coffee, astronaut from skimage.data; seeded synthetic pictures of the same sizes
    where scikit-image is not installed (the torch-free environment)."""
    from PIL import Image
    try:
        import skimage.data as data
        return [Image.fromarray(getattr(data, n)()) for n in ("chelsea", "coffee", "astronaut")]
    except ImportError:
        rng = np.random.default_rng(0)
        out = []
        for h, w in ((300, 451), (400, 600), (512, 512)):
            yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
            base = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], -1)
            out.append(Image.fromarray(np.uint8(np.clip((base + 1) * 110 + rng.normal(0, 20, base.shape), 0, 255))))
        return out


# -- the builder's own checks ----------------------------------------------------------------------
def test_toy_graph_passes_the_onnx_checker(tmp_path):
    onnx = pytest.importorskip("onnx")
    for kwargs in ({}, {"layout": "NHWC"}, {"batch": 2}, {"gradients": False, "head": False}):
        model = onnx.load(build_graph(tmp_path / "t.onnx", toy_weights(), **kwargs))
        onnx.checker.check_model(model, full_check=True)
    assert {p.key for p in model.metadata_props} >= {"onnxcam.format", "onnxcam.preprocess"}


def test_toy_graph_gradients_are_exact(tmp_path):
    """For a Flatten→Gemm head S_c = Σ g·A + b_c exactly; torch autograd agrees when present."""
    import onnxruntime as ort
    w = toy_weights()
    sess = ort.InferenceSession(build_graph(tmp_path / "t.onnx", w), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(size=(3, 3, H, W)).astype(np.float32)
    logits, target, A, g, g2, g3, head = sess.run(
        None, {"image": x, "class_index": np.array([1, -1, 4]), "head_activations": np.zeros((0, K, 8, 10), np.float32)})
    assert target[0] == 1 and target[2] == 4 and target[1] == logits[1].argmax() and head.shape == (0, C)
    np.testing.assert_allclose((g * A).sum((1, 2, 3)) + w["bf"][target], logits[np.arange(3), target], rtol=1e-5)
    np.testing.assert_allclose(g2, g**2, rtol=1e-6)
    np.testing.assert_allclose(g3, g**3, rtol=1e-6)
    torch = pytest.importorskip("torch")
    wc, bc = torch.from_numpy(w["wc"]), torch.from_numpy(w["bc"])
    A_t = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), wc, bc, stride=2, padding=1)).requires_grad_()
    S = A_t.flatten(1) @ torch.from_numpy(w["wf"]).T + torch.from_numpy(w["bf"])
    (g_t,) = torch.autograd.grad(S[torch.arange(3), torch.from_numpy(target)].sum(), A_t)
    np.testing.assert_allclose(A, A_t.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g, g_t.numpy(), rtol=1e-5, atol=1e-7)
