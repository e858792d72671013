"""``export(..., heatmap=METHOD, raw_input=True)``: the CAM, its post-processing and the pixel
preprocessing inside the graph.

- the baked ``heatmap`` equals ``Explainer.explain(x, method=M).heatmaps`` within 1e-4 for all six
  bakeable methods, on a torch source (torchvision resnet18, random weights, 3×64×64) and on ONNX
  sources (a real third-party fixture, read in place, and a hand-made NHWC/BGR classifier), with a
  mix of explicit and top-1 classes;
- a raw-input graph fed uint8 NHWC pixels gives the logits / heatmap of the ordinary graph fed the
  runtime's own preprocessing of the same pixels; ``Explainer`` feeds such graphs pixels (arrays,
  paths, PIL images) and refuses float batches with a clear error;
- the graphs pass the full ONNX checker and keep a dynamic batch;
- the CLI: ``onnxcam export SRC -o OUT --raw-input --heatmap gradcam`` end to end, ``onnxcam info``,
  one-line exit-2 errors for bad usage.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from onnxcam.exporter import ExportError, export  # noqa: E402
from onnxcam.exporter.bake_heatmap import BAKEABLE_METHODS, bake_heatmap  # noqa: E402
from onnxcam.exporter.raw_input import raw_input  # noqa: E402
from onnxcam.runtime import Explainer, ModelError  # noqa: E402
from onnxcam.runtime.images import PreprocessSpec, normalise_pixels  # noqa: E402
from cli_helpers import run_cli as _cli  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "models"
MOBILENET = FIXTURES / "mobilenet_v1_0.25_128_quant_dequant.onnx"  # NCHW 3×128×128, dynamic batch
needs_fixture = pytest.mark.skipif(not MOBILENET.is_file(), reason="../shared/fixtures is not beside the project")
CLASSES = np.array([-1, 4, -1, 2], np.int64)  # explicit and top-1 mixed
TOL = 1e-4


# -- helpers ---------------------------------------------------------------------------------------
def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, x: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
    session = _session(model)
    image = {p.key: p.value for p in model.metadata_props}["onnxcam.image_input"]
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {image: x, "class_index": classes})))


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _spec(model: onnx.ModelProto) -> PreprocessSpec:
    return PreprocessSpec.from_json(_meta(model)["onnxcam.preprocess"])


def _pixels(spec: PreprocessSpec, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *spec.size, 3), dtype=np.uint8)


def _nhwc_bgr_classifier(path: Path) -> Path:
    """A tiny NHWC classifier (tf2onnx style: Transpose → Conv → Relu → Conv → Relu → pool → Gemm)."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w1", rng.standard_normal((8, 3, 3, 3)) * 0.4), ("b1", rng.standard_normal(8) * 0.1),
        ("w2", rng.standard_normal((6, 8, 3, 3)) * 0.3), ("b2", rng.standard_normal(6) * 0.1),
        ("wf", rng.standard_normal((5, 6))), ("bf", rng.standard_normal(5) * 0.1))]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["scores"], transB=1),
    ]
    graph = helper.make_graph(nodes, "nhwc", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 12, 10, 3])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return _save(model, path)


def _check_graph(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    image = _meta(model)["onnxcam.image_input"]
    dim0 = next(i for i in model.graph.input if i.name == image).type.tensor_type.shape.dim[0]
    assert dim0.dim_param, "the batch axis must stay dynamic"


# -- sources ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_graph() -> onnx.ModelProto:
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    return export("torchvision:resnet18", input_shape=(3, 64, 64))


@pytest.fixture(scope="module")
def onnx_graph() -> onnx.ModelProto:
    if not MOBILENET.is_file():
        pytest.skip("../shared/fixtures is not beside the project")
    return export(str(MOBILENET))


@pytest.fixture(scope="module")
def nhwc_graph(tmp_path_factory) -> onnx.ModelProto:
    path = _nhwc_bgr_classifier(tmp_path_factory.mktemp("nhwc") / "nhwc.onnx")
    return export(str(path), "features", mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), bgr=True)


