"""What the commands share: error lines and exit codes, option parsers and repeated options, the
Explainer they open, the files they write, and the tables they print.

The commands only parse, call the library and print; everything here is about that. The runtime
is imported inside the functions so that ``onnxcam --help`` and ``onnxcam export`` stay cheap.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click
from onnxcam.models.errors import OnnxcamError

EXIT_PARTIAL, EXIT_USAGE = 1, 2
#: library parameters whose command-line flag is not ``--`` + the name with hyphens
FLAGS = {"class_index": "--class", "intra_op_threads": "--threads", "out": "--out/-o"}


# -- errors and logging ------------------------------------------------------------------------
def message_of(error: str | BaseException) -> str:
    """One line for the terminal: an onnxcam error with its parameters spelled as flags, control
    characters (a file name with a newline, say) escaped."""
    text = error.for_cli(FLAGS) if isinstance(error, OnnxcamError) else str(error)
    return printable(text) if text else type(error).__name__


def fail(error: str | BaseException, code: int = EXIT_USAGE, debug: bool = False) -> NoReturn:
    """Print one ``error:`` line on stderr (a traceback too with ``--debug``) and exit."""
    if debug and sys.exc_info()[0] is not None:
        traceback.print_exc()
    click.echo(f"error: {message_of(error)}", err=True)
    sys.exit(code)


class Reporter:
    """Per-input error lines on stderr that do not garble the progress bar; counts failures."""

    def __init__(self, debug: bool = False) -> None:
        self.debug = debug
        self.failed = 0

    def error(self, message: str | BaseException, count: bool = True) -> None:
        from tqdm import tqdm

        if self.debug and sys.exc_info()[0] is not None:
            traceback.print_exc()
        tqdm.write(f"error: {message_of(message)}", file=sys.stderr)
        self.failed += int(count)


def setup_logging(debug: bool = False) -> None:
    """onnxcam's own progress lines on stderr, without the libraries' chatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("onnxcam")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False


