"""`onnxcam triton-repo`: the written config.pbtxt parses into Triton's ModelConfig protobuf (as
shipped in tritonclient) and describes every input and output of the graph; the model file
loads in onnxruntime; an existing model directory is never replaced without --overwrite."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from onnxcam.runtime.triton_repo import TRITON_DTYPES, default_model_name
from cli_helpers import run_cli as run  # noqa: E402

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny.cam.onnx"


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def parse_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    cfg = model_config_pb2.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(encoding="utf-8"), cfg)
    return cfg


def expected_dims(shape: list, batching: bool) -> tuple[list[int], list[int] | None]:
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in (shape[1:] if batching else shape)]
    return ([1], []) if not dims else (dims, None)


def check_io(cfg: model_config_pb2.ModelConfig, graph: Path) -> None:
    """Every graph input and output with its dtype and dims. Ablation-CAM's head path (the
    overridable initializer head_activations → head_logits) only without batching."""
    sess = session(graph)
    batching = cfg.max_batch_size > 0
    head = sess.get_modelmeta().custom_metadata_map.get("onnxcam.head_input")
    inputs = sess.get_inputs() + ([] if batching else [i for i in sess.get_overridable_initializers() if i.name == head])
    outputs = [o for o in sess.get_outputs() if o.name != "head_logits"]
    outputs += [] if batching else [o for o in sess.get_outputs() if o.name == "head_logits"]
    for entries, values in ((cfg.input, inputs), (cfg.output, outputs)):
        assert [e.name for e in entries] == [v.name for v in values]
        for e, v in zip(entries, values):
            assert model_config_pb2.DataType.Name(e.data_type) == TRITON_DTYPES[v.type], e.name
            dims, reshape = expected_dims(list(v.shape), batching)
            assert list(e.dims) == dims, (e.name, v.shape)
            if reshape is None:
                assert not e.HasField("reshape"), e.name
            else:
                assert e.HasField("reshape") and list(e.reshape.shape) == reshape, e.name
            if isinstance(e, model_config_pb2.ModelInput):
                assert e.optional == (v.name == head), e.name
    if batching:
        assert "head_logits" not in [o.name for o in cfg.output]
        assert head not in [i.name for i in cfg.input]


def backend_load_checks(cfg: model_config_pb2.ModelConfig, model_file: Path) -> None:
    """The load-time checks of Triton's onnxruntime backend (ModelInstanceState::ValidateInputs /
    ValidateOutputs and CompareDimsSupported in triton-inference-server/onnxruntime_backend),
    replayed on onnxruntime's view of the model: non-optional inputs = the model's inputs,
    optional inputs only without batching and only for overridable initializers, data types,
    and dims (the reshape when given) against the model's shape, -1 standing for dynamic."""
    sess = session(model_file)
    onnx_dims = lambda v: [d if isinstance(d, int) and d > 0 else -1 for d in v.shape]  # noqa: E731
    model_inputs = {v.name: v for v in sess.get_inputs()}
    initializers = {v.name: v for v in sess.get_overridable_initializers()}
    assert sum(not i.optional for i in cfg.input) == len(model_inputs)
    for ios, known, exact in ((cfg.input, {**model_inputs, **initializers}, False),
                              (cfg.output, {v.name: v for v in sess.get_outputs()}, True)):
        for io in ios:
            assert io.name in known, io.name
            if isinstance(io, model_config_pb2.ModelInput) and io.optional:
                assert cfg.max_batch_size == 0 and io.name in initializers, io.name
            v = known[io.name]
            assert TRITON_DTYPES[v.type] == model_config_pb2.DataType.Name(io.data_type), io.name
            dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
            model = onnx_dims(v)
            if cfg.max_batch_size > 0:
                assert model and model[0] == -1, f"{io.name}: batching needs a dynamic first axis, model {model}"
                dims = [-1] + dims
            assert len(model) == len(dims), (io.name, model, dims)
            assert all(m == d for m, d in zip(model, dims) if exact or m != -1), (io.name, model, dims)


