"""Property-based tests of the parsers that read untrusted input: the Open Inference Protocol
request codec (JSON and binary), the image loader, and the graph metadata. Each generated case
must end in a clean error (the parser's own exception type) or a correct result — never any other
exception. Bounded examples and deadlines keep the run short."""
from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from onnxcam.models.contract import GraphMetadata, Key, MetadataError  # noqa: E402
from onnxcam.runtime.errors import ImageError  # noqa: E402
from onnxcam.runtime.images import load_image  # noqa: E402

pytest.importorskip("starlette")
from onnxcam.runtime.serving.protocol import DATATYPES, ProtocolError, parse_request  # noqa: E402

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20)
names = st.sampled_from(["input", "class_index", "x", ""]) | st.text(max_size=5)
datatypes = st.sampled_from(sorted(DATATYPES)) | json_values


@st.composite
def inference_requests(draw):
    """Plausible and implausible V2 requests: a JSON header with inputs whose shape, datatype,
    data and parameters may or may not agree, and binary blobs that may or may not fit."""
    inputs, blobs = [], []
    for _ in range(draw(st.integers(0, 3))):
        shape = draw(st.lists(st.integers(-1, 4), max_size=4) | json_values)
        spec = {"name": draw(names), "datatype": draw(datatypes), "shape": shape}
        if draw(st.booleans()):
            blob = draw(st.binary(max_size=64))
            blobs.append(blob)
            spec["parameters"] = {"binary_data_size": draw(st.sampled_from([len(blob), len(blob) + 1])
                                                           | st.integers(-2, 100))}
        else:
            spec["data"] = draw(st.lists(st.floats(allow_nan=True) | st.integers(-2**40, 2**40), max_size=32)
                                | json_values)
        if draw(st.booleans()):
            spec.update(draw(st.dictionaries(st.sampled_from(["parameters", "name", "extra"]), json_values,
                                             max_size=2)))
        inputs.append(spec)
    header = {"inputs": inputs}
    for key in draw(st.lists(st.sampled_from(["parameters", "outputs", "id"]), max_size=3)):
        header[key] = draw(json_values)
    text = json.dumps(header).encode()
    if draw(st.booleans()):
        return text, None
    return text + b"".join(blobs), draw(st.sampled_from([len(text), len(text) - 1, 0]) | st.integers(-5, 10**6))


@FUZZ
@given(inference_requests())
def test_request_parser_gives_a_request_or_a_protocol_error(case) -> None:
    body, header_length = case
    try:
        request = parse_request(body, header_length)
    except ProtocolError as exc:
        assert 400 <= exc.status < 500 and str(exc)
        return
    for name, array in request.inputs.items():  # what is accepted is well-formed
        assert isinstance(name, str) and name and isinstance(array, np.ndarray)
        assert array.dtype in DATATYPES.values()
        if array.dtype.kind == "f":
            assert np.isfinite(array).all()


@FUZZ
@given(st.binary(max_size=2048))
def test_request_parser_on_arbitrary_bytes(body: bytes) -> None:
    try:
        parse_request(body)
    except ProtocolError:
        pass


def _png(width: int, height: int, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


@st.composite
def damaged_images(draw):
    """Real PNG / JPEG / GIF / BMP files, then truncated, bit-flipped or with a forged size."""
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP"]))
    mode = "RGB" if fmt == "JPEG" else draw(st.sampled_from(["RGB", "L", "RGBA", "P", "1"]))
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color=draw(st.integers(0, 255)) if mode in ("L", "P", "1") else None) \
        .save(buffer, format=fmt)
    data = bytearray(buffer.getvalue())
    damage = draw(st.sampled_from(["none", "truncate", "flip", "size"]))
    if damage == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif damage == "flip" and data:
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif damage == "size" and fmt == "PNG":  # IHDR with a forged size and a valid CRC
        w, h = draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1))
        ihdr = b"IHDR" + struct.pack(">II", w, h) + bytes(data[24:29])
        data[12:29] = ihdr
        data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


@FUZZ
@given(damaged_images())
def test_image_loader_gives_rgb_or_an_image_error(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "image"
    path.write_bytes(data)
    try:
        image = load_image(path)
    except ImageError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1


@FUZZ
@given(st.dictionaries(st.sampled_from([Key.PREPROCESS, Key.LABELS, Key.HEAD_PIECEWISE_LINEAR, Key.INPUT_GRADIENTS,
                                        Key.INPUT_GRADIENT_SWITCHES, Key.RAW_INPUT, Key.IMAGE_INPUT]),
                       st.text(max_size=30) | json_values.map(json.dumps), max_size=7))
def test_metadata_reader_gives_metadata_or_a_metadata_error(props: dict) -> None:
    try:
        meta = GraphMetadata.from_props({Key.FORMAT: "1", **props})
    except MetadataError as exc:
        assert "\n" not in str(exc)
        return
    assert GraphMetadata.from_props(meta.to_props()) == meta  # what is accepted round-trips


def test_forged_png_sizes_are_refused_without_decoding(tmp_path) -> None:
    data = bytearray(_png(4, 4, "RGB"))
    ihdr = b"IHDR" + struct.pack(">II", 100_000, 100_000) + bytes(data[24:29])
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    (tmp_path / "bomb.png").write_bytes(bytes(data))
    with pytest.raises(ImageError, match="decompression-bomb guard"):
        load_image(tmp_path / "bomb.png")


@FUZZ
@given(content=st.binary(max_size=400) | st.text(max_size=400).map(str.encode),
       suffix=st.sampled_from([".csv", ".txt", ".parquet"]))
def test_a_manifest_or_list_of_any_bytes_is_read_or_refused_in_one_line(tmp_path_factory, content: bytes,
                                                                        suffix: str) -> None:
    """``expand_sources`` on a .csv / .txt / .parquet file holding any bytes: sources with a
    class that is None or an integer ≥ 0, or one error line naming the file — never an exception."""
    from onnxcam.runtime.datasets import expand_sources

    path = tmp_path_factory.mktemp("manifest") / f"m{suffix}"
    path.write_bytes(content)
    sources, errors = expand_sources([str(path)])
    assert all(e.startswith(str(path)) and "\n" not in e for e in errors)
    assert all(s.class_index is None or (isinstance(s.class_index, int) and s.class_index >= 0) for s in sources)
    assert bool(errors) != bool(sources) or not content.strip()
