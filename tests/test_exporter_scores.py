"""Which output holds the class scores: chosen by the user (``scores=`` / ``--scores``) or found
without guessing — refused when several ``[N, C]`` outputs could be the scores."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from exporter_helpers import CLASS_INDEX, Net, callable_source, assert_gradients_close, head_feed, run, stem  # noqa: E402
from onnxcam.exporter import ExportError, export  # noqa: E402
from onnxcam.exporter.torch_export import score_selector  # noqa: E402


def two_outputs(first: str, second: str, activation: str | None = None):
    """image → Conv → A → ReLU → GlobalAveragePool → Flatten = ``first`` [N, 4] (an embedding) →
    Gemm → ``second`` [N, 5] (the logits, or ``activation`` of them); with a torch twin of A → logits."""
    net = Net(seed=3)
    torch_stem = stem(net)
    pooled = net.op("GlobalAveragePool", net.op("Relu", "A"))
    net.op("Flatten", pooled, axis=1, out=first)
    w, b = net.param([5, 4], 0.7), net.param([5], 0.1)
    if activation is None:
        net.op("Gemm", first, w, b, transB=1, out=second)
    else:
        net.op(activation, net.op("Gemm", first, w, b, transB=1, out="scores_inside"), out=second, **(
            {"axis": 1} if activation != "Sigmoid" else {}))

    def head(a: torch.Tensor) -> torch.Tensor:
        return torch.relu(a).mean((2, 3)) @ w.t.T + b.t

    return net.model([first, second]), torch_stem, head, net


@pytest.fixture()
def export_model(tmp_path: Path):
    """Save an ONNX classifier and export it at target ``A``."""
    def run_export(model: onnx.ModelProto, **kwargs) -> onnx.ModelProto:
        path = tmp_path / "model.onnx"
        onnx.save(model, str(path))
        return export(str(path), target_layer="A", mean=[0, 0, 0], std=[1, 1, 1], **kwargs)
    return run_export


@pytest.fixture()
def explain(export_model):
    """Export and run on a seeded batch of 3 with mixed classes → (graph, outputs, x)."""
    def run_explain(model: onnx.ModelProto, **kwargs):
        graph = export_model(model, **kwargs)
        x = np.random.default_rng(1).standard_normal((3, 3, 6, 7)).astype(np.float32)
        return graph, run(graph, {"image": x, "class_index": CLASS_INDEX, **head_feed(graph)}), x
    return run_explain


def check_scores(out: dict[str, np.ndarray], x: np.ndarray, torch_stem, head) -> None:
    """logits = the pre-activation scores, gradients = torch.autograd at the graph's own A."""
    with torch.no_grad():
        expected = head(torch_stem(torch.from_numpy(x).double())).numpy()
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-4, atol=1e-5)
    a = torch.from_numpy(out["activations"]).double().requires_grad_()
    head(a)[torch.arange(len(x)), torch.from_numpy(out["target"])].sum().backward()
    assert_gradients_close(out["gradients"], a.grad.numpy())


def test_two_score_shaped_outputs_are_refused_with_both_listed(export_model) -> None:
    model, *_ = two_outputs("output_0", "output_1")
    with pytest.raises(ExportError) as err:
        export_model(model)
    message = str(err.value)
    assert "output_0 [2, 4]" in message and "output_1 [2, 5]" in message and "scores=OUTPUT" in message
    assert "--scores OUTPUT" in err.value.for_cli()


@pytest.mark.parametrize("names", [("output_0", "output_1"), ("embedding", "logits")])
def test_scores_names_the_output(names, explain) -> None:
    model, torch_stem, head, _ = two_outputs(*names)
    graph, out, x = explain(model, scores=names[1])
    assert out["logits"].shape == (3, 5)
    check_scores(out, x, torch_stem, head)


def test_an_output_named_logits_that_feeds_nothing_is_the_scores(explain) -> None:
    model, torch_stem, head, _ = two_outputs("embedding", "logits")
    _, out, x = explain(model)
    check_scores(out, x, torch_stem, head)


def test_the_embedding_can_be_chosen_too_and_is_then_explained(explain) -> None:
    model, *_ = two_outputs("embedding", "logits")
    _, out, _ = explain(model, scores="embedding")
    assert out["logits"].shape == (3, 4)


@pytest.mark.parametrize("activation", ["Softmax", "LogSoftmax", "Sigmoid"])
def test_a_final_activation_is_looked_through_to_its_logits(activation: str, explain) -> None:
    model, torch_stem, head, _ = two_outputs("embedding", "probabilities", activation)
    _, out, x = explain(model, scores="probabilities")
    check_scores(out, x, torch_stem, head)


