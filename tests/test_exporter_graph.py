"""Graph-level behaviour of the explanation graph: the head path's default, layouts, fixed batches, old opsets, unsupported forms."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from exporter_helpers import (
    CLASS_INDEX,
    Classifier,
    Net,
    assert_gradients_close,
    check_against_torch,
    classifier,
    explanation_graph,
    head_feed,
    images,
    run,
    stem,
    tail,
)
from onnx import TensorProto
from onnxcam.exporter import ExportError
from rule_cases import Cases, F, H, K, W, torch
from test_rules_heads import _cnn_head
from test_rules_shape import _gather_nd

pytestmark = pytest.mark.torch
case = Cases()

def _gap_head(net, a):
    return net.op("GlobalAveragePool", a), lambda t: t.mean((2, 3), keepdim=True)


def _token_head(net, a):
    """[N, K, h·w] tokens through a Reshape with 0 and -1, as vision transformers and `x.view(n, -1)` do."""
    y = net.op("Reshape", a, net.const([0, K, -1]))
    return y, lambda t: t.reshape(t.shape[0], K, -1)


def _matmul_left_head(net, a):
    w = net.param([K, 2, H], 0.5)
    return net.op("MatMul", w, a), lambda t: w.t @ t


def _reduce_last_head(net, a):
    y = net.op("ReduceSum", a, net.const([-1]), keepdims=1)
    return net.op("Squeeze", y, net.const([-1])), lambda t: t.sum(-1)



@pytest.mark.parametrize("name", [
    "gap",
    "reshape-0-minus1",
    "matmul-broadcast",
    "reducesum-squeeze",
])
def test_graph_runs_without_feeding_head_activations(name):
    """The contract's inputs are the image and class_index only: running every output of the
    graph (sess.run(None, ...), as other languages do) must work without head_activations."""
    head = {"gap": _gap_head, "reshape-0-minus1": _token_head, "matmul-broadcast": _matmul_left_head,
            "reducesum-squeeze": _reduce_last_head}[name]
    c = classifier(head)
    graph = explanation_graph(c.model)
    out = run(graph, {"image": images(c), "class_index": CLASS_INDEX})
    assert out["gradients"].shape == (3, K, H, W)


def test_target_layout_nhwc_is_returned_nchw():
    """A target behind a Transpose to NHWC: activations and gradients come back NCHW."""
    def head(net, a):
        nhwc = net.op("Transpose", a, perm=[0, 2, 3, 1], out="A_nhwc")
        return net.op("Relu", nhwc), lambda t: torch.relu(t.permute(0, 2, 3, 1))

    c = classifier(head)
    graph, out, g = check_against_torch(c, target="A_nhwc")     # compared with ∂S/∂A, NCHW
    dims = [d.dim_value or d.dim_param for d in graph.graph.output[3].type.tensor_type.shape.dim]
    assert graph.graph.output[3].name == "gradients" and dims == ["N", K, H, W]


def test_target_behind_identity():
    """A target named by an Identity's output resolves to the tensor the graph really uses."""
    def head(net, a):
        net.op("Identity", a, out="A_alias")
        return net.op("Relu", a), torch.relu

    check_against_torch(classifier(head, extra_outputs=("A_alias",)), target="A_alias")


def test_fixed_batch_of_one():
    """A source with a static batch of 1: no head path, a batch-1 graph."""
    c = classifier(_cnn_head)
    c.model = c.net.model(["logits"], batch=1)
    graph, out, g = check_against_torch(c, class_index=np.array([-1], np.int64), batch_independent=False)
    assert "head_logits" not in out


def test_fixed_batch_of_three():
    c = classifier(_cnn_head)
    c.model = c.net.model(["logits"], batch=3)
    check_against_torch(c, batch_independent=False)


def test_old_opset_source_is_converted():
    """An opset-11 source (Squeeze/Unsqueeze/ReduceMean axes as attributes, Clip bounds as
    inputs, Softmax with the old coerced-2-D semantics) is converted to opset ≥ 17 first."""
    def head(net, a):
        lo, hi = net.param([], values=-1.0), net.param([], values=2.0)
        clipped = net.op("Clip", a, lo, hi)
        m = net.op("ReduceMean", clipped, axes=[3], keepdims=1)                 # [N, K, h, 1]
        sq = net.op("Squeeze", m, axes=[3])                                     # [N, K, h]
        un = net.op("Unsqueeze", sq, axes=[1])                                  # [N, 1, K, h]
        flat = net.op("Flatten", un, axis=1)
        return net.op("Softmax", flat, axis=1), lambda t: torch.softmax(F.hardtanh(t, -1, 2).mean(3).flatten(1), 1)

    c = classifier(head, opset=11)
    graph, out, g = check_against_torch(c)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17


