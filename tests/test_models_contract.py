"""The contract module: metadata written and read back, validation, and parameters in messages."""
from __future__ import annotations

import json

import pytest

from onnxcam.models.contract import (FORMAT_VERSION, INPUT_GRADIENT_MODES, RESERVED_NAMES, GraphMetadata, Key,
                                     MetadataError, switch_name)
from onnxcam.models.errors import OnnxcamError, param
from onnxcam.models.preprocess import IMAGENET, MAX_SIDE, Preprocess

FULL = GraphMetadata(source="torchvision:resnet18", target_layer="layer4", image_input="input", preprocess=IMAGENET,
                     labels=("cat", "dog"), head_piecewise_linear=True, head_input="head_activations",
                     input_gradients="both", input_gradient_switches={"input_gradients": "input_gradients_enabled"},
                     raw_input=True, heatmap_method="gradcam")


def test_metadata_round_trips_through_props() -> None:
    props = FULL.to_props()
    assert all(k.startswith("onnxcam.") and isinstance(v, str) for k, v in props.items())
    assert props[Key.FORMAT] == FORMAT_VERSION == "1"
    assert props[Key.HEAD_PIECEWISE_LINEAR] == "true" and props[Key.RAW_INPUT] == "true"
    assert json.loads(props[Key.PREPROCESS]) == IMAGENET.to_dict()
    assert GraphMetadata.from_props(props) == FULL


def test_unset_values_are_left_out() -> None:
    props = GraphMetadata(source="s", target_layer="t").to_props()
    assert set(props) == {Key.FORMAT, Key.SOURCE, Key.TARGET_LAYER}
    assert GraphMetadata.from_props(props) == GraphMetadata(source="s", target_layer="t")


GOOD_PREPROCESS = {"size": [224, 224], "mean": [0], "std": [1]}
BAD_PREPROCESS = [({"size": [0, 224]}, "size must be an integer"), ({"resize": 10**9}, "resize"),
                  ({"mean": [0, 0], "std": [1, 1]}, "mean and std"), ({"std": [0]}, "zeros"),
                  ({"scale": float("nan")}, "scale"), ({"scale": 0}, "scale"), ({"size": [True, 224]}, "size")]
BAD_OTHER = [(Key.PREPROCESS, "[" * 100000, "bad onnxcam.preprocess"), (Key.LABELS, '{"0": "cat"}', "list of class names"),
             (Key.LABELS, "[1, 2]", "list of class names"), (Key.LABELS, "not json", "not valid JSON"),
             (Key.HEAD_PIECEWISE_LINEAR, "yes", "'true' or 'false'"), (Key.INPUT_GRADIENTS, "all", "must be one of"),
             (Key.INPUT_GRADIENT_SWITCHES, '["input_gradients"]', "map output names")]


@pytest.mark.parametrize("key, value, needle", [
    (Key.PREPROCESS, json.dumps({**GOOD_PREPROCESS, **change}), needle) for change, needle in BAD_PREPROCESS
] + BAD_OTHER)
def test_bad_metadata_is_refused_in_one_line(key: str, value: str, needle: str) -> None:
    props = {**FULL.to_props(), key: value}
    with pytest.raises(MetadataError) as err:
        GraphMetadata.from_props(props)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_no_format_key_means_not_an_explanation_graph() -> None:
    with pytest.raises(MetadataError, match="no onnxcam.format"):
        GraphMetadata.from_props({Key.SOURCE: "x"})


def test_preprocess_bounds() -> None:
    Preprocess(size=(MAX_SIDE, 1), resize=MAX_SIDE)
    with pytest.raises(ValueError, match="size"):
        Preprocess(size=(MAX_SIDE + 1, 1))
    with pytest.raises(ValueError, match="mean"):
        Preprocess(mean=(float("inf"), 0, 0))


def test_names() -> None:
    assert switch_name("input_gradients") == "input_gradients_enabled"
    assert set(INPUT_GRADIENT_MODES["both"]) == {"input_gradients", "guided_gradients"}
    assert {"logits", "class_index", "heatmap", "head_activations"} <= RESERVED_NAMES


def test_messages_name_parameters_for_python_and_for_the_cli() -> None:
    err = OnnxcamError(f"out.cam.onnx exists; pass {param('overwrite', True)}, or choose with "
                       f"{param('scores', 'OUTPUT')} and {param('target_layer')}")
    assert str(err) == "out.cam.onnx exists; pass overwrite=True, or choose with scores=OUTPUT and target_layer="
    assert err.for_cli() == "out.cam.onnx exists; pass --overwrite, or choose with --scores OUTPUT and --target-layer"
    assert OnnxcamError(f"use {param('class_index', 3)}").for_cli({"class_index": "--class"}) == "use --class 3"
