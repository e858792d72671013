"""Realistic heads of several operators and the engine (branches, fan-out, Softmax at the end, the head path, the powers) against torch.autograd."""
from __future__ import annotations

import numpy as np
import pytest
from exporter_helpers import (
    CLASS_INDEX,
    Classifier,
    Net,
    check_against_torch,
    classifier,
    explanation_graph,
    head_feed,
    images,
    metadata,
    run,
    stem,
    tail,
)
from rule_cases import Cases, F, H, K, W, check_case, torch
from test_rules_elementwise import _gap_of
from test_rules_linear import _conv
from test_rules_normalization import _layer_norm
from test_rules_pooling import _max_pool
from test_rules_shape import _softmax

pytestmark = pytest.mark.torch
case = Cases()

@case("Head-Relu-Conv-BN-Relu-MaxPool-GAP", True)
def _cnn_head(net, a):
    r = net.op("Relu", a)
    conv, cfn = _conv(cout=6, pads=(1, 1, 1, 1))(net, r)
    bn, bfn = (lambda s, b, m, v: (net.op("BatchNormalization", conv, s, b, m, v),
                                   lambda t: F.batch_norm(t, m.t, v.t, s.t, b.t, False, eps=1e-5)))(
        net.param([6]), net.param([6]), net.param([6]), net.param([6], low=0.5, high=2))
    mp = net.op("MaxPool", net.op("Relu", bn), kernel_shape=[2, 2], strides=[2, 2])
    y = net.op("GlobalAveragePool", mp)
    return y, lambda t: F.max_pool2d(torch.relu(bfn(cfn(torch.relu(t)))), 2, 2).mean((2, 3), keepdim=True)


@case("Head-residual-block", True)
def _residual(net, a):
    c1, f1 = _conv(cout=K, pads=(1, 1, 1, 1))(net, a)
    c2, f2 = _conv(cout=K, pads=(1, 1, 1, 1))(net, net.op("Relu", c1))
    y = net.op("Relu", net.op("Add", c2, a))
    return y, lambda t: torch.relu(f2(torch.relu(f1(t))) + t)


@case("Head-token-attention", False)
def _attention(net, a):
    tokens = net.op("Transpose", net.op("Reshape", a, net.const([0, K, -1])), perm=[0, 2, 1])   # [N, hw, K]
    ln, lfn = (lambda s: (net.op("LayerNormalization", tokens, s, axis=-1), lambda t: F.layer_norm(t, [K], s.t)))(
        net.param([K], low=0.5, high=1.5))
    wq, wk = net.param([K, K]), net.param([K, K])
    q, k = net.op("MatMul", ln, wq), net.op("MatMul", ln, wk)
    scores = net.op("Softmax", net.op("MatMul", q, net.op("Transpose", k, perm=[0, 2, 1])), axis=-1)
    y = net.op("MatMul", scores, ln)

    def fn(t):
        tok = lfn(t.reshape(t.shape[0], K, -1).transpose(1, 2))
        qq, kk = tok @ wq.t, tok @ wk.t
        return torch.softmax(qq @ kk.transpose(1, 2), -1) @ tok
    return y, fn


def _class_token_block(net, a):
    """A ViT's last block after its attention: residual → LayerNorm → MLP (MatMul, exact GELU as
    Erf) → residual → final LayerNorm → the class token (Gather index 0 on the token axis), which
    ``SelectTokensFirstPass`` moves above all of it."""
    tokens = net.op("Transpose", net.op("Reshape", a, net.const([0, K, -1])), perm=[0, 2, 1])   # [N, hw, K]
    g1, g2 = net.param([K], low=0.5, high=1.5), net.param([K], low=0.5, high=1.5)
    w1, b1, w2 = net.param([K, 3 * K]), net.param([3 * K]), net.param([3 * K, K])
    h = net.op("Add", net.op("MatMul", net.op("LayerNormalization", tokens, g1, axis=-1), w1), b1)
    half = net.param([], values=0.5)
    gelu = net.op("Mul", h, net.op("Mul", half, net.op("Add", net.op("Erf", net.op("Div", h, net.param([], values=2**0.5))),
                                                          net.param([], values=1.0))))
    out = net.op("LayerNormalization", net.op("Add", tokens, net.op("MatMul", gelu, w2)), g2, axis=-1)
    y = net.op("Gather", out, net.const(0), axis=1)

    def fn(t):
        tok = t.reshape(t.shape[0], K, -1).transpose(1, 2)
        hh = F.layer_norm(tok, [K], g1.t) @ w1.t + b1.t
        return F.layer_norm(tok + F.gelu(hh) @ w2.t, [K], g2.t)[:, 0]
    return y, fn


