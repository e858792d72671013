"""Hand-made ONNX classifiers with a torch twin written with the same numbers, for the exporter tests.

A test builds a tiny classifier with :class:`Net`: ``image`` [N, 3, H, W] → Conv (3×3, pad 1) →
the target tensor ``"A"`` [N, K, H, W] → the head under test → Flatten → Gemm → ``logits`` [N, C].
The head is written twice: as ONNX nodes (with ``net.op``) and as a torch function of A (float64)
using the same parameters (``net.param`` returns both). :func:`check_against_torch` exports the
explanation graph, runs it with onnxruntime on a batch of 3 with ``class_index = [-1, 2, 0]`` and
compares ``logits``/``target``/``activations``/``gradients`` with torch.autograd.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from onnxcam.exporter.explain_graph import GraphSpec, build_explanation_graph
from onnxcam.exporter.onnx_source import choose_target, load_classifier

torch.set_num_threads(1)

N_CLASSES = 5
CLASS_INDEX = np.array([-1, 2, 0], np.int64)
INT64_MAX = np.iinfo(np.int64).max

TorchHead = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Param:
    """An initializer and its float64 torch twin."""

    name: str
    np: np.ndarray

    @property
    def t(self) -> torch.Tensor:
        array = self.np
        if np.issubdtype(array.dtype, np.floating):
            return torch.from_numpy(array.astype(np.float64))
        return torch.from_numpy(np.asarray(array))


class Net:
    """Collects the nodes and initializers of a tiny ONNX classifier."""

    def __init__(self, seed: int = 0, opset: int = 17, image: tuple[int, int, int] = (3, 6, 7),
                 channels: int = 4) -> None:
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.image = image
        self.channels = channels
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.extra_inputs: list[onnx.ValueInfoProto] = []
        self._count = 0

    # -- building ---------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def param(self, shape, scale: float = 0.5, *, low: float | None = None, high: float | None = None,
              dtype=np.float32, values=None, name: str | None = None) -> Param:
        """A float initializer: ``values``, uniform in [low, high) or normal × ``scale``."""
        if values is not None:
            array = np.asarray(values, dtype=dtype)
        elif low is not None:
            array = self.rng.uniform(low, high, size=shape).astype(dtype)
        else:
            array = np.asarray(self.rng.standard_normal(shape) * scale).astype(dtype)
        param = Param(name or self.fresh("w"), array)
        self.initializers.append(numpy_helper.from_array(array, param.name))
        return param

    def const(self, values, dtype=np.int64, name: str | None = None) -> Param:
        """An integer (or bool) initializer."""
        array = np.asarray(values, dtype=dtype)
        param = Param(name or self.fresh("c"), array)
        self.initializers.append(numpy_helper.from_array(array, param.name))
        return param

    def op(self, op_type: str, *inputs, outputs: int = 1, out: str | None = None, **attrs):
        """Append one node; ``inputs`` are names, :class:`Param` or None (omitted optional input)."""
        names = [out] if out else [self.fresh(op_type.lower()) for _ in range(outputs)]
        ins = ["" if i is None else (i.name if isinstance(i, Param) else i) for i in inputs]
        self.nodes.append(helper.make_node(op_type, ins, names, name=self.fresh(f"n_{op_type}"), **attrs))
        return names[0] if outputs == 1 else names

    def model(self, outputs: list[str], image: str = "image", batch="N") -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "tiny",
            [helper.make_tensor_value_info(image, TensorProto.FLOAT, [batch, *self.image]), *self.extra_inputs],
            [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8 if self.opset <= 18 else 9 if self.opset <= 20 else 10
        return model


@dataclass
class Classifier:
    """A tiny classifier and its torch twin."""

    model: onnx.ModelProto
    stem: Callable[[torch.Tensor], torch.Tensor]    # image → A (float64)
    head: TorchHead                                 # A → logits (float64)
    net: Net
    notes: dict = field(default_factory=dict)


def stem(net: Net, out: str = "A") -> Callable[[torch.Tensor], torch.Tensor]:
    """image → Conv 3×3 pad 1 (+ bias) → ``out`` [N, K, H, W]."""
    w = net.param([net.channels, net.image[0], 3, 3])
    b = net.param([net.channels], 0.1)
    net.op("Conv", "image", w, b, out=out, pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    return lambda x: F.conv2d(x, w.t, b.t, padding=1)


def tail(net: Net, y: str, torch_y: TorchHead, a_shape: tuple[int, ...], out: str = "logits") -> TorchHead:
    """y (any rank ≥ 2, batch first) → Flatten → Gemm(transB=1) → ``out`` [N, C]."""
    probe = torch_y(torch.from_numpy(net.rng.uniform(0.1, 1.0, (2, *a_shape[1:]))))
    features = int(np.prod(probe.shape[1:]))
    w = net.param([N_CLASSES, features], 1.0 / np.sqrt(features))
    b = net.param([N_CLASSES], 0.1)
    flat = net.op("Flatten", y, axis=1)
    net.op("Gemm", flat, w, b, out=out, transB=1)
    return lambda a: torch_y(a).flatten(1) @ w.t.T + b.t


def classifier(head: Callable[[Net, str], tuple[str, TorchHead]], *, seed: int = 0, opset: int = 17,
               image=(3, 6, 7), channels: int = 4, extra_outputs: tuple[str, ...] = ()) -> Classifier:
    """image → stem → A → ``head(net, "A")`` → tail → logits."""
    net = Net(seed, opset, image, channels)
    torch_stem = stem(net)
    y, torch_y = head(net, "A")
    torch_head = tail(net, y, torch_y, (1, channels, image[1], image[2]))
    return Classifier(net.model(["logits", *extra_outputs]), torch_stem, torch_head, net)


# -- exporting and running ----------------------------------------------------------------------
def explanation_graph(model: onnx.ModelProto, target: str = "A") -> onnx.ModelProto:
    c = load_classifier(model)
    t = choose_target(c, target)
    graph = build_explanation_graph(GraphSpec(c.model, c.image_input, c.logits, t, "test", t, {}), c.facts)
    onnx.checker.check_model(graph, full_check=True)
    return graph


def session(graph: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(graph: "onnx.ModelProto | ort.InferenceSession", feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All outputs of ``graph`` by name."""
    sess = graph if isinstance(graph, ort.InferenceSession) else session(graph)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def head_feed(graph: onnx.ModelProto) -> dict[str, np.ndarray]:
    """A one-row ``head_activations`` (zeros) when the graph has that input, else nothing.

    Rule tests feed it so that a rule's gradient is checked whatever the head path does with
    its empty default (see test_graph_runs_without_feeding_head_activations)."""
    for value in graph.graph.input:
        if value.name == "head_activations":
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim][1:]
            return {"head_activations": np.zeros([1, *dims], np.float32)}
    return {}


