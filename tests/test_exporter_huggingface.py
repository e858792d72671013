"""Hugging Face ``transformers`` classifiers (ViT, ConvNeXt, Swin built from small configs) as
``package.module:callable`` sources: exported with their default target, verified against
torch.autograd (``--verify``), labels taken from the config's ``id2label``, the input size from
its ``image_size``, and explained from a photo on the command line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")

import hf_models  # noqa: E402
from cli_helpers import explained_overlay_sizes  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from onnxcam.cli.main import main  # noqa: E402
from onnxcam.models.contract import GraphMetadata  # noqa: E402
from onnxcam.runtime import Explainer  # noqa: E402

# callable, the default target (its name's end: transformers 5 renamed vit.encoder.layer to vit.layers), its layout
MODELS = [
    ("vit", ".3.layernorm_before", "tokens"),
    ("convnext", "convnext.encoder.stages.3", "NCHW"),
    ("swin", "swin.layernorm", "tokens"),
]


@pytest.mark.parametrize("name,target,layout", MODELS, ids=[m[0] for m in MODELS])
def test_exported_verified_and_explained(name: str, target: str, layout: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.cam.onnx"
    result = CliRunner().invoke(main, ["export", f"hf_models:{name}", "-o", str(out), "--verify"])
    assert result.exit_code == 0, result.output
    meta = GraphMetadata.from_props({p.key: p.value for p in onnx.load(str(out), load_external_data=False)
                                     .metadata_props})
    assert meta.target_layer.endswith(target)
    assert meta.target_layout.layout == layout
    assert list(meta.labels) == list(hf_models.LABELS.values())
    assert meta.preprocess.size == (96, 96)

    shown = CliRunner().invoke(main, ["info", str(out)])
    assert shown.exit_code == 0 and f"target layout:     {layout}" in shown.output, shown.output

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 150, 3), dtype=np.uint8)).save(photo)
    assert explained_overlay_sizes(out, photo, ("gradcam", "ablationcam"), tmp_path / "maps") == [(150, 120)] * 2
    explainer = Explainer(out)
    heatmap = explainer.explain(str(photo), "gradcam").heatmaps[0]
    assert heatmap.shape == (96, 96) and np.isfinite(heatmap).all() and heatmap.max() > 0
