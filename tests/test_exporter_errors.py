"""Exporter failures a user can cause: one clear line, exit status 2, nothing overwritten.

Every case runs twice: through ``onnxcam export`` (click's CliRunner: exit code 2, exactly one
stderr line starting with ``error:``, no traceback) and through ``onnxcam.exporter.export``
(an ``ExportError`` with a one-line message).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("onnx_ir")
from click.testing import CliRunner  # noqa: E402

from exporter_helpers import Net, stem  # noqa: E402
from onnxcam.cli.main import main  # noqa: E402
from onnxcam.exporter import ExportError, export  # noqa: E402

pytestmark = pytest.mark.torch


# -- models ----------------------------------------------------------------------------------
def _classifier(bad_op: str | None = None) -> onnx.ModelProto:
    """image → conv1 → relu1 → conv2 → [bad_op] → conv3 → relu3 → GAP → Flatten → Gemm → logits,
    plus an ``aux`` output (Cos of conv1) that does not reach the scores."""
    net = Net(seed=0, image=(3, 8, 8))
    stem(net, out="conv1")
    net.op("Relu", "conv1", out="relu1")
    net.op("Conv", "relu1", net.param([4, 4, 3, 3], 0.3), pads=[1, 1, 1, 1], out="conv2")
    middle = "conv2"
    if bad_op == "GlobalMaxPool":   # squeeze-excitation with a max: conv2 · sigmoid(gmp(conv2))
        net.op("GlobalMaxPool", "conv2", out="gmp")
        net.op("Mul", "conv2", net.op("Sigmoid", "gmp"), out="bad")
        middle = "bad"
    elif bad_op == "Mod":
        net.op("Mod", "conv2", net.param([], values=1.5), fmod=1, out="bad")
        middle = "bad"
    elif bad_op is not None:
        net.op(bad_op, "conv2", out="bad")
        middle = "bad"
    net.op("Conv", middle, net.param([6, 4, 3, 3], 0.3), pads=[1, 1, 1, 1], out="conv3")
    net.op("Relu", "conv3", out="relu3")
    net.op("GlobalAveragePool", "relu3", out="pooled")
    net.op("Flatten", "pooled", axis=1, out="features")
    net.op("Gemm", "features", net.param([5, 6], 0.3), net.param([5], 0.1), transB=1, out="logits")
    net.op("Cos", "conv1", out="aux")
    return net.model(["logits", "aux"])


def _segmenter() -> onnx.ModelProto:
    """A segmentation-like model: the only output is [N, C, H, W]."""
    net = Net(seed=0, image=(3, 8, 8))
    stem(net, out="features")
    net.op("Conv", "features", net.param([5, 4, 1, 1], 0.3), out="masks")
    return net.model(["masks"])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sources")
    paths = {"good": d / "good.onnx", "segmenter": d / "segmenter.onnx", "random": d / "random.onnx",
             "text": d / "notes.txt", "text_onnx": d / "text.onnx", "empty": d / "empty.onnx"}
    onnx.save(_classifier(), str(paths["good"]))
    onnx.save(_segmenter(), str(paths["segmenter"]))
    for op in ("Cos", "Sin", "Mod", "GlobalMaxPool"):
        paths[op] = d / f"with_{op.lower()}.onnx"
        onnx.save(_classifier(op), str(paths[op]))
    paths["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    paths["text"].write_text("this is not a model\nat all\n")
    paths["text_onnx"].write_text("ir_version: 8\ngraph { name: 'not binary' }\n")
    paths["empty"].write_bytes(b"")
    return paths


# -- helpers ---------------------------------------------------------------------------------
def _cli_error(args: list[str]) -> str:
    """Run ``onnxcam export ...``; assert the contract's failure shape and return the message."""
    result = CliRunner().invoke(main, ["export", *args])
    stderr = result.stderr
    assert result.exit_code == 2, (result.exit_code, result.output, stderr, result.exception)
    assert "Traceback" not in stderr and "Traceback" not in result.stdout
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("error: ")
    return lines[0][len("error: "):]


