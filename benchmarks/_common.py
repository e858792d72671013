"""Pieces the benchmark scripts share: an onnxruntime CPU session with a fixed thread count, and
the plain classifier (logits only) cut out of an exported graph."""
from __future__ import annotations

import onnx
import onnxruntime as ort


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads and one inter-op thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def plain_classifier(model: onnx.ModelProto) -> onnx.ModelProto:
    """The exported classifier with only its logits output."""
    plain = onnx.ModelProto()
    plain.CopyFrom(model)
    kept = [o for o in plain.graph.output if o.name == "logits"]
    del plain.graph.output[:]
    plain.graph.output.extend(kept)
    return plain
