"""Triton's ``config.pbtxt`` for an explanation graph: the settings (:class:`TritonConfig`) and
their protobuf text format (:func:`render_config`), which ``tritonclient``'s ``ModelConfig``
parses. ``runtime.triton_repo`` decides the settings from the graph."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

PLATFORM = "onnxruntime_onnx"
#: the first line of every config.pbtxt onnxcam writes (how it recognises its own model directories)
CONFIG_MARK = "# Written by `onnxcam triton-repo`"


@dataclass(frozen=True)
class TensorConfig:
    """One ``input``/``output`` entry of ``config.pbtxt``."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None
    label_filename: str | None = None
    optional: bool = False


@dataclass(frozen=True)
class TritonConfig:
    """Everything ``config.pbtxt`` says, plus what was left out and why."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    instances: int
    kind: str
    labels: list[str] | None = field(default=None, repr=False)
    source: str = ""
    notes: tuple[str, ...] = ()
    tensorrt: tuple[tuple[str, str], ...] = ()  # the tensorrt accelerator's parameters; () = none

    @property
    def dynamic_batching(self) -> bool:
        """Whether the config has a ``dynamic_batching`` block (only when Triton batches)."""
        return self.max_batch_size > 0


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _ints(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]" if values else "[ ]"


def _tensor_block(t: TensorConfig, last: bool) -> list[str]:
    lines = ["  {", f"    name: {_quote(t.name)}", f"    data_type: {t.data_type}", f"    dims: {_ints(t.dims)}"]
    if t.reshape is not None:
        lines.append(f"    reshape: {{ shape: {_ints(t.reshape)} }}")
    if t.optional:
        lines.append("    optional: true")
    if t.label_filename:
        lines.append(f"    label_filename: {_quote(t.label_filename)}")
    lines.append("  }" if last else "  },")
    return lines


def render_config(cfg: TritonConfig) -> str:
    """``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``)."""
    lines = [CONFIG_MARK + (f" from {cfg.source}" if cfg.source else "") + ".",
             f"name: {_quote(cfg.name)}",
             f'platform: "{PLATFORM}"',
             f"max_batch_size: {cfg.max_batch_size}"]
    for key, tensors in (("input", cfg.inputs), ("output", cfg.outputs)):
        lines.append(f"{key} [")
        for k, t in enumerate(tensors):
            lines.extend(_tensor_block(t, k == len(tensors) - 1))
        lines.append("]")
    if cfg.dynamic_batching:
        lines.append("dynamic_batching {")
        if cfg.preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: {_ints(cfg.preferred_batch_sizes)}")
        lines.append(f"  max_queue_delay_microseconds: {cfg.max_queue_delay_us}")
        lines.append("}")
    lines += ["instance_group [", "  {", f"    count: {cfg.instances}", f"    kind: {cfg.kind}", "  }", "]"]
    if cfg.tensorrt:
        lines += ["optimization { execution_accelerators {", "  gpu_execution_accelerator: [ {",
                  '    name: "tensorrt"',
                  *(f"    parameters {{ key: {_quote(k)} value: {_quote(v)} }}" for k, v in cfg.tensorrt),
                  "  } ]", "} }"]
    return "\n".join(lines) + "\n"
