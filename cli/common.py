"""Shared pieces of the command line: error lines, exit codes, option parsers, logging."""
from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import click

EXIT_PARTIAL, EXIT_USAGE = 1, 2


def fail(message: str, code: int = EXIT_USAGE, debug: bool = False) -> NoReturn:
    """Print one ``error:`` line on stderr (a traceback too with ``--debug``) and exit."""
    if debug and sys.exc_info()[0] is not None:
        traceback.print_exc()
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


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


def setup_logging(debug: bool = False) -> None:
    """onnxcam's own progress lines on stderr, without the libraries' chatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("onnxcam")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False


def _numbers(value: str | None, kind: type, name: str, count: int | None):
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
    return _numbers(value, int, param.name, 3)


def float_triplet(ctx: click.Context, param: click.Parameter, value: str | None):
    """``R,G,B`` (or one value for grey models) → a tuple of floats."""
    numbers = _numbers(value, float, param.name, None)
    if numbers is not None and len(numbers) not in (1, 3):
        raise click.BadParameter("expected 1 or 3 values")
    return numbers