def one_score_column(activation: str | None):
    """image → Conv → A → ReLU → GlobalAveragePool → Flatten → Gemm = s [N, 1] (→ ``activation``):
    a binary classifier, with the torch twin of A → [−s, s]."""
    net = Net(seed=4)
    torch_stem = stem(net)
    pooled = net.op("Flatten", net.op("GlobalAveragePool", net.op("Relu", "A")), axis=1)
    w, b = net.param([1, 4], 0.7), net.param([1], 0.1)
    net.op("Gemm", pooled, w, b, transB=1, out="score" if activation is None else "score_inside")
    if activation is not None:
        net.op(activation, "score_inside", out="score")

    def head(a: torch.Tensor) -> torch.Tensor:
        s = torch.relu(a).mean((2, 3)) @ w.t.T + b.t
        return torch.cat([-s, s], 1)

    return net.model(["score"]), torch_stem, head


@pytest.mark.parametrize("activation", [None, "Sigmoid"])
def test_one_score_column_explains_class_1_as_the_logit_and_class_0_as_its_negation(
        activation: str | None, export_model) -> None:
    model, torch_stem, head = one_score_column(activation)
    graph = export_model(model)
    x = np.random.default_rng(1).standard_normal((4, 3, 6, 7)).astype(np.float32)
    out = run(graph, {"image": x, "class_index": np.array([1, 0, -1, -1], np.int64), **head_feed(graph)})
    assert out["logits"].shape == (4, 2) and out["head_logits"].shape == (1, 2)
    np.testing.assert_allclose(out["logits"][:, 0], -out["logits"][:, 1])
    assert list(out["target"][:2]) == [1, 0]
    assert list(out["target"][2:]) == list((out["logits"][2:, 1] > 0).astype(int))
    check_scores(out, x, torch_stem, head)


def test_unknown_scores_name_lists_the_outputs(export_model) -> None:
    model, *_ = two_outputs("embedding", "logits")
    with pytest.raises(ExportError, match="no such output.*embedding \\[2, 4\\], logits \\[2, 5\\]"):
        export_model(model, scores="logit")


# -- torch sources ------------------------------------------------------------------------------
def test_score_selector_reads_tuples_dicts_and_model_outputs() -> None:
    emb, logits = torch.zeros(2, 8), torch.ones(2, 3)
    assert score_selector(logits)(logits) is logits
    assert score_selector({"logits": logits, "hidden": emb})({"logits": logits, "hidden": emb}) is logits
    assert score_selector((logits, torch.zeros(2, 3, 4, 4)))((logits, 0)) is logits  # the only 2-D item
    assert score_selector((emb, logits), "1")((emb, logits)) is logits
    with pytest.raises(ExportError, match=r"0: \[2, 8\], 1: \[2, 3\].*scores=INDEX"):
        score_selector((emb, logits))
    with pytest.raises(ExportError, match="without 'logits'.*hidden \\[2, 8\\]"):
        score_selector({"hidden": emb})
    transformers = pytest.importorskip("transformers")
    out = transformers.modeling_outputs.ImageClassifierOutput(logits=logits)
    assert score_selector(out)(out) is logits


TUPLE_NET = textwrap.dedent("""
    import torch
    from torch import nn

    class EmbeddingAndLogits(nn.Module):
        '''conv, relu, mean pool; returns (embedding [N, 6], logits [N, 4])'''
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(6, 4)

        def forward(self, x):
            embedding = torch.relu(self.conv(x)).mean((2, 3))
            return embedding, self.fc(embedding)

    build = EmbeddingAndLogits
""")


@pytest.fixture()
def tuple_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return callable_source(tmp_path, monkeypatch, "tuple_net", TUPLE_NET)


def test_torch_tuple_output_is_refused_then_explained_with_scores(tuple_source: str) -> None:
    with pytest.raises(ExportError, match=r"0: \[2, 6\], 1: \[2, 4\]"):
        export(tuple_source, target_layer="conv", input_shape=(3, 16, 16))
    graph = export(tuple_source, target_layer="conv", input_shape=(3, 16, 16), scores="1", verify=True)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    out = run(graph, {"input": x, "class_index": np.array([-1, 2, 0], np.int64)})
    import tuple_net

    model = tuple_net.build().eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(x))[1].numpy()
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-4, atol=1e-5)
