"""Pieces the benchmark scripts share: an onnxruntime CPU session with a fixed thread count, the
plain classifier (logits only) cut out of an exported graph, timing of calls, the load average."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import onnx
import onnxruntime as ort


def time_calls(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    """Seconds of ``runs`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def load_average() -> str:
    """The 1/5/15-minute load averages, for reading how busy the machine was."""
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def session(model: onnx.ModelProto, threads: int,
            providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> ort.InferenceSession:
    """A session (on the CPU unless ``providers`` say otherwise) with ``threads`` intra-op threads
    and one inter-op thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))


def plain_classifier(model: onnx.ModelProto | Any) -> onnx.ModelProto:
    """The exported classifier (a proto or an ``onnx_ir`` model) with only its logits output."""
    plain = onnx.ModelProto()
    if not isinstance(model, onnx.ModelProto):
        import onnx_ir as ir

        model = ir.to_proto(model)
    plain.CopyFrom(model)
    kept = [o for o in plain.graph.output if o.name == "logits"]
    del plain.graph.output[:]
    plain.graph.output.extend(kept)
    return plain