def _api_error(source: str, **kw) -> str:
    with pytest.raises(ExportError) as info:
        export(source, **kw)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def _both(source: Path | str, out: Path, target: str | None = None, extra: list[str] = ()) -> tuple[str, str]:
    """The CLI's and the API's message for the same failure."""
    args = [str(source), "-o", str(out), *(["--target-layer", target] if target else []), *extra]
    cli = _cli_error(args)
    api = _api_error(str(source), target_layer=target, out=out, overwrite="--overwrite" in extra)
    return cli, api


# -- the control: a good export works --------------------------------------------------------
def test_good_export_works(files, tmp_path):
    out = tmp_path / "good.cam.onnx"
    result = CliRunner().invoke(main, ["export", str(files["good"]), "-o", str(out), "--target-layer", "conv2"])
    assert result.exit_code == 0, result.stderr
    assert "error" not in result.stderr
    graph = onnx.load(str(out))
    assert [o.name for o in graph.graph.output][:4] == ["logits", "target", "activations", "gradients"]
    model = export(str(files["good"]), target_layer="relu1")
    assert {p.key: p.value for p in model.metadata_props}["onnxcam.target_layer"] == "relu1"


# -- the failures ----------------------------------------------------------------------------
def test_unknown_target_lists_candidates(files, tmp_path):
    for message in _both(files["good"], tmp_path / "x.cam.onnx", target="conv"):
        assert "unknown target tensor 'conv'" in message
        assert "Candidates:" in message
        candidates = message.split("Candidates:")[1]
        assert "relu3" in candidates and "conv2" in candidates
        assert "did you mean" in message and "conv1" in message
    assert not (tmp_path / "x.cam.onnx").exists()


@pytest.mark.parametrize("op", ["Cos", "Sin", "Mod", "GlobalMaxPool"])
def test_operator_without_rule_names_op_node_and_working_targets(files, tmp_path, op):
    model = onnx.load(str(files[op]))
    node = next(n for n in model.graph.node if n.op_type == op)
    for message in _both(files[op], tmp_path / "x.cam.onnx", target="conv1"):
        assert f"operator {op}" in message
        assert f"'{node.name}'" in message
        assert "target layers that would work:" in message
        suggested = [s.strip() for s in message.split("target layers that would work:")[1].split(",")]
        assert "relu3" in suggested and "conv1" not in suggested and "conv2" not in suggested
    # the suggestions really work
    for target in suggested:
        export(str(files[op]), target_layer=target)


def test_target_that_is_not_a_feature_map(files, tmp_path):
    for message in _both(files["good"], tmp_path / "x.cam.onnx", target="features"):
        assert "features" in message and "[2, 6]" in message and "feature map [N, C, h, w]" in message


def test_target_the_scores_do_not_depend_on(files, tmp_path):
    for message in _both(files["good"], tmp_path / "x.cam.onnx", target="aux"):
        assert "do not depend on the target" in message and "aux" in message


def test_model_without_class_scores(files, tmp_path):
    for message in _both(files["segmenter"], tmp_path / "x.cam.onnx"):
        assert "no [N, C] score output" in message
        assert "masks [" in message          # the outputs it did find, with their shapes


@pytest.mark.parametrize("kind", ["random", "text", "text_onnx", "empty"])
def test_file_that_is_not_onnx(files, tmp_path, kind):
    for message in _both(files[kind], tmp_path / "x.cam.onnx"):
        assert "is not an ONNX model" in message
        assert files[kind].name in message


def test_missing_file(tmp_path):
    missing = tmp_path / "nowhere" / "model.onnx"
    for message in _both(missing, tmp_path / "x.cam.onnx"):
        assert "no such file" in message and "model.onnx" in message


