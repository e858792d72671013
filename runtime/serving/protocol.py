"""Open Inference Protocol (V2) REST codec: tensors as JSON or with the binary tensor extension.

Numpy only. A request body is a JSON inference header, optionally followed by the raw bytes of
the inputs that declare ``parameters.binary_data_size`` (in input order); the header length is
the ``Inference-Header-Content-Length`` HTTP header. Responses mirror that: outputs requested
with ``binary_data`` (or the request parameter ``binary_data_output``) travel as raw
little-endian bytes after the JSON header, the rest as flat row-major ``data`` lists.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any

import numpy as np

#: V2 datatype name → numpy dtype (little-endian), and back.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_BY_DTYPE = {v: k for k, v in DATATYPES.items()}
#: onnxruntime type strings (``NodeArg.type``) → V2 datatype names.
ORT_TO_V2 = {"tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
             "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
             "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
             "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64"}


class ProtocolError(Exception):
    """A request the server refuses; ``status`` is the HTTP status (4xx) to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def error_json(message: str) -> bytes:
    """The protocol's error body: ``{"error": "<message>"}``."""
    return json.dumps({"error": message}).encode()


def v2_datatype(dtype: np.dtype) -> str:
    """The V2 datatype name of a numpy dtype."""
    return _BY_DTYPE[np.dtype(dtype).newbyteorder("<")]


@dataclass
class RequestedOutput:
    """One entry of the request's ``outputs``: its name and whether it must come back binary."""

    name: str
    binary: bool


@dataclass
class InferRequest:
    """A decoded inference request: ``inputs`` name → array (in request order)."""

    inputs: dict[str, np.ndarray]
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None  # None: every output
    binary_output: bool = False  # default for outputs without their own binary_data flag
    id: str | None = None


def _object(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _parameters(value: Any, what: str) -> dict:
    """A ``parameters`` object: the protocol allows string, number and boolean values only."""
    params = _object(value, what)
    for key, item in params.items():
        if not isinstance(item, (str, int, float, bool)) or (isinstance(item, float) and not math.isfinite(item)):
            raise ProtocolError(f"{what}: '{key}' must be a string, a number or a boolean (the protocol's "
                                "parameter types)")
    return params


def _shape(spec: dict, name: str) -> tuple[int, ...]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape):
        raise ProtocolError(f"input '{name}': 'shape' must be a list of non-negative integers")
    return tuple(shape)


def _from_json_data(data: Any, dtype: np.dtype, name: str) -> np.ndarray:
    """A flat (or nested, row-major) JSON ``data`` list as a 1-D array of ``dtype``."""
    if not isinstance(data, list):
        raise ProtocolError(f"input '{name}': 'data' must be a JSON list")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, RecursionError):
        raise ProtocolError(f"input '{name}': 'data' must be a flat or evenly nested list of numbers") from None
    if raw.size == 0:
        return np.empty(0, dtype)
    if raw.dtype.kind not in "biuf":
        raise ProtocolError(f"input '{name}': 'data' must hold numbers only")

    if dtype.kind in "iu":
        if raw.dtype.kind == "f" or raw.dtype.kind == "b":
            raise ProtocolError(f"input '{name}': {v2_datatype(dtype)} data must be integers")
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise ProtocolError(f"input '{name}': values out of range for {v2_datatype(dtype)}")
    with np.errstate(over="ignore", invalid="ignore"):
        values = raw.astype(dtype).reshape(-1)
    if dtype.kind == "f" and not np.isfinite(values).all():
        raise ProtocolError(f"input '{name}': 'data' holds NaN, infinite values or values too large for "
                            f"{v2_datatype(dtype)}")
    return values