@pytest.fixture(params=["torch", "onnx", "nhwc"])
def graph(request) -> onnx.ModelProto:
    return request.getfixturevalue(f"{request.param}_graph")


# -- the baked heatmap -------------------------------------------------------------------------------
def test_baked_heatmap_equals_the_runtime_for_every_method(graph, tmp_path) -> None:
    explainer = Explainer(_save(graph, tmp_path / "plain.cam.onnx"), providers=["CPUExecutionProvider"])
    spec = _spec(graph)
    x = normalise_pixels(_pixels(spec, len(CLASSES)), spec)
    for method in BAKEABLE_METHODS:
        baked = bake_heatmap(graph, method)
        _check_graph(baked)
        assert _meta(baked)["onnxcam.heatmap_method"] == method
        out = _run(baked, x, CLASSES)
        ref = explainer.explain(x, method=method, class_index=CLASSES)
        assert out["heatmap"].shape == (len(CLASSES), *spec.size) and out["heatmap"].dtype == np.float32
        np.testing.assert_array_equal(out["target"], ref.class_index)
        assert ref.heatmaps.max() > 0.5, f"{method}: a degenerate reference map proves nothing"
        err = float(np.abs(out["heatmap"] - ref.heatmaps).max())
        assert err <= TOL, f"{method}: baked heatmap differs from the runtime by {err:.2e}"
        for name in ("logits", "activations", "gradients", "gradients_pow2", "gradients_pow3"):
            assert name in out  # every other output stays


def test_export_api_bakes_and_records_metadata(onnx_graph) -> None:
    model = export(str(MOBILENET), heatmap="hirescam")
    assert _meta(model)["onnxcam.heatmap_method"] == "hirescam"
    assert [o.name for o in model.graph.output][-1] == "heatmap"
    with pytest.raises(ExportError, match="choose from gradcam, gradcam\\+\\+"):
        export(str(MOBILENET), heatmap="scorecam")
    with pytest.raises(ExportError, match="input_gradients=True"):
        export(str(MOBILENET), raw_input=True, input_gradients=True)
    with_input_gradients = export(str(MOBILENET), input_gradients="guided")
    with pytest.raises(ExportError, match="input_gradients=True"):  # the graph-level step checks too
        raw_input(with_input_gradients)


# -- raw pixel input ---------------------------------------------------------------------------------
def test_raw_input_graph_equals_the_ordinary_graph_on_the_runtimes_preprocessing(graph, tmp_path) -> None:
    method = "gradcam++"
    plain = bake_heatmap(graph, method)
    raw = raw_input(plain)
    _check_graph(raw)
    meta = _meta(raw)
    assert meta["onnxcam.raw_input"] == "true" and meta["onnxcam.preprocess"] == _meta(graph)["onnxcam.preprocess"]
    spec = _spec(graph)
    image = next(i for i in raw.graph.input if i.name == meta["onnxcam.image_input"])
    assert image.name == _meta(graph)["onnxcam.image_input"]
    assert image.type.tensor_type.elem_type == TensorProto.UINT8
    assert [d.dim_value for d in image.type.tensor_type.shape.dim][1:] == [*spec.size, 3]

    pixels = _pixels(spec, len(CLASSES), seed=3)
    got = _run(raw, pixels, CLASSES)
    want = _run(plain, normalise_pixels(pixels, spec), CLASSES)
    scale = np.abs(want["logits"]).max()
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=TOL, atol=TOL * scale)
    np.testing.assert_array_equal(got["target"], want["target"])
    np.testing.assert_allclose(got["heatmap"], want["heatmap"], rtol=0, atol=TOL)
    for batch in (1, 3):  # dynamic batch
        assert _run(raw, pixels[:batch], CLASSES[:batch])["heatmap"].shape == (batch, *spec.size)

    # the runtime on the raw graph: pixels in, the ordinary graph's numbers out
    raw_ex = Explainer(_save(raw, tmp_path / "raw.cam.onnx"), providers=["CPUExecutionProvider"])
    plain_ex = Explainer(_save(plain, tmp_path / "plain.cam.onnx"), providers=["CPUExecutionProvider"])
    assert raw_ex.info.raw_input and raw_ex.info.layout == "NHWC" and raw_ex.info.heatmap_method == method
    res = raw_ex.explain(pixels, method="layercam", class_index=CLASSES)
    ref = plain_ex.explain(normalise_pixels(pixels, spec), method="layercam", class_index=CLASSES)
    np.testing.assert_allclose(res.heatmaps, ref.heatmaps, rtol=0, atol=TOL)
    np.testing.assert_allclose(res.logits, ref.logits, rtol=TOL, atol=TOL * scale)
    res = raw_ex.explain(pixels, method=method, class_index=CLASSES)
    np.testing.assert_allclose(res.heatmaps, got["heatmap"], rtol=0, atol=TOL)