def test_existing_output_is_not_overwritten(files, tmp_path):
    out = tmp_path / "taken.cam.onnx"
    out.write_bytes(b"precious")
    cli, api = _both(files["good"], out, target="conv2")
    assert "exists" in cli and "--overwrite" in cli  # the CLI names its flag,
    assert "exists" in api and "overwrite=True" in api and "--" not in api  # Python its parameter
    assert out.read_bytes() == b"precious"
    # a failing export with --overwrite does not destroy it either
    _cli_error([str(files["Cos"]), "-o", str(out), "--target-layer", "conv1", "--overwrite"])
    assert out.read_bytes() == b"precious"
    # and --overwrite replaces it when the export succeeds
    result = CliRunner().invoke(main, ["export", str(files["good"]), "-o", str(out), "--target-layer", "conv2",
                                       "--overwrite"])
    assert result.exit_code == 0, result.stderr
    assert onnx.load(str(out)).graph.output[0].name == "logits"


def test_unsupported_operator_with_the_default_target_is_one_line(files, tmp_path):
    """Without --target-layer the default (the last spatial map) avoids the Cos: it just works."""
    out = tmp_path / "auto.cam.onnx"
    result = CliRunner().invoke(main, ["export", str(files["Cos"]), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["onnxcam.target_layer"] == "relu3"
    assert "relu3" in result.stderr + result.stdout      # the chosen target is printed


def _small(extra=None) -> Net:
    """image [N, 3, 8, 8] → A → (``extra(net)`` → B) → GAP → Flatten → Gemm → logits."""
    net = Net(seed=0, image=(3, 8, 8))
    stem(net, out="A")
    last = extra(net) if extra else "A"
    net.op("GlobalAveragePool", last, out="pooled")
    net.op("Flatten", "pooled", axis=1, out="features")
    net.op("Gemm", "features", net.param([5, 4]), transB=1, out="logits")
    return net


def _symbolic(model: onnx.ModelProto, path) -> str:
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.Clear()
        dim.dim_param = "side"
    onnx.save(model, str(path))
    return str(path)


def test_symbolic_spatial_axes_stay_symbolic(tmp_path):
    """A fully convolutional source with symbolic H, W exports without --input-shape, and keeps
    them (tests/test_exporter_any_size.py checks the gradients at several sizes)."""
    source = _symbolic(_small().model(["logits"]), tmp_path / "symbolic.onnx")
    out = tmp_path / "x.cam.onnx"
    result = CliRunner().invoke(main, ["export", source, "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    image = onnx.load(str(out)).graph.input[0]
    assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ["N", 3, "side", "side"]


def test_symbolic_spatial_axes_that_do_not_run_at_the_probe_size_need_input_shape(tmp_path):
    net = Net(seed=0, image=(3, 8, 8))
    stem(net, out="A")
    net.op("Flatten", "A", axis=1, out="features")  # Gemm over 4·8·8 features: 8×8 only
    net.op("Gemm", "features", net.param([5, 4 * 8 * 8]), transB=1, out="logits")
    source = _symbolic(net.model(["logits"]), tmp_path / "symbolic.onnx")
    cli, api = _both(source, tmp_path / "x.cam.onnx")
    assert "--input-shape C,H,W" in cli and "'image' has a symbolic height and width" in cli
    assert "input_shape=C,H,W" in api and "224×224" in api
    result = CliRunner().invoke(main, ["export", source, "-o", str(tmp_path / "ok.cam.onnx"),
                                       "--input-shape", "3,8,8"])
    assert result.exit_code == 0, result.stderr


def test_operator_onnxruntime_does_not_know(tmp_path):
    def custom(net):
        net.nodes.append(onnx.helper.make_node("Foo", ["A"], ["B"], domain="com.example", name="foo"))
        return "B"
    model = _small(custom).model(["logits"])
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    source = tmp_path / "custom.onnx"
    onnx.save(model, str(source))
    for message in _both(source, tmp_path / "x.cam.onnx"):
        assert "onnxruntime cannot load the model" in message and "Foo" in message


def test_more_than_one_input(tmp_path):
    def second_input(net):
        net.extra_inputs.append(onnx.helper.make_tensor_value_info("meta", onnx.TensorProto.FLOAT, ["N", 4, 8, 8]))
        return net.op("Add", "A", "meta")
    source = tmp_path / "two_inputs.onnx"
    onnx.save(_small(second_input).model(["logits"]), str(source))
    for message in _both(source, tmp_path / "x.cam.onnx"):
        assert "one image input" in message and "meta" in message