case("Head-class-token-block", False)(_class_token_block)


def test_the_class_token_is_selected_before_the_token_wise_layers():
    """The read-out Gather is moved above the MLP and the norms: they run on [N, K], one row."""
    c = classifier(_class_token_block)
    graph = explanation_graph(c.model)
    gathers = [n for n in graph.graph.node if n.op_type == "Gather" and not n.name.startswith("onnxcam")]
    assert gathers and all("/selected" in n.output[0] for n in gathers)
    norms = [n for n in graph.graph.node if n.op_type == "LayerNormalization"]
    assert len(norms) == 2 and all(n.output[0].endswith("/selected") for n in norms)
    check_against_torch(c)


# The engine: branches, fan-out, Softmax at the end, head path, powers
# ---------------------------------------------------------------------------------------------
def test_branch_not_depending_on_target_is_left_alone():
    """A Cos (no rule) on an image-only branch that reaches the scores, and a Cos on the
    target that only feeds another output: neither is differentiated, export succeeds; the
    head path takes the image-only branch from the image of each row (``head_image_index``)."""
    side = {}

    def head(net, a):
        w = net.param([2, 3, 3, 3], 0.3)
        branch = net.op("Cos", net.op("Conv", "image", w, pads=[1, 1, 1, 1]))    # [N, 2, h, w], image only
        net.op("Cos", a, out="aux")                                              # target → aux output only
        side["w"] = w

        def fn(t):
            value = side.get("value", torch.zeros(t.shape[0], 2, H, W, dtype=t.dtype))
            return torch.cat([t, value], 1)
        return net.op("Concat", a, branch, axis=1), fn

    c = classifier(head, extra_outputs=("aux",))
    side["value"] = torch.cos(F.conv2d(torch.from_numpy(images(c)).double(), side["w"].t, padding=1))
    graph, out, g = check_against_torch(c)
    assert "head_logits" in out and "head_image_index" in {i.name for i in graph.graph.input}
    assert metadata(graph)["onnxcam.head_piecewise_linear"] == "true"
    assert [n.op_type for n in graph.graph.node].count("Cos") == 1   # the aux branch is gone, no Sin added
    assert not any(n.op_type == "Sin" for n in graph.graph.node)


def test_fan_out_accumulates_gradients():
    """A feeds two branches (Relu → Conv and GAP → Mul) that are summed."""
    def head(net, a):
        c1, f1 = _conv(cout=K, pads=(1, 1, 1, 1))(net, net.op("Relu", a))
        g, gfn = _gap_of(net, a)
        w = net.param([K, 1, 1])
        y = net.op("Add", c1, net.op("Mul", g, w))
        return y, lambda t: f1(torch.relu(t)) + gfn(t) * w.t

    graph, out, g = check_against_torch(classifier(head))
    assert metadata(graph)["onnxcam.head_piecewise_linear"] == "true"


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_output_scores_are_its_input(op):
    """A source ending in Softmax/LogSoftmax: S (``logits``) is that op's input."""
    def head(net, a):
        return net.op("GlobalAveragePool", a), lambda t: t.mean((2, 3), keepdim=True)

    net = Net()
    torch_stem = stem(net)
    y, fn = head(net, "A")
    torch_head = tail(net, y, fn, (1, K, H, W), out="scores")
    net.op(op, "scores", axis=1, out="logits")     # probabilities, named "logits" by the source
    c = Classifier(net.model(["logits"]), torch_stem, torch_head, net)
    graph, out, g = check_against_torch(c)
    assert metadata(graph)["onnxcam.head_piecewise_linear"] == "true"