def _read_input(spec: dict, body: bytes, offset: int) -> tuple[str, np.ndarray, int]:
    """One input tensor: its name, its array (from ``data``, or the binary extension's bytes at
    ``offset`` in ``body``) and the offset of the next binary input."""
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError("every input needs a 'name'")
    datatype = spec.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise ProtocolError(f"input '{name}': unsupported datatype {datatype!r}")
    dtype, shape = DATATYPES[datatype], _shape(spec, name)
    in_params = _parameters(spec.get("parameters"), f"input '{name}' parameters")
    if any(k.startswith("shared_memory") for k in in_params):
        raise ProtocolError("the shared-memory extension is not supported")
    size = in_params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"input '{name}': binary_data_size must be a non-negative integer")
        if offset + size > len(body):
            raise ProtocolError(f"input '{name}': binary_data_size {size} runs past the end of the body")
        if "data" in spec:
            raise ProtocolError(f"input '{name}' has both 'data' and binary_data_size")
        if size % dtype.itemsize:
            raise ProtocolError(f"input '{name}': {size} bytes is not a whole number of {datatype} values")
        flat = np.frombuffer(body, dtype, count=size // dtype.itemsize, offset=offset).copy()  # aligned, writable
        offset += size
    else:
        if "data" not in spec:
            raise ProtocolError(f"input '{name}' has neither 'data' nor binary_data_size")
        flat = _from_json_data(spec["data"], dtype, name)
    if flat.size != math.prod(shape):
        raise ProtocolError(f"input '{name}': shape {list(shape)} needs {math.prod(shape)} values, got {flat.size}")
    return name, flat.reshape(shape), offset


def parse_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode an inference request body (JSON, or JSON + binary tensors).

    Raises ``ProtocolError`` (400) for invalid JSON, a bad header length, malformed tensors,
    data whose size does not match ``shape`` × datatype, or unsupported extensions.
    """
    if not body:
        raise ProtocolError("empty request body: expected a JSON inference request")
    if header_length is None:
        header_length = len(body)
    if not 0 < header_length <= len(body):
        raise ProtocolError(f"Inference-Header-Content-Length {header_length} does not fit the "
                            f"{len(body)}-byte body")
    try:
        header = json.loads(body[:header_length])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"invalid JSON in the inference request: {exc}") from None
    except RecursionError:
        raise ProtocolError("the inference request's JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError("the inference request must be a JSON object")
    params = _parameters(header.get("parameters"), "'parameters'")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("the inference request needs a non-empty 'inputs' list")
    offset, inputs = header_length, {}
    for spec in raw_inputs:
        name, array, offset = _read_input(_object(spec, "each input"), body, offset)
        if name in inputs:
            raise ProtocolError(f"input '{name}' is given twice")
        inputs[name] = array
    if offset != len(body):
        raise ProtocolError(f"the body has {len(body) - offset} bytes beyond the declared binary inputs")
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ProtocolError("parameter 'binary_data_output' must be true or false")
    outputs = _requested_outputs(header.get("outputs"), binary_output)
    request_id = header.get("id")
    return InferRequest(inputs, params, outputs, binary_output,
                        None if request_id is None else str(request_id))


def _requested_outputs(raw: Any, binary_default: bool) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ProtocolError("'outputs' must be a list")
    result: list[RequestedOutput] = []
    for spec in raw:
        spec = _object(spec, "each requested output")
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError("every requested output needs a 'name'")
        params = _parameters(spec.get("parameters"), f"output '{name}' parameters")
        if params.get("classification"):
            raise ProtocolError("the classification extension is not supported")
        if any(k.startswith("shared_memory") for k in params):
            raise ProtocolError("the shared-memory extension is not supported")
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise ProtocolError(f"output '{name}': binary_data must be true or false")
        result.append(RequestedOutput(name, binary))
    return result


def encode_response(model_name: str, model_version: str, outputs: Sequence[tuple[str, np.ndarray, bool]],
                    request_id: str | None = None) -> tuple[bytes, int | None]:
    """The response body for ``(name, array, binary)`` outputs, and the JSON header's length
    when any output is binary (for the ``Inference-Header-Content-Length`` header), else None.

    JSON numbers are the exact values (float32 widened to float64 prints the shortest string that
    round-trips), so JSON and binary outputs decode to identical arrays."""
    tensors, blobs = [], []
    for name, array, binary in outputs:
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        tensor: dict[str, Any] = {"name": name, "datatype": v2_datatype(array.dtype), "shape": list(array.shape)}
        if binary:
            blob = array.tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = tensors
    header = json.dumps(response, separators=(",", ":"), allow_nan=False).encode()  # NaN is not JSON
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