def test_tiny_repository(tmp_path: Path) -> None:
    result = run("triton-repo", TINY, "-o", tmp_path / "repo")
    assert result.exit_code == 0, result.stderr
    model_dir = tmp_path / "repo" / "tiny"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert [p.name for p in (tmp_path / "repo").iterdir()] == ["tiny"]  # no staging leftovers
    assert "head_logits (Ablation-CAM's head-only path) left out" in result.stderr

    cfg = parse_config(model_dir)
    assert cfg.name == "tiny" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 8
    check_io(cfg, TINY)
    by_name = {t.name: t for t in [*cfg.input, *cfg.output]}
    assert list(by_name["input"].dims) == [3, 32, 32] and by_name["input"].data_type == model_config_pb2.TYPE_FP32
    assert by_name["class_index"].data_type == model_config_pb2.TYPE_INT64
    assert list(by_name["class_index"].dims) == [1] and list(by_name["class_index"].reshape.shape) == []
    assert list(by_name["gradients"].dims) == [16, 16, 16]
    assert by_name["logits"].label_filename == "labels.txt"
    assert cfg.HasField("dynamic_batching")
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert len(cfg.instance_group) == 1
    assert cfg.instance_group[0].count == 1 and cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU

    labels = session(TINY).get_modelmeta().custom_metadata_map["onnxcam.labels"]
    import json
    assert (model_dir / "labels.txt").read_text().splitlines() == json.loads(labels)

    model_file = model_dir / "1" / "model.onnx"
    assert model_file.read_bytes() == TINY.read_bytes()
    backend_load_checks(cfg, model_file)
    sess = session(model_file)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    logits, target = sess.run(["logits", "target"], {"input": x, "class_index": np.array([-1, 3], np.int64)})
    assert logits.shape == (2, 10) and target[1] == 3 and target[0] == logits[0].argmax()


def test_options_and_no_batching(tmp_path: Path) -> None:
    result = run("triton-repo", TINY, "-o", tmp_path, "--name", "cam-v2", "--max-batch-size", "0",
                 "--instances", "3", "--kind", "kind_gpu")
    assert result.exit_code == 0, result.stderr
    cfg = parse_config(tmp_path / "cam-v2")
    assert cfg.name == "cam-v2" and cfg.max_batch_size == 0
    assert not cfg.HasField("dynamic_batching")
    check_io(cfg, TINY)
    assert list(cfg.input[0].dims) == [-1, 3, 32, 32] and list(cfg.input[1].dims) == [-1]
    assert cfg.input[2].name == "head_activations" and cfg.input[2].optional
    assert cfg.output[-1].name == "head_logits" and list(cfg.output[-1].dims) == [-1, 10]
    assert cfg.instance_group[0].count == 3 and cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    backend_load_checks(cfg, tmp_path / "cam-v2" / "1" / "model.onnx")

    result = run("triton-repo", TINY, "-o", tmp_path, "--name", "b16", "--max-batch-size", "16",
                 "--preferred-batch-sizes", "2,16", "--max-queue-delay-us", "500")
    assert result.exit_code == 0, result.stderr
    cfg = parse_config(tmp_path / "b16")
    assert cfg.max_batch_size == 16 and list(cfg.dynamic_batching.preferred_batch_size) == [2, 16]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500


