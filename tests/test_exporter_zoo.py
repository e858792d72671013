"""Gradients of the explanation graph against float64 torch.autograd on vision transformers,
hybrids and channels-last CNNs (torchvision and timm, seeded random weights).

Each model is exported once with two targets exposed: the exporter's default (which the table
pins) and one more inside the backbone; each gets its own explanation graph, run on a batch of 3
with ``class_index = [-1, 7, 409]``. Token targets ``[N, P + h·w, K]`` and channels-last maps
``[N, h, w, K]`` come out of the graph as NCHW ``activations`` (the graph's
``onnxcam.target_layout`` says how), and the reference is converted the same way. As in
test_exporter_torchvision.py the reference is differentiated at the graph's own activations,
in float32 and float64, and the graph must match one of them within 1e-4·max|g|. The default
target's graph then explains a photo with ``onnxcam explain``.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
skimage_data = pytest.importorskip("skimage.data")

from cli_helpers import explained_overlay_sizes  # noqa: E402
from PIL import Image  # noqa: E402
from test_exporter_torchvision import calibrate_batchnorm  # noqa: E402
from zoo import TRANSFORMERS  # noqa: E402


from onnxcam.exporter.explain_graph import GraphSpec, build_explanation_graph  # noqa: E402
from onnxcam.exporter.onnx_source import load_classifier  # noqa: E402
from onnxcam.exporter.torch_export import export_with_targets, target_output_name  # noqa: E402
from onnxcam.exporter.torch_loading import load_torch_source  # noqa: E402
from onnxcam.exporter.verify import compare, run_graph, torch_reference  # noqa: E402
from onnxcam.models.contract import GraphMetadata  # noqa: E402

ZOO = [entry[:4] for entry in TRANSFORMERS]  # source, input size, (default target, layout), more targets


def _no_zero_layers(model: "torch.nn.Module") -> None:
    """Seeded random weights for linear layers initialised to zero (torchvision's ViT head),
    whose gradients would otherwise all be zero."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.any():
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.02)


def _check_target(model, model64, classifier, source: str, target: str, call, index: int, x: np.ndarray,
                  class_index: np.ndarray, expected_layout: str, preprocess) -> onnx.ModelProto:
    spec = GraphSpec(classifier.model, classifier.image_input, classifier.logits, target_output_name(index),
                     source, target, preprocess)
    graph = build_explanation_graph(spec, classifier.facts)
    onnx.checker.check_model(graph, full_check=True)
    assert all(node.domain in ("", "ai.onnx") for node in graph.graph.node)
    layout = GraphMetadata.from_props({p.key: p.value for p in graph.metadata_props}).target_layout
    assert layout.layout == expected_layout, f"{source} @ {target}: {layout}"

    result = run_graph(graph, x, class_index)
    reference = torch_reference(model64, target, call.index, x.astype(np.float64), class_index, layout=layout)
    np.testing.assert_array_equal(result["target"], reference["target"])
    reports = []
    for net, dtype in ((model, np.float32), (model64, np.float64)):
        at_graph_point = torch_reference(net, target, call.index, x.astype(dtype), class_index,
                                         result["activations"].astype(dtype), layout=layout)
        report = compare(result, {**reference, "gradients": at_graph_point["gradients"]})
        scale = np.abs(at_graph_point["gradients"]).max()
        reports.append((report.ok and report.gradient_error <= 1e-4 * scale and scale > 0, report))
    assert any(ok for ok, _ in reports), f"{source} @ {target}: " + "; ".join(str(r) for _, r in reports)
    assert result["gradients"].shape == result["activations"].shape
    return graph


def _explain_a_photo(graph: onnx.ModelProto, tmp_path: Path) -> None:
    """``onnxcam explain`` of skimage's astronaut (512 × 512) writes overlays of the photo's size."""
    model_path, photo = tmp_path / "model.cam.onnx", tmp_path / "astronaut.jpg"
    onnx.save(graph, str(model_path))
    Image.fromarray(skimage_data.astronaut()[:, 40:]).save(photo)
    assert explained_overlay_sizes(model_path, photo, ("gradcam", "layercam"), tmp_path / "maps") == [(472, 512)] * 2


@pytest.mark.slow
@pytest.mark.parametrize("source,size,default,others", ZOO, ids=[z[0] for z in ZOO])
def test_gradients_match_torch_autograd(source: str, size: int, default: tuple[str, str],
                                        others: list[tuple[str, str]], tmp_path: Path) -> None:
    torch.manual_seed(0)
    loaded = load_torch_source(source)
    model = loaded.module
    assert loaded.input_size == (3, size, size)
    assert loaded.default_target_layer == default[0]
    calibrate_batchnorm(model, size)
    _no_zero_layers(model)
    targets = [default, *others]
    proto, calls = export_with_targets(model, [name for name, _ in targets], (3, size, size))
    classifier = load_classifier(proto)
    x = np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32)
    class_index = np.array([-1, 7, 409], np.int64)
    model64 = copy.deepcopy(model).double()
    graphs = [_check_target(model, model64, classifier, source, target, call, i, x, class_index, layout,
                            loaded.preprocess)
              for i, ((target, layout), call) in enumerate(zip(targets, calls))]
    _explain_a_photo(graphs[0], tmp_path)
