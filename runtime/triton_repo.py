"""A Triton Inference Server model repository for an explanation graph (``onnxcam triton-repo``).

Layout written for Triton's onnxruntime backend::

    DIR/NAME/config.pbtxt     platform "onnxruntime_onnx", inputs, outputs, batching, instances
    DIR/NAME/1/model.onnx     a byte-for-byte copy of the .cam.onnx
    DIR/NAME/labels.txt       class names (only when the graph's metadata has them), referenced by
                              ``logits``' ``label_filename`` for Triton's classification extension

Inputs and outputs are read from an onnxruntime session (no ``onnx`` import), so this works with
the base install. Rules, matching what Triton's onnxruntime backend checks when it loads a model:

- ``max_batch_size > 0`` (default 8): Triton owns the first axis, so ``dims`` leave it out and
  every input and output must have a *dynamic* first axis. A graph with a fixed batch axis (an
  ONNX source exported with batch 1, say) falls back to ``max_batch_size: 0`` with a note when
  the caller did not ask for batching explicitly, and is refused when they did
  (:class:`TritonRepoError`); Triton rejects such a model either way.
- ``max_batch_size: 0``: ``dims`` are the full shapes, no ``dynamic_batching`` block.
- Other dynamic axes become ``-1``. A tensor left with no dims (``class_index`` and ``target``,
  ``[N]``, under batching) gets ``dims: [ 1 ]`` and ``reshape: { shape: [ ] }`` — Triton's way of
  expressing a per-item scalar; clients send ``class_index`` as ``[B, 1]``.
- Ablation-CAM's head-only path (the overridable initializer ``head_activations`` [M, K, h, w] →
  ``head_logits`` [M, C]) has a first axis that is not the request batch. Under batching it is left
  out (Triton would bind ``head_logits`` for every request and fail to split it per request, and
  it refuses optional inputs on batching models); with ``max_batch_size: 0`` it is kept, with
  ``head_activations`` as an ``optional`` input (Triton's onnxruntime backend feeds overridable
  initializers that a request provides).
- A graph exported with ``--input-gradients`` has the overridable initializers
  ``input_gradients_enabled`` / ``guided_gradients_enabled`` (default true); they are not listed,
  so Triton computes the reverse passes to the input on every request: for CAM-only serving,
  export without ``--input-gradients``.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from collections.abc import Sequence

from onnxcam.models.contract import HEAD_OUTPUT, GraphMetadata, Key, MetadataError
from onnxcam.models.errors import param
from onnxcam.runtime.errors import OnnxcamError
from onnxcam.runtime.tensorrt import TensorRTSettings, triton_parameters
from onnxcam.runtime.triton_config import (  # noqa: F401  (re-exported: the repository's API)
    CONFIG_MARK, PLATFORM, TensorConfig, TritonConfig, render_config)

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_QUEUE_DELAY_US = 100
KINDS = ("KIND_CPU", "KIND_GPU")

HEAD_NOTE = ("output head_logits (Ablation-CAM's head-only path) left out: its first axis is not the request "
             "batch, so it only fits max_batch_size 0")
MODEL_FILENAME = "model.onnx"
LABELS_FILENAME = "labels.txt"

# onnxruntime type strings → Triton data types (model_config.proto's DataType).
TRITON_DTYPES = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(string)": "TYPE_STRING",
    "tensor(bfloat16)": "TYPE_BF16",
}

_NAME_OK = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")

Dim = int | str | None


class TritonRepoError(OnnxcamError):
    """The graph cannot be turned into a Triton repository as asked (one line for the user)."""


def default_model_name(model_path: str | Path) -> str:
    """``resnet50.cam.onnx`` → ``resnet50``; characters Triton dislikes in a directory name → ``_``."""
    base = Path(model_path).name
    for suffix in (".cam.onnx", ".onnx"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    base = re.sub(r"[^A-Za-z0-9_.\-]", "_", base).lstrip(".")
    return base or "model"


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a safe Triton model (directory) name, else raise."""
    if not _NAME_OK.fullmatch(name) or name in (".", ".."):
        raise TritonRepoError(f"{param('name', repr(name))}: use letters, digits, '_', '.', '-' (a model directory name)")
    return name