def test_runtime_feeds_raw_graphs_pixels_from_files_and_pil_images(onnx_graph, tmp_path) -> None:
    raw = _save(raw_input(bake_heatmap(onnx_graph, "gradcam")), tmp_path / "raw.cam.onnx")
    plain = _save(onnx_graph, tmp_path / "plain.cam.onnx")
    rng = np.random.default_rng(5)
    photos = [Image.fromarray(rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))]
    photos[0].save(tmp_path / "a.png")
    inputs = [tmp_path / "a.png", photos[1]]
    raw_ex, plain_ex = (Explainer(p, providers=["CPUExecutionProvider"]) for p in (raw, plain))
    pixels, geometry = raw_ex.prepare(inputs)
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 128, 128, 3)
    got = raw_ex.explain(inputs, method="gradcam", class_index=[-1, 2])
    want = plain_ex.explain(inputs, method="gradcam", class_index=[-1, 2])
    np.testing.assert_allclose(got.heatmaps, want.heatmaps, rtol=0, atol=TOL)
    assert got.geometry == want.geometry == geometry
    assert got.heatmaps_on_original()[0].shape == (90, 150)

    x = normalise_pixels(pixels, raw_ex.info.preprocess)
    with pytest.raises(ValueError, match="takes raw uint8 RGB pixels \\[N, 128, 128, 3\\].*got a float32 batch"):
        raw_ex.explain(x)
    with pytest.raises(ValueError, match="takes uint8 RGB pixels"):
        raw_ex.explain(pixels[:, :64])
    with pytest.raises(ModelError, match="raw_input=True"):
        raw_ex.explain(pixels, method="scorecam")
    assert "scorecam" not in raw_ex.available_methods and "ablationcam" in raw_ex.available_methods
    ablation = raw_ex.explain(pixels, method="ablationcam", class_index=[-1, 2])
    np.testing.assert_allclose(ablation.heatmaps, plain_ex.explain(x, method="ablationcam", class_index=[-1, 2]).heatmaps,
                               rtol=0, atol=TOL)


# -- command line ------------------------------------------------------------------------------------