def _raises_export_error(head, opset=17):
    c = classifier(head, opset=opset)
    with pytest.raises(ExportError) as info:
        explanation_graph(c.model)
    message = str(info.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("name", ["pad-reflect", "convtranspose-auto_pad", "pow-dependent-exponent",
                                  "reduce-batch-axis"])
def test_unsupported_forms_raise_one_line_export_error(name):
    """Forms a rule refuses end in one ExportError naming the node, never a crash."""
    def head(net, a):
        shape = lambda t: t                                          # noqa: E731  (only shapes matter)
        if name == "pad-reflect":
            y = net.op("Pad", a, net.const([0, 0, 1, 1, 0, 0, 1, 1]), mode="reflect")
            shape = lambda t: F.pad(t, (1, 1, 1, 1))                 # noqa: E731
        elif name == "convtranspose-auto_pad":
            y = net.op("ConvTranspose", a, net.param([K, 2, 3, 3]), strides=[2, 2], auto_pad="SAME_UPPER")
            shape = lambda t: t.new_zeros(t.shape[0], 2, 2 * H, 2 * W)   # noqa: E731
        elif name == "pow-dependent-exponent":
            y = net.op("Pow", net.op("Sigmoid", a), a)
        else:   # reduce-batch-axis
            y = net.op("Sub", a, net.op("ReduceMean", a, axes=[0], keepdims=1))
        return y, shape
    message = _raises_export_error(head)
    assert "node" in message


def test_gather_nd_repeated_indices_on_several_threads():
    """onnxruntime's CPU ScatterND(add) applies repeated indices from several threads and loses
    updates; the GatherND rule's scatter must give the same, right gradient on every run."""
    rows = np.tile([[1, 2], [0, 0], [1, 2], [-1, 5]], (2000, 1))
    c = classifier(_gather_nd(rows), image=(3, 16, 16), channels=8)
    graph, _, want = check_against_torch(c)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 4
    sess = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {"image": images(c), "class_index": CLASS_INDEX, **head_feed(graph)}
    runs = [run(sess, feeds)["gradients"] for _ in range(6)]
    for got in runs:
        assert_gradients_close(got, want, "gradients (4 threads)")
        np.testing.assert_array_equal(got, runs[0])


def test_runtime_computed_gather_indices_are_not_baked_in():
    """Indices computed from the data (ArgMax of the channel means): either a clean ExportError or
    gradients that follow the indices of each run."""
    def head(net, a):
        idx = net.op("ArgMax", net.op("ReduceMean", a, axes=[0, 2, 3], keepdims=0), axis=0, keepdims=1)

        def fn(t):
            i = int(t.mean((0, 2, 3)).argmax())
            return t[:, i:i + 1]
        return net.op("Gather", a, idx, axis=1), fn

    c = classifier(head)
    try:
        explanation_graph(c.model)
    except ExportError:
        return
    for x in (images(c), -images(c)):      # two batches whose arg-max channels differ
        check_against_torch(c, batch_independent=False, x=x)


@pytest.mark.parametrize("batch", [
    pytest.param(1, id="static-batch-1"),
    pytest.param("N", id="dynamic-batch"),
])
def test_float16_target_tensor(batch):
    """image (float32) → Cast fp16 → Conv (fp16) → A (fp16) → Relu → GAP → Gemm (fp16) → Cast → logits (float32):
    activations and gradients come out float32 (the contract), close to torch at fp16 precision."""
    net = Net(image=(3, H, W))
    w, b = net.param([K, 3, 3, 3], dtype=np.float16), net.param([K], 0.1, dtype=np.float16)
    net.op("Conv", net.op("Cast", "image", to=TensorProto.FLOAT16), w, b, pads=[1, 1, 1, 1], out="A")
    wc = net.param([5, K], dtype=np.float16)
    y = net.op("Gemm", net.op("Flatten", net.op("GlobalAveragePool", net.op("Relu", "A"))), wc, transB=1)
    net.op("Cast", y, to=TensorProto.FLOAT, out="logits")
    model = net.model(["logits"], batch=batch)
    n = 1 if batch == 1 else 3
    graph = explanation_graph(model)
    x = np.random.default_rng(1).standard_normal((n, 3, H, W)).astype(np.float32)
    out = run(graph, {"image": x, "class_index": CLASS_INDEX[:n], **head_feed(graph)})
    assert out["activations"].dtype == np.float32 and out["gradients"].dtype == np.float32
    a = torch.from_numpy(out["activations"]).double().requires_grad_()
    logits = torch.relu(a).mean((2, 3)) @ wc.t.T
    logits[torch.arange(n), torch.from_numpy(out["target"])].sum().backward()
    np.testing.assert_allclose(out["gradients"], a.grad.numpy(), rtol=0, atol=2e-3 * a.grad.abs().max().item())



@pytest.mark.parametrize("name", [
    "activations",
    "target",
    "gradients",
    "class_index",
])
def test_source_tensor_named_like_a_graph_output(name):
    """The target tensor of the source is called ``name``."""
    net = Net()
    torch_stem = stem(net, out=name)
    torch_head = tail(net, net.op("Relu", name), torch.relu, (1, K, H, W))
    check_against_torch(Classifier(net.model(["logits"]), torch_stem, torch_head, net), target=name)


def test_source_tensor_named_logits_that_is_not_the_scores():
    """A source whose tensor "logits" is temperature-scaled into its [N, C] output."""
    net = Net()
    torch_stem = stem(net)
    torch_head = tail(net, net.op("Relu", "A"), torch.relu, (1, K, H, W), out="logits")
    net.op("Div", "logits", net.param([], values=2.0), out="scaled")
    c = Classifier(net.model(["scaled"]), torch_stem, lambda a: torch_head(a) / 2.0, net)
    check_against_torch(c)