def _head_graph(head, **kw):
    c = classifier(head, **kw)
    graph = explanation_graph(c.model)
    x = images(c)
    return c, graph, x


def _split_gather(net, a):
    s0, s1 = net.op("Split", a, net.const([1, 3]), axis=1, outputs=2)
    y = net.op("Gather", net.op("Concat", s1, s0, axis=1), net.const([0, 1, 1]), axis=1)
    return y, lambda t: torch.cat([t[:, 1:], t[:, :1]], 1)[:, [0, 1, 1]]


HEADS = {
    "cnn": _cnn_head,
    "maxpool": _max_pool(k=(3, 3), p=(1, 1), ceil=1),
    "attention": _attention,
    "split-gather": _split_gather,
    "sigmoid": lambda net, a: (net.op("Relu", net.op("Sigmoid", a)), lambda t: torch.relu(torch.sigmoid(t))),
    "softmax": _softmax("Softmax", 1),
    "layernorm": _layer_norm(1),
    "x*x": lambda net, a: (net.op("Relu", net.op("Mul", a, a)), lambda t: torch.relu(t * t)),
    "relu-then-x*w": lambda net, a: (lambda w: (net.op("Mul", net.op("Relu", a), w), lambda t: torch.relu(t) * w.t))(
        net.param([K, 1, 1])),
}


@pytest.mark.parametrize("name", ["cnn", "maxpool", "attention", "split-gather"])
def test_head_logits_and_powers(name):
    c = classifier(HEADS[name])
    graph = explanation_graph(c.model)
    x = images(c)
    assert "head_activations" in [i.name for i in graph.graph.input]
    assert metadata(graph).get("onnxcam.head_input") == "head_activations"
    out = run(graph, {"image": x, "class_index": CLASS_INDEX, **head_feed(graph)})
    np.testing.assert_allclose(out["gradients_pow2"], out["gradients"] ** 2, rtol=1e-6, atol=0)
    np.testing.assert_allclose(out["gradients_pow3"], out["gradients"] ** 3, rtol=1e-5, atol=0)
    # head_logits of the graph's own activations are its logits (also with another batch size)
    again = run(graph, {"image": x, "class_index": CLASS_INDEX, "head_activations": out["activations"]})
    np.testing.assert_allclose(again["head_logits"], out["logits"], rtol=1e-5, atol=1e-5)
    doubled = np.concatenate([out["activations"], out["activations"][:2]])
    again = run(graph, {"image": x, "class_index": CLASS_INDEX, "head_activations": doubled})
    np.testing.assert_allclose(again["head_logits"], np.concatenate([out["logits"], out["logits"][:2]]),
                               rtol=1e-5, atol=1e-5)
    # and zeroing a channel changes them the way the torch head says
    ablated = out["activations"].copy()
    ablated[:, 1] = 0
    again = run(graph, {"image": x, "class_index": CLASS_INDEX, "head_activations": ablated})
    with torch.no_grad():
        want = c.head(torch.from_numpy(ablated).double()).numpy()
    np.testing.assert_allclose(again["head_logits"], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,linear", [
    ("cnn", "true"), ("maxpool", "true"), ("sigmoid", "false"), ("softmax", "false"),
    ("layernorm", "false"), ("x*x", "false"), ("relu-then-x*w", "true"), ("attention", "false"),
])
def test_head_piecewise_linear_metadata(name, linear):
    graph = explanation_graph(classifier(HEADS[name]).model)
    assert metadata(graph)["onnxcam.head_piecewise_linear"] == linear


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", case)
def test_rule_matches_torch_autograd(spec):
    check_case(spec)