@needs_fixture
def test_cli_export_raw_input_heatmap_end_to_end(tmp_path) -> None:
    out = tmp_path / "mnv1.cam.onnx"
    result = _cli("export", MOBILENET, "-o", out, "--raw-input", "--heatmap", "gradcam")
    assert result.exit_code == 0, result.stderr
    assert "baked heatmap: gradcam" in result.stdout and "raw input: input uint8" in result.stdout
    model = onnx.load(str(out))
    _check_graph(model)
    meta = _meta(model)
    assert meta["onnxcam.heatmap_method"] == "gradcam" and meta["onnxcam.raw_input"] == "true"

    session = _session(model)
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    assert inputs["input"].type == "tensor(uint8)" and inputs["input"].shape[1:] == [128, 128, 3]
    assert outputs["heatmap"].type == "tensor(float)" and outputs["heatmap"].shape[1:] == [128, 128]
    assert outputs["logits"].type == "tensor(float)" and outputs["target"].type == "tensor(int64)"
    pixels = _pixels(_spec(model), 2)
    heatmap, target = session.run(["heatmap", "target"], {"input": pixels, "class_index": np.array([-1, 9])})
    plain = Explainer(_save(export(str(MOBILENET)), tmp_path / "plain.cam.onnx"), providers=["CPUExecutionProvider"])
    ref = plain.explain(normalise_pixels(pixels, _spec(model)), "gradcam", class_index=[-1, 9])
    np.testing.assert_allclose(heatmap, ref.heatmaps, rtol=0, atol=TOL)
    np.testing.assert_array_equal(target, ref.class_index)

    info = _cli("info", out)
    assert info.exit_code == 0, info.stderr
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in info.stdout.splitlines()
             if ":" in line and not line.startswith(" ")}
    assert lines["raw input"].startswith("yes (input takes uint8 RGB pixels [N, 128, 128, 3]")
    assert lines["baked heatmap"] == "gradcam (output heatmap)"
    assert "scorecam" not in lines["methods"]

    photo = tmp_path / "photo.png"
    Image.fromarray(pixels[0]).save(photo)
    explained = _cli("explain", out, photo, "--out", tmp_path / "maps", "--save-npy")
    assert explained.exit_code == 0, explained.stderr
    np.testing.assert_allclose(np.load(tmp_path / "maps" / "photo.gradcam.npy"), ref.heatmaps[0], rtol=0, atol=TOL)


@needs_fixture
def test_cli_refuses_what_raw_input_graphs_cannot_do(tmp_path) -> None:
    out = tmp_path / "raw.cam.onnx"
    export(str(MOBILENET), raw_input=True, out=out)
    photo = tmp_path / "photos" / "a.png"
    photo.parent.mkdir()
    Image.fromarray(_pixels(PreprocessSpec(size=(40, 50)), 1)[0]).save(photo)
    for args in (["explain", out, photo, "--method", "scorecam", "--out", tmp_path / "maps"],
                 ["evaluate", out, photo.parent, "--out", tmp_path / "eval"]):
        result = _cli(*args)
        assert result.exit_code == 2, result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "--raw-input" in lines[0], lines


def test_explainer_takes_the_baked_method_from_the_graph(onnx_graph, tmp_path, monkeypatch) -> None:
    import onnxcam.runtime.explainer as explainer_module

    explainer = Explainer(_save(bake_heatmap(onnx_graph, "xgradcam"), tmp_path / "b.cam.onnx"),
                          providers=["CPUExecutionProvider"])
    x = normalise_pixels(_pixels(_spec(onnx_graph), 2), _spec(onnx_graph))
    numpy_maps = explainer_module.postprocess(explainer.explain(x, "xgradcam").raw, _spec(onnx_graph).size)
    calls = []
    monkeypatch.setattr(explainer_module, "postprocess", lambda raw, size: calls.append(raw) or np.zeros(0))
    baked = explainer.explain(x, "xgradcam")
    assert calls == [] and baked.heatmaps.shape == numpy_maps.shape
    np.testing.assert_allclose(baked.heatmaps, numpy_maps, rtol=0, atol=TOL)
    explainer.explain(x, "gradcam")
    assert len(calls) == 1  # other methods still post-process in numpy


@needs_fixture
@pytest.mark.parametrize("args,message", [
    (["--heatmap", "eigencam"], "--heatmap eigencam: cannot bake this method; choose from gradcam, gradcam++, "
                                "xgradcam, hirescam, layercam, gradcam-elementwise, gradcam-counterfactual"),
    (["--raw-input", "--input-gradients"], "--raw-input cannot be combined with --input-gradients (input gradients "
                                           "are taken w.r.t. the normalised float input)"),
])
def test_cli_bad_usage_is_one_line_and_exit_2(tmp_path, args, message) -> None:
    result = _cli("export", MOBILENET, "-o", tmp_path / "x.cam.onnx", *args)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "x.cam.onnx").exists()