# -- option parsers ----------------------------------------------------------------------------
class LazyHelp(click.Option):
    """An option whose help text is made when help is shown (``help_text()``): it can list what
    the registries hold then, and importing the CLI does not import the runtime."""

    def __init__(self, *args: Any, help_text: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_text = help_text

    def get_help_record(self, ctx: click.Context):
        self.help = self.help_text()
        return super().get_help_record(ctx)


def method_help() -> str:
    from onnxcam.runtime.registry import method_names

    return (f"Method (repeatable or comma-separated; 'all' for the CAM family). Default: gradcam. CAM family: "
            f"{', '.join(method_names(family=True))}; also: {', '.join(method_names(family=False))} (the "
            "input-space ones need a graph exported with --input-gradients). `onnxcam info MODEL` lists what a "
            "graph can run.")

def _numbers(value: str | None, kind: type, count: int | None):
    if value is None:
        return None
    try:
        numbers = tuple(kind(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got '{value}'") from None
    if count is not None and len(numbers) != count:
        raise click.BadParameter(f"expected {count} values, got {len(numbers)}")
    return numbers


def int_triplet(ctx: click.Context, param: click.Parameter, value: str | None):
    """``C,H,W`` → a tuple of three ints."""
    return _numbers(value, int, 3)


def float_triplet(ctx: click.Context, param: click.Parameter, value: str | None):
    """``R,G,B`` (or one value for grey models) → a tuple of floats."""
    numbers = _numbers(value, float, None)
    if numbers is not None and len(numbers) not in (1, 3):
        raise click.BadParameter("expected 1 or 3 values")
    return numbers


def parse_methods(values: Sequence[str], default: Sequence[str] = ("gradcam",), family_only: bool = False) -> list[str]:
    """``--method`` values (repeatable, comma-separated, ``all`` = the CAM family) → registered
    method names, in order. Unknown names end the command with one error line (exit 2)."""
    from onnxcam.runtime.registry import method_names

    known = method_names(family=True if family_only else None)
    names: list[str] = []
    for value in values:
        for name in (v.strip().lower() for v in value.split(",")):
            if name == "all":
                names.extend(method_names(family=True))
            elif name:
                names.append(name)
    unknown = [n for n in names if n not in known]
    if unknown:
        fail(f"unknown method {unknown[0]!r}; choose from {', '.join(known)} (or 'all')", EXIT_USAGE)
    return list(dict.fromkeys(names)) or list(default)


def parse_class(value: str) -> int | None:
    """``--class``: ``top1`` → None, a non-negative integer → that class."""
    text = value.strip().lower()
    if text in ("top1", "top-1", "top"):
        return None
    if not text.isdigit():
        fail(f"--class must be 'top1' or a class index ≥ 0, got {value!r}", EXIT_USAGE)
    return int(text)


def parse_providers(ctx: click.Context, param: click.Parameter, values: Sequence[str]):
    """``--providers`` (repeatable): ``auto``, or ``NAME[:key=value,...]`` with NAME a provider
    or an alias (cpu, cuda, tensorrt, ...) → None (auto) or [name | (name, {key: value})]."""
    chosen = []
    for value in values:
        name, _, options = value.partition(":")
        if name.strip().lower() == "auto":
            continue
        pairs = [o for o in options.split(",") if o.strip()]
        bad = [o for o in pairs if "=" not in o]
        if bad or not name.strip():
            raise click.BadParameter(f"expected NAME or NAME:key=value,..., got {value!r}")
        opts = dict(o.split("=", 1) for o in pairs)
        chosen.append((name.strip(), {k.strip(): v.strip() for k, v in opts.items()}) if opts else name.strip())
    return chosen or None


#: ``--providers`` (repeatable, with options), as every command that runs a graph takes it
providers_option = click.option(
    "--providers", multiple=True, callback=parse_providers, metavar="NAME[:key=value,...]",
    help="Execution provider, repeatable, in priority order (cpu, cuda, tensorrt or any onnxruntime provider "
         "name, with options); default auto: CUDA when it really works, else CPU.")


def provider_options(command: Callable) -> Callable:
    """``--providers`` and ``--threads`` (onnxruntime intra-op threads)."""
    command = click.option("--threads", type=click.IntRange(0), default=None,
                           help="ONNX Runtime intra-op threads (0: ORT's default).")(command)
    return providers_option(command)


# -- the explainer and the inputs --------------------------------------------------------------
def make_explainer(model: str, providers: Any, threads: int | None, batch_size: int, debug: bool,
                   spinning: bool = True) -> Any:
    """The runtime's Explainer for MODEL, or one error line and exit 2."""
    from onnxcam.runtime import Explainer

    try:
        return Explainer(model, providers=providers, intra_op_threads=threads, batch_size=batch_size,
                         spinning=spinning)
    except OnnxcamError as exc:
        fail(exc, EXIT_USAGE, debug)
    except Exception as exc:  # noqa: BLE001
        fail(f"{model}: cannot load ({type(exc).__name__}: {exc})", EXIT_USAGE, debug)


def own_output(path: Path, out_dir: Path | None, is_output: Callable[[str], bool]) -> bool:
    """Whether ``path`` lies in ``out_dir`` and is named like one of the command's outputs (so
    that a run never reads back what an earlier run wrote there)."""
    return out_dir is not None and os.path.realpath(path.parent) == os.path.realpath(out_dir) and is_output(path.name)


def explain_output_name(name: str) -> bool:
    """``<stem>.<method>.png`` / ``.npy``: what ``explain`` writes."""
    from onnxcam.runtime.registry import METHODS

    stem, _, suffix = name.rpartition(".")
    return suffix.lower() in ("png", "npy") and stem.rpartition(".")[2] in METHODS


def expand_inputs(args: Iterable[str], exclude: Path | None = None) -> tuple[list[Path], list[str]]:
    """Files to explain (directories expanded to their image files, sorted; hidden files, repeats
    and ``explain``'s own outputs in the output directory ``exclude`` skipped) and one error
    message per argument that yields nothing."""
    from onnxcam.runtime.images import IMAGE_EXTENSIONS

    files: list[Path] = []
    errors: list[str] = []
    seen: set[str] = set()
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            try:
                found = sorted(p for p in path.iterdir() if not p.name.startswith(".")
                               and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            except OSError as exc:
                errors.append(f"{printable(arg)}: cannot list directory ({exc.strerror or exc})")
                continue
            found = [p for p in found if not own_output(p, exclude, explain_output_name)]
            if not found:
                errors.append(f"{printable(arg)}: directory has no images "
                              f"(looked for {', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)})")
        elif path.exists():
            if own_output(path, exclude, explain_output_name):
                errors.append(f"{printable(arg)}: is one of explain's outputs in --out; skipped")
                continue
            found = [path]
        else:
            errors.append(f"{printable(arg)}: no such file or directory")
            continue
        for p in found:
            key = os.path.normcase(os.path.realpath(p))
            if key not in seen:
                seen.add(key)
                files.append(p)
    return files, errors


def printable(name: object) -> str:
    """A file name (or any text) as one printable line: control characters escaped."""
    text = str(name)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def prepare_output_dir(out: str, debug: bool = False) -> Path:
    """``--out`` as a directory, created if missing; a usage error when that is impossible."""
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"{out}: exists and is not a directory (--out takes a directory)", EXIT_USAGE)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{out}: cannot create the output directory ({exc.strerror or exc})", EXIT_USAGE, debug)
    return out_dir


# -- files written -----------------------------------------------------------------------------
def save_png(image: Any, path: Path, overwrite: bool, compress_level: int = 1) -> None:
    """Save a PIL image as PNG (fast compression by default: overlays are photos), atomically,
    never replacing a file without ``overwrite`` nor writing through a symbolic link."""
    from onnxcam.models.files import write_output

    write_output(path, lambda fh: image.save(fh, format="PNG", compress_level=compress_level), overwrite)


def save_npy(array: Any, path: Path, overwrite: bool) -> None:
    import numpy as np
    from onnxcam.models.files import write_output

    write_output(path, lambda fh: np.save(fh, np.asarray(array, np.float32)), overwrite)


def save_text(text: str, path: Path, overwrite: bool) -> None:
    from onnxcam.models.files import write_output

    write_output(path, text.encode("utf-8"), overwrite)


def refuse_existing(paths: Iterable[Path], overwrite: bool) -> None:
    """Before any work: one error line and exit 2 if an output exists (and ``overwrite`` is not
    given) or is a symbolic link."""
    from onnxcam.models.files import OutputError, check_target

    for path in paths:
        try:
            check_target(path, overwrite)
        except OutputError as exc:
            fail(exc, EXIT_USAGE)


# -- printing ----------------------------------------------------------------------------------
def label_of(labels: Sequence[str] | None, index: int) -> str:
    return labels[index] if labels is not None and 0 <= index < len(labels) else "-"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain left-aligned text table (two spaces between columns, a dashed rule)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])
