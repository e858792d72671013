"""Writing output files without losing anything.

Every file onnxcam writes goes through :func:`write_output`: the bytes go to a temporary file in
the target's directory, which then takes the target's name in one step — ``os.link`` (fails if
the name exists: nothing is replaced) or, with ``overwrite``, ``os.replace`` (replaces the
directory entry itself, so a symbolic link planted there is replaced, never followed). A target
that is a symbolic link is refused either way, and a failed write leaves nothing behind.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from onnxcam.models.errors import OnnxcamError, param

__all__ = ["OutputError", "check_target", "write_output"]


class OutputError(OnnxcamError):
    """An output that cannot or must not be written (one line naming the file)."""


def check_target(path: str | os.PathLike, overwrite: bool) -> Path:
    """``path``, or an OutputError when it is a symbolic link, a directory, or (without
    ``overwrite``) an existing file."""
    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"{path} is a symbolic link; refusing to write through it")
    if path.is_dir():
        raise OutputError(f"{path} is a directory")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass {param('overwrite', True)} to replace it")
    return path


def write_output(path: str | os.PathLike, write: Callable[[IO[bytes]], object] | bytes, overwrite: bool = False) -> Path:
    """Write ``path`` atomically from ``write`` (bytes, or a function of the open binary file)
    (see the module docstring); returns the path. Raises OutputError for a target that must not
    be written, OSError for one that cannot."""
    path = check_target(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(write) if isinstance(write, (bytes, bytearray, memoryview)) else write(fh)
        os.chmod(tmp, 0o666 & ~_UMASK)
        if overwrite:
            if path.is_symlink():  # planted since the check: still never written through
                raise OutputError(f"{path} is a symbolic link; refusing to write through it")
            os.replace(tmp, path)
        else:
            _create(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _create(tmp: str, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if that name is free (atomically)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputError(f"{path} exists; pass {param('overwrite', True)} to replace it") from None
    except OSError:  # a file system without hard links: reserve the name, then take it
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise OutputError(f"{path} exists; pass {param('overwrite', True)} to replace it") from None
        os.replace(tmp, path)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask is process-wide