def metadata(graph: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in graph.metadata_props}


def images(c: Classifier, n: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *c.net.image)).astype(np.float32)


def assert_gradients_close(got: np.ndarray, want: np.ndarray, what: str = "gradients") -> None:
    """The contract's tolerance: max|Δ| ≤ 1e-4·max|g| + 1e-6."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = float(np.max(np.abs(got.astype(np.float64) - want)))
    bound = 1e-4 * float(np.max(np.abs(want))) + 1e-6
    assert err <= bound, f"{what}: max|Δ| = {err:.3g} > {bound:.3g} (max|g| = {np.max(np.abs(want)):.3g})"


def check_against_torch(c: Classifier, class_index: np.ndarray = CLASS_INDEX, target: str = "A",
                        batch_independent: bool = True, x: np.ndarray | None = None):
    """Export, run and compare with torch.autograd; returns (graph, outputs, torch gradients).

    With ``batch_independent`` (each image's scores depend on that image only) the graph also
    runs on image 1 alone, which must give that image's row of the batch-of-3 results."""
    graph = explanation_graph(c.model, target)
    x = images(c, len(class_index)) if x is None else x
    sess = session(graph)
    out = run(sess, {"image": x, "class_index": class_index, **head_feed(graph)})
    xt = torch.from_numpy(x).double()
    with torch.no_grad():
        a_ref = c.stem(xt)
        logits_ref = c.head(a_ref)
    assert_gradients_close(out["activations"], a_ref.numpy(), "activations")
    scale = float(np.max(np.abs(logits_ref.numpy())))
    err = float(np.max(np.abs(out["logits"] - logits_ref.numpy())))
    assert err <= 1e-4 * scale + 1e-6, f"logits: max|Δ| = {err:.3g} (max|S| = {scale:.3g})"
    expected_target = np.where(class_index < 0, logits_ref.numpy().argmax(1), class_index)
    np.testing.assert_array_equal(out["target"], expected_target)
    # the gradient at the graph's own (float32) activations, so masks and arg-maxes agree
    a = torch.from_numpy(out["activations"]).double().requires_grad_()
    logits = c.head(a)
    logits[torch.arange(len(class_index)), torch.from_numpy(out["target"])].sum().backward()
    want = a.grad.numpy()
    assert np.max(np.abs(want)) > 0, "degenerate test: the torch gradient is all zeros"
    assert_gradients_close(out["gradients"], want)
    if batch_independent:
        alone = run(sess, {"image": x[1:2], "class_index": class_index[1:2], **head_feed(graph)})
        assert_gradients_close(alone["gradients"], out["gradients"][1:2].astype(np.float64), "gradients (batch of 1)")
    if "head_logits" in out:   # the head-only path gives the same scores for the same activations
        again = run(sess, {"image": x, "class_index": class_index, "head_activations": out["activations"]})
        assert_gradients_close(again["head_logits"], out["logits"].astype(np.float64), "head_logits")
        if "head_image_index" in {i.name for i in sess.get_inputs()}:  # rows in any order, by image
            order = np.arange(len(x))[::-1].copy()
            again = run(sess, {"image": x, "class_index": class_index, "head_activations": out["activations"][order],
                               "head_image_index": order})
            assert_gradients_close(again["head_logits"], out["logits"][order].astype(np.float64), "head_logits")
    return graph, out, want


def callable_source(tmp_path, monkeypatch, module: str, code: str) -> str:
    """Write ``code`` (defining ``build()``) as ``<module>.py`` in ``tmp_path``, make it importable
    from there (also as the working directory, like ``onnxcam export`` run beside it), and return
    the SOURCE ``module:build``."""
    (tmp_path / f"{module}.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{module}:build"