def test_no_overwrite_without_flag(tmp_path: Path) -> None:
    assert run("triton-repo", TINY, "-o", tmp_path).exit_code == 0
    model_dir = tmp_path / "tiny"
    marker = model_dir / "1" / "keep-me"
    marker.write_text("x")
    before = (model_dir / "config.pbtxt").read_bytes()

    result = run("triton-repo", TINY, "-o", tmp_path, "--max-batch-size", "4")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {model_dir}: already exists; pass --overwrite to replace it"]
    assert marker.exists() and (model_dir / "config.pbtxt").read_bytes() == before

    result = run("triton-repo", TINY, "-o", tmp_path, "--max-batch-size", "4", "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert not marker.exists()
    assert parse_config(model_dir).max_batch_size == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


@pytest.mark.parametrize("args, message", [
    (["no/such.cam.onnx"], "no/such.cam.onnx: no such file"),
    ([str(DATA / "coffee.jpg")], "onnxruntime cannot load it"),
    ([str(TINY), "--name", "../x"], "--name '../x'"),
    ([str(TINY), "--instances", "0"], "--instances 0"),
    ([str(TINY), "--max-batch-size", "4", "--preferred-batch-sizes", "8"], "within 1..4"),
])
def test_bad_usage_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = run("triton-repo", *args, "-o", tmp_path / "repo")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_default_name() -> None:
    assert default_model_name("a/b/resnet50.cam.onnx") == "resnet50"
    assert default_model_name("my model.onnx") == "my_model"
    assert default_model_name(".cam.onnx") == "model"


def fixed_batch_graph(path: Path) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["logits"])],
        "fixed", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_fixed_batch_axis(tmp_path: Path) -> None:
    graph = fixed_batch_graph(tmp_path / "fixed.onnx")
    # default: fall back to max_batch_size 0 and say why
    result = run("triton-repo", graph, "-o", tmp_path / "repo")
    assert result.exit_code == 0, result.stderr
    assert "max_batch_size 0: input has a fixed first axis [1, 3, 8, 8]" in result.stderr
    cfg = parse_config(tmp_path / "repo" / "fixed")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [1, 3, 8, 8] and list(cfg.output[0].dims) == [1, 3]
    check_io(cfg, graph)
    backend_load_checks(cfg, tmp_path / "repo" / "fixed" / "1" / "model.onnx")
    # an explicit request for batching is refused
    result = run("triton-repo", graph, "-o", tmp_path / "repo2", "--max-batch-size", "4")
    assert result.exit_code == 2
    assert "--max-batch-size 4 needs a dynamic batch axis, but input is [1, 3, 8, 8]" in result.stderr
    assert not (tmp_path / "repo2" / "fixed").exists()


@pytest.fixture(scope="module")
def raw_heatmap_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """make_tiny's CNN exported with --raw-input --heatmap gradcam."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("raw") / "tiny_raw.cam.onnx"
    sys.path.insert(0, str(DATA))
    try:
        result = run("export", "make_tiny:build", "-o", out, "--input-shape", "3,32,32",
                     "--raw-input", "--heatmap", "gradcam")
    finally:
        sys.path.remove(str(DATA))
    assert result.exit_code == 0, result.stderr
    return out


@pytest.mark.torch
def test_raw_input_heatmap_graph(tmp_path: Path, raw_heatmap_graph: Path) -> None:
    result = run("triton-repo", raw_heatmap_graph, "-o", tmp_path, "--name", "tiny_raw")
    assert result.exit_code == 0, result.stderr
    cfg = parse_config(tmp_path / "tiny_raw")
    check_io(cfg, raw_heatmap_graph)
    backend_load_checks(cfg, tmp_path / "tiny_raw" / "1" / "model.onnx")
    by_name = {t.name: t for t in [*cfg.input, *cfg.output]}
    assert by_name["input"].data_type == model_config_pb2.TYPE_UINT8 and list(by_name["input"].dims) == [32, 32, 3]
    assert by_name["heatmap"].data_type == model_config_pb2.TYPE_FP32 and list(by_name["heatmap"].dims) == [32, 32]
    # the copied model runs: pixels in, heatmap out
    sess = session(tmp_path / "tiny_raw" / "1" / "model.onnx")
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    heatmap, target = sess.run(["heatmap", "target"], {"input": pixels, "class_index": np.array([-1, 2], np.int64)})
    assert heatmap.shape == (2, 32, 32) and target[1] == 2
    assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0
