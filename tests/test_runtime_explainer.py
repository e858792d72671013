"""Explainer end to end on the hand-written toy explanation graph (see test_runtime_toygraph).

The same weights in a torch nn.Sequential give pytorch-grad-cam 1.5.7's reference maps for all
ten methods, Score-CAM and Ablation-CAM included; the interface tests (batching, layouts, class
indices, bad models, providers) need neither torch nor onnx.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_runtime_toygraph import MEAN, STD, C, H, W, build_graph, photos, toy_weights

from onnxcam.runtime import ClassIndexError, Explainer, ModelError
from onnxcam.runtime.explainer import ALL_METHODS

TOL = 1e-4


def torch_toy(weights):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(640, C))
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(weights["wc"]))
        model[0].bias.copy_(torch.from_numpy(weights["bc"]))
        model[3].weight.copy_(torch.from_numpy(weights["wf"]))
        model[3].bias.copy_(torch.from_numpy(weights["bf"]))
    return model.eval()


def toy_photos() -> np.ndarray:
    """The photos resized to H×W, ImageNet-normalised, NCHW float32."""
    out = [(np.asarray(p.resize((W, H), Image.BILINEAR), np.float32) / 255 - MEAN) / STD for p in photos()]
    return np.stack(out).transpose(0, 3, 1, 2).astype(np.float32)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    w = toy_weights()
    return {"w": w, "dir": d, "path": build_graph(d / "toy.cam.onnx", w), "x": toy_photos()}


@pytest.fixture(scope="module")
def explainer(toy):
    return Explainer(toy["path"], providers=["CPUExecutionProvider"], intra_op_threads=1)


REQUESTED = [2, -1, 4]
REFERENCE_CLASSES = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
                     "hirescam": "HiResCAM", "layercam": "LayerCAM", "gradcam-elementwise": "GradCAMElementWise",
                     "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM", "scorecam": "ScoreCAM",
                     "ablationcam": "AblationCAM"}


def reference(toy, method, classes):
    cams = pytest.importorskip("pytorch_grad_cam")
    torch = pytest.importorskip("torch")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    model = torch_toy(toy["w"])
    targets = [ClassifierOutputTarget(int(c)) for c in classes]  # one per image
    with getattr(cams, REFERENCE_CLASSES[method])(model=model, target_layers=[model[1]]) as cam:
        return cam(input_tensor=torch.from_numpy(toy["x"]), targets=targets)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_matches_pytorch_grad_cam(toy, explainer, method):
    res = explainer.explain(toy["x"], method=method, class_index=REQUESTED)
    assert res.heatmaps.shape == (3, H, W) and res.heatmaps.dtype == np.float32
    assert res.class_index.dtype == np.int64 and res.logits.shape == (3, C)
    assert res.class_index[0] == 2 and res.class_index[2] == 4
    assert res.class_index[1] == res.logits[1].argmax()
    ref = reference(toy, method, res.class_index)
    assert ref.max() > 0.99, "degenerate reference map"
    if method.startswith("eigen"):  # pytorch-grad-cam's SVD sign is arbitrary: per image, either sign
        from onnxcam.runtime.postprocess import postprocess
        flipped = postprocess(-res.raw, (H, W))
        err = max(min(np.abs(res.heatmaps[i] - ref[i]).max(), np.abs(flipped[i] - ref[i]).max())
                  for i in range(3))
    else:
        err = np.abs(res.heatmaps - ref).max()
    assert err <= TOL


def test_logits_match_torch(toy, explainer):
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        ref = torch_toy(toy["w"])(torch.from_numpy(toy["x"])).numpy()
    res = explainer.explain(toy["x"])
    np.testing.assert_allclose(res.logits, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(res.class_index, ref.argmax(1))


def test_explain_many_runs_the_graph_once(toy, explainer, monkeypatch):
    calls = []
    run = explainer.runner.run
    monkeypatch.setattr(explainer.runner, "run", lambda names, feeds: calls.append(names) or run(names, feeds))
    gradient_methods = [m for m in ALL_METHODS if m not in ("scorecam", "ablationcam")]
    many = explainer.explain_many(toy["x"], methods=gradient_methods, class_index=REQUESTED)
    assert len(calls) == 1 and {"gradients_pow2", "gradients_pow3"} <= set(calls[0])
    for m in gradient_methods:
        one = explainer.explain(toy["x"], method=m, class_index=REQUESTED)
        np.testing.assert_array_equal(many[m].heatmaps, one.heatmaps)


def test_ablation_feeds_the_head_in_chunks(toy, monkeypatch):
    ex = Explainer(toy["path"], head_batch_size=3)
    calls = []
    run = ex.runner.run
    monkeypatch.setattr(ex.runner, "run", lambda names, feeds: calls.append((names, feeds)) or run(names, feeds))
    res = ex.explain(toy["x"][:1], method="ablationcam", class_index=1)
    head_calls = [f for n, f in calls if n == ["head_logits"]]
    assert [len(f["head_activations"]) for f in head_calls] == [3, 3, 2]  # K = 8 channels
    assert all(f["image"].shape[0] == 0 for f in head_calls)  # empty image batch: head only
    ref = Explainer(toy["path"]).explain(toy["x"][:1], method="ablationcam", class_index=1)
    np.testing.assert_allclose(res.heatmaps, ref.heatmaps, atol=1e-6)


@pytest.mark.parametrize("variant", ["batch2", "static1", "static2", "nhwc", "io_binding"])
def test_batching_layouts_and_io_binding_agree(toy, explainer, variant):
    x, kwargs = toy["x"], {}
    if variant == "batch2":
        kwargs["batch_size"] = 2
    if variant.startswith("static"):
        path = build_graph(toy["dir"] / f"{variant}.cam.onnx", toy["w"], batch=int(variant[-1]))
    elif variant == "nhwc":
        path = build_graph(toy["dir"] / "nhwc.cam.onnx", toy["w"], layout="NHWC")
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    else:
        path = toy["path"]
        kwargs["io_binding"] = variant == "io_binding"
    ex = Explainer(path, **kwargs)
    bound = []
    if variant == "io_binding":  # the CUDA code path, exercised on the CPU device
        run_bound = ex.runner.session.run_with_iobinding
        ex.runner.session.run_with_iobinding = lambda b, *a: bound.append(1) or run_bound(b, *a)
    methods = ["gradcam++", "eigencam", "scorecam", "ablationcam"]
    got = ex.explain_many(x, methods=methods, class_index=REQUESTED)
    assert bool(bound) == (variant == "io_binding")
    want = explainer.explain_many(toy["x"], methods=methods, class_index=REQUESTED)
    for m in methods:
        np.testing.assert_allclose(got[m].heatmaps, want[m].heatmaps, atol=1e-5, err_msg=m)
        np.testing.assert_array_equal(got[m].class_index, want[m].class_index)


def test_class_index_forms(toy, explainer):
    top1 = explainer.explain(toy["x"]).class_index
    assert (explainer.explain(toy["x"], class_index=3).class_index == 3).all()
    assert (explainer.explain(toy["x"], class_index=-7).class_index == top1).all()
    got = explainer.explain(toy["x"], class_index=np.array([0, -1, 1])).class_index
    np.testing.assert_array_equal(got, [0, top1[1], 1])


@pytest.mark.parametrize("bad, message", [(5, "out of range"), ([0, 1, 99], "99 is out of range"),
                                          ([0, 1], "2 class indices for 3 images"), (True, "int")])
def test_bad_class_index_is_a_clear_error(toy, explainer, bad, message):
    with pytest.raises(ClassIndexError, match=message):
        explainer.explain(toy["x"], class_index=bad)


def test_bad_method_and_bad_batch(toy, explainer):
    with pytest.raises(ValueError, match="unknown method"):
        explainer.explain(toy["x"], method="gradcam+++")
    with pytest.raises(ValueError, match="expects"):
        explainer.explain(toy["x"][:, :, :8])
    with pytest.raises(ValueError, match="rank 4"):
        explainer.explain(toy["x"][0])
    with pytest.raises(ValueError, match="no images given"):
        explainer.explain([])
    assert list(explainer.explain_many(toy["x"], methods="hirescam")) == ["hirescam"]


def test_models_that_are_not_explanation_graphs(toy, tmp_path):
    plain = build_graph(tmp_path / "plain.onnx", toy["w"], gradients=False, head=False)
    with pytest.raises(ModelError, match=r"not an onnxcam explanation graph \(missing outputs: gradients.*onnxcam export"):
        Explainer(plain)
    no_meta = build_graph(tmp_path / "nometa.onnx", toy["w"], meta=False)
    with pytest.raises(ModelError, match="no onnxcam.format metadata.*onnxcam export"):
        Explainer(no_meta)
    (tmp_path / "junk.onnx").write_bytes(b"this is not protobuf")
    with pytest.raises(ModelError, match="cannot load as an ONNX model"):
        Explainer(tmp_path / "junk.onnx")
    with pytest.raises(ModelError, match="no such model file"):
        Explainer(tmp_path / "missing.cam.onnx")
    headless = Explainer(build_graph(tmp_path / "headless.cam.onnx", toy["w"], head=False))
    assert headless.info.head_input is None
    with pytest.raises(ModelError, match="head-only path.*ablationcam"):
        headless.explain(toy["x"], method="ablationcam")
    assert headless.explain(toy["x"], method="scorecam").heatmaps.shape == (3, H, W)


def test_image_files_are_preprocessed_from_metadata(toy, explainer, tmp_path):
    from onnxcam.runtime.images import PreprocessSpec, preprocess
    paths = []
    for i, picture in enumerate(photos()[:2]):
        paths.append(tmp_path / f"{i}.png")
        picture.save(paths[-1])
    res = explainer.explain([str(p) for p in paths] + [Image.open(paths[0])], method="layercam")
    x, _ = preprocess(paths, explainer.info.preprocess)
    assert isinstance(explainer.info.preprocess, PreprocessSpec)
    np.testing.assert_allclose(res.heatmaps[:2], explainer.explain(x, method="layercam").heatmaps, atol=1e-6)
    np.testing.assert_array_equal(res.heatmaps[0], res.heatmaps[2])
    originals = res.heatmaps_on_original()
    assert [o.shape for o in originals] == [(300, 451), (400, 600), (300, 451)]
    with pytest.raises(ValueError, match="no original photo"):
        explainer.explain(x).heatmaps_on_original()


def test_info_and_labels(explainer):
    info = explainer.info
    assert (info.image_input, info.head_input, info.num_classes) == ("image", "head_activations", C)
    assert info.input_size == (H, W) and info.layout == "NCHW" and info.static_batch is None
    assert explainer.labels == list("abcde") and info.piecewise_linear is True


def test_cuda_request_falls_back_quietly_to_cpu(toy, capfd):
    ex = Explainer(toy["path"], providers=["CUDAExecutionProvider"])
    assert ex.providers == ["CPUExecutionProvider"]
    assert ex.runner.io_binding is False
    ex.explain(toy["x"])
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_a_real_third_party_classifier_is_not_an_explanation_graph():
    """A plain ONNX classifier (Google's MobileNet, from the shared fixtures) gets the hint."""
    from pathlib import Path
    model = Path(__file__).resolve().parents[2] / "shared/fixtures/models/mobilenet_v1_0.25_128_quant_dequant.onnx"
    if not model.is_file():
        pytest.skip("shared fixtures not present")
    with pytest.raises(ModelError, match=r"mobilenet.* is not an onnxcam explanation graph .*onnxcam export"):
        Explainer(model)


def test_image_inputs_errors_and_scalar_forms(toy, explainer, tmp_path):
    from onnxcam.runtime import ImageError
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        explainer.explain([photos()[0], tmp_path / "broken.jpg"])
    with pytest.raises(TypeError, match="image path or a PIL image"):
        explainer.explain([np.zeros((3, H, W), np.float32)])
    single = explainer.explain(photos()[1], class_index=np.int64(2))
    assert single.heatmaps.shape == (1, H, W) and single.class_index.tolist() == [2]
    assert explainer.explain(toy["x"], class_index=np.array(4)).class_index.tolist() == [4, 4, 4]
