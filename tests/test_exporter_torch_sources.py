"""PyTorch sources end to end through `onnxcam export`: callables, shared modules, weights, errors."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
import onnxruntime as ort  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from exporter_helpers import callable_source  # noqa: E402
from onnxcam.cli.main import main  # noqa: E402
from onnxcam.exporter.verify import torch_reference  # noqa: E402

SHARED_RELU_NET = textwrap.dedent("""
    import torch
    from torch import nn

    class SharedReluNet(nn.Module):
        '''conv → relu → conv → relu (the same module twice) → pool → linear'''
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(12, 5)

        def forward(self, x):
            x = self.relu(self.conv2(self.relu(self.conv1(x))))
            return self.fc(x.mean((2, 3)))

    def build():
        torch.manual_seed(0)
        return SharedReluNet()
""")


@pytest.fixture()
def shared_relu_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return callable_source(tmp_path, monkeypatch, "shared_relu_net", SHARED_RELU_NET)


def _run(path: Path, x: np.ndarray, class_index: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x, "class_index": class_index})))


def test_module_called_twice_is_explained_at_its_last_call(shared_relu_source: str, tmp_path: Path) -> None:
    out = tmp_path / "net.cam.onnx"
    result = CliRunner().invoke(main, ["export", shared_relu_source, "-o", str(out), "--target-layer", "relu",
                                       "--input-shape", "3,32,32", "--verify"])
    assert result.exit_code == 0, result.output
    assert "runs 2 times" in result.output and "call 2 (the last)" in result.output

    import shared_relu_net

    model = shared_relu_net.build().eval()
    for batch in (1, 4):  # the batch axis is dynamic
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        class_index = np.array([-1, 3, -1, 0][:batch], np.int64)
        graph = _run(out, x, class_index)
        reference = torch_reference(model, "relu", 1, x, class_index)
        assert graph["activations"].shape == (batch, 12, 16, 16)  # the second call's output
        np.testing.assert_allclose(graph["activations"], reference["activations"], atol=1e-5)
        np.testing.assert_allclose(graph["gradients"], reference["gradients"],
                                   atol=1e-4 * np.abs(reference["gradients"]).max() + 1e-6)
        np.testing.assert_allclose(graph["gradients_pow3"], graph["gradients"] ** 3, rtol=1e-5, atol=1e-12)


def test_weights_file_is_loaded(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(3)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    weights = tmp_path / "r18.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "r18.cam.onnx"
    result = CliRunner().invoke(main, ["export", "torchvision:resnet18", "-o", str(out), "--weights", str(weights),
                                       "--input-shape", "3,64,64"])
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    graph = _run(out, x, np.array([-1, -1], np.int64))
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(graph["logits"], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["onnxcam.target_layer"] == "layer4" and meta["onnxcam.source"] == "torchvision:resnet18"
    assert "onnxcam.labels" not in meta  # 10 classes: not ImageNet


@pytest.mark.parametrize("args,needle", [
    (["torchvision:resnet18", "--target-layer", "layer9"], "layer9"),
    (["torchvision:resnet18", "--weights", "no/such/file.pth"], "file.pth"),
    (["torchvision:resnett18"], "resnet18"),
])
def test_torch_source_errors_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    result = CliRunner().invoke(main, ["export", *args, "-o", str(tmp_path / "x.cam.onnx")])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.stderr
    assert not (tmp_path / "x.cam.onnx").exists()


COS_NET = textwrap.dedent("""
    import torch
    from torch import nn

    class Wave(nn.Module):
        def forward(self, x):
            return torch.cos(x)

    class CosNet(nn.Module):
        '''conv → cos (no gradient rule) → conv → relu → mean → linear'''
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.wave = Wave()
            self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(self.block(self.wave(self.stem(x))).mean((2, 3)))

    def build():
        torch.manual_seed(0)
        return CosNet()
""")


def _refused_with_suggestions(source: str, reason: str) -> list[str]:
    """Export ``source`` at ``stem`` expecting ``reason`` in the one-line error; the targets it
    suggests (each checked to export and verify)."""
    from onnxcam.exporter import ExportError, export

    with pytest.raises(ExportError) as err:
        export(source, "stem", input_shape=(3, 16, 16))
    message = str(err.value)
    assert reason in message, message
    suggested = [s.strip() for s in message.split("target layers that would work:")[1].split(",")]
    assert suggested and "stem" not in suggested
    for target in suggested:  # the suggestions really work
        export(source, target, input_shape=(3, 16, 16), verify=True)
    return suggested


def test_operator_without_rule_is_named_by_its_module_with_module_targets_that_work(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    source = callable_source(tmp_path, monkeypatch, "cos_net", COS_NET)
    suggested = _refused_with_suggestions(source, "operator Cos in module 'wave' has no gradient rule")
    import cos_net

    modules = dict(cos_net.build().named_modules())
    assert all(s in modules for s in suggested)


BATCH_NET = COS_NET.replace("return torch.cos(x)", "return x - x.mean(0, keepdim=True)  # mixes the images")


def test_operator_across_the_batch_is_named_with_targets_after_it(tmp_path: Path, monkeypatch) -> None:
    source = callable_source(tmp_path, monkeypatch, "batch_net", BATCH_NET)
    _refused_with_suggestions(source, "operator ReduceMean in module 'wave' works along the batch axis")


@pytest.mark.parametrize("activation", ["torch.sigmoid(s)", "torch.softmax(s, 1)", "s.log_softmax(1)"])
def test_a_final_activation_is_looked_through_and_verified(activation: str, tmp_path: Path, monkeypatch) -> None:
    """A multi-label (Sigmoid) or Softmax head: the graph's logits are the pre-activation scores
    and --verify compares them with torch's pre-activation scores."""
    code = COS_NET.replace("return torch.cos(x)", "return x").replace(
        "return self.fc(self.block(self.wave(self.stem(x))).mean((2, 3)))",
        f"s = self.fc(self.block(self.wave(self.stem(x))).mean((2, 3)))\n        return {activation}")
    name = "head_net_" + "".join(c for c in activation if c.isalpha())
    source = callable_source(tmp_path, monkeypatch, name, code)
    from onnxcam.exporter import export

    graph = export(source, "block", input_shape=(3, 16, 16), verify=True)
    module = __import__(source.split(":")[0])
    net = module.build().eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": x, "class_index": np.array([-1, 3])})[0]
    with torch.no_grad():
        expected = net.fc(net.block(net.stem(torch.from_numpy(x))).mean((2, 3))).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