def _default_preferred(max_batch_size: int) -> tuple[int, ...]:
    if max_batch_size <= 0:
        return ()
    return tuple(sorted({max(1, max_batch_size // 2), max_batch_size}))


def _is_dynamic(dim: Dim) -> bool:
    return not (isinstance(dim, int) and dim > 0)


def _dims(shape: Sequence[Dim]) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Triton ``dims`` (dynamic → -1) and ``reshape`` (only when the tensor has no dims left)."""
    dims = tuple(-1 if _is_dynamic(d) else int(d) for d in shape)
    return ((1,), ()) if not dims else (dims, None)


def _read_labels(meta: GraphMetadata) -> list[str] | None:
    if not meta.labels:
        return None
    return [label.replace("\n", " ").replace("\r", " ") for label in meta.labels]


def _check_options(kind: str, instances: int, max_queue_delay_us: int, max_batch_size: int | None) -> str:
    kind = kind.upper()
    if kind not in KINDS:
        raise TritonRepoError(f"{param('kind', kind)}: expected one of {', '.join(KINDS)}")
    if instances < 1:
        raise TritonRepoError(f"{param('instances', instances)}: must be at least 1")
    if max_queue_delay_us < 0:
        raise TritonRepoError(f"{param('max_queue_delay_us', max_queue_delay_us)}: must be >= 0")
    if max_batch_size is not None and max_batch_size < 0:
        raise TritonRepoError(f"{param('max_batch_size', max_batch_size)}: must be >= 0")
    return kind


Tensor = tuple[str, str, list[Dim]]   # name, onnxruntime type, shape


def _read_graph(path: Path) -> tuple[GraphMetadata, list[Tensor], list[Tensor], list[Tensor]]:
    """(metadata, inputs, outputs, the head-only input when there is one) read with onnxruntime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TritonRepoError(f"{path}: onnxruntime cannot load it ({first})") from None
    props = session.get_modelmeta().custom_metadata_map
    try:  # any ONNX model can be served; an explanation graph's metadata must be sound
        meta = GraphMetadata.from_props(props) if Key.FORMAT in props else GraphMetadata()
    except MetadataError as exc:
        raise TritonRepoError(f"{path}: not a readable explanation graph ({exc})") from None
    tensors = [[(t.name, t.type, list(t.shape)) for t in group]
               for group in (session.get_inputs(), session.get_outputs())]
    head = [(i.name, i.type, list(i.shape)) for i in session.get_overridable_initializers() if i.name == meta.head_input]
    for tname, ttype, _ in tensors[0] + tensors[1] + head:
        if ttype not in TRITON_DTYPES:
            raise TritonRepoError(f"{path}: {tname} has type {ttype}, which Triton's onnxruntime backend cannot serve")
    return meta, tensors[0], tensors[1], head


def _batching(path: Path, tensors: list[Tensor], max_batch_size: int | None,
              preferred_batch_sizes: Sequence[int] | None, notes: list[str]) -> tuple[int, tuple[int, ...]]:
    """(max_batch_size, preferred batch sizes): batching only along a dynamic first axis."""
    fixed = [(tname, shape) for tname, _, shape in tensors if not shape or not _is_dynamic(shape[0])]
    if max_batch_size is None:
        max_batch_size = 0 if fixed else DEFAULT_MAX_BATCH_SIZE
        if fixed:
            notes.append(f"max_batch_size 0: {fixed[0][0]} has a fixed first axis {_fmt(fixed[0][1])}, and Triton "
                         "batches only along a dynamic one (re-export with a dynamic batch axis to batch)")
    elif max_batch_size > 0 and fixed:
        raise TritonRepoError(f"{path}: {param('max_batch_size', max_batch_size)} needs a dynamic batch axis, but "
                              f"{fixed[0][0]} is {_fmt(fixed[0][1])}; use {param('max_batch_size', 0)} or re-export "
                              "with a dynamic batch axis")
    if max_batch_size == 0:
        return 0, ()
    preferred = tuple(preferred_batch_sizes) if preferred_batch_sizes else _default_preferred(max_batch_size)
    if any(p < 1 or p > max_batch_size for p in preferred):
        raise TritonRepoError(f"{param('preferred_batch_sizes', ','.join(map(str, preferred)))}: each must be "
                              f"within 1..{max_batch_size} (max batch size)")
    return max_batch_size, tuple(sorted(set(preferred)))


def plan_config(model_path: str | Path, name: str | None = None,
                max_batch_size: int | None = None, instances: int = 1, kind: str = "KIND_CPU",
                preferred_batch_sizes: Sequence[int] | None = None,
                max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
                tensorrt: TensorRTSettings | None = None) -> TritonConfig:
    """Read the graph's interface with onnxruntime and decide the Triton configuration.

    ``max_batch_size=None`` means "the default (8) if the graph allows batching, else 0"; an
    explicit value > 0 on a graph with a fixed first axis raises :class:`TritonRepoError`.
    ``tensorrt`` (GPU instances only) adds the ``optimization`` block that runs the graph with
    TensorRT (``runtime.tensorrt``: engine cache, fp16, a profile up to ``max_batch_size``).
    """
    path = Path(model_path)
    if not path.is_file():
        raise TritonRepoError(f"{model_path}: no such file")
    name = check_model_name(name if name is not None else default_model_name(path))
    kind = _check_options(kind, instances, max_queue_delay_us, max_batch_size)
    meta, inputs, outputs, head = _read_graph(path)
    head_output = [t for t in outputs if t[0] == HEAD_OUTPUT]
    outputs = [t for t in outputs if t[0] != HEAD_OUTPUT]
    if not outputs:
        raise TritonRepoError(f"{model_path}: the graph has no outputs Triton could serve")
    notes: list[str] = []
    max_batch_size, preferred = _batching(path, inputs + outputs, max_batch_size, preferred_batch_sizes, notes)
    if max_batch_size > 0 and head_output:
        notes.append(HEAD_NOTE)
    labels = _read_labels(meta)
    skip = 1 if max_batch_size > 0 else 0

    def entry(tname: str, ttype: str, shape: list[Dim], optional: bool = False) -> TensorConfig:
        dims, reshape = _dims(shape[skip:])
        label_file = LABELS_FILENAME if labels is not None and tname == "logits" else None
        return TensorConfig(tname, TRITON_DTYPES[ttype], dims, reshape, label_file, optional)

    head_kept = max_batch_size == 0 and bool(head_output)
    accelerator = _tensorrt(tensorrt, kind, inputs, max_batch_size)
    return TritonConfig(
        name=name, max_batch_size=max_batch_size,
        inputs=tuple([entry(*t) for t in inputs] + ([entry(*t, optional=True) for t in head] if head_kept else [])),
        outputs=tuple(entry(*t) for t in outputs + (head_output if head_kept else [])),
        preferred_batch_sizes=preferred, max_queue_delay_us=max_queue_delay_us,
        instances=instances, kind=kind, labels=labels, source=meta.source, notes=tuple(notes), tensorrt=accelerator)


def _tensorrt(settings: TensorRTSettings | None, kind: str, inputs: list[Tensor],
              max_batch_size: int) -> tuple[tuple[str, str], ...]:
    if settings is None:
        return ()
    if kind != "KIND_GPU":
        raise TritonRepoError(f"{param('tensorrt', True)} runs on GPU instances: add {param('kind', 'KIND_GPU')}")
    shapes = [(n, [d if isinstance(d, int) and d >= 0 else None for d in shape]) for n, _, shape in inputs]
    batch = replace(settings, max_batch=max(1, max_batch_size))
    return tuple(triton_parameters(batch, shapes))


def _fmt(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _written_by_onnxcam(model_dir: Path) -> bool:
    """Whether ``model_dir`` is a model directory that ``onnxcam triton-repo`` wrote (its
    config.pbtxt starts with the line it writes), the only kind ``overwrite`` may replace."""
    try:
        with open(model_dir / "config.pbtxt", encoding="utf-8") as fh:
            return fh.readline().startswith(CONFIG_MARK)
    except (OSError, UnicodeDecodeError):
        return False


def check_target_dir(out_dir: str | Path, name: str, overwrite: bool) -> Path:
    """``out_dir/name``, if it may be written: absent, or with ``overwrite`` a real directory that
    onnxcam wrote; TritonRepoError otherwise (nothing else is ever deleted)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TritonRepoError(f"{out_dir}: exists and is not a directory (-o takes the repository directory)")
    target = out / check_model_name(name)
    if not (target.exists() or target.is_symlink()):
        return target
    if not overwrite:
        raise TritonRepoError(f"{target}: already exists; pass {param('overwrite', True)} to replace it")
    if target.is_symlink() or not target.is_dir() or not _written_by_onnxcam(target):
        raise TritonRepoError(f"{target}: exists and is not a model directory written by `onnxcam triton-repo`; "
                              "it is left alone (remove it yourself to reuse the name)")
    return target


def write_repository(model_path: str | Path, out_dir: str | Path, cfg: TritonConfig,
                     overwrite: bool = False) -> Path:
    """Write ``out_dir/cfg.name`` (config, version 1's model file, labels) and return that directory.

    The model directory is built next to its final place and renamed into it, so a failure never
    leaves half a model behind. An existing ``out_dir/cfg.name`` is replaced only with ``overwrite``
    and only when onnxcam wrote it (:func:`check_target_dir`); otherwise :class:`TritonRepoError` is
    raised before anything is written.
    """
    out = Path(out_dir)
    target = check_target_dir(out, cfg.name, overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{cfg.name}.onnxcam-", dir=out))
    except OSError as exc:
        raise TritonRepoError(f"{out_dir}: cannot create the repository directory ({exc.strerror or exc})") from None
    old: Path | None = None
    try:
        os.chmod(staging, 0o755)
        (staging / "1").mkdir()
        shutil.copyfile(model_path, staging / "1" / MODEL_FILENAME)
        (staging / "config.pbtxt").write_text(render_config(cfg), encoding="utf-8")
        if cfg.labels is not None:
            (staging / LABELS_FILENAME).write_text("\n".join(cfg.labels) + "\n", encoding="utf-8")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{cfg.name}.old-", dir=out))
            os.rmdir(old)
            os.rename(target, old)
        os.rename(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not target.exists():
            os.rename(old, target)  # put the previous model back
            old = None
        raise TritonRepoError(f"{target}: cannot write the model directory ({exc.strerror or exc})") from None
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target
