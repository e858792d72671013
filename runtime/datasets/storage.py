"""Where a dataset run reads and writes: local paths, or any ``pyarrow.fs`` URI.

A location is a local path or a URI that :func:`pyarrow.fs.FileSystem.from_uri` understands
(``s3://bucket/prefix``, ``gs://…``, ``hdfs://host:port/…``, ``file:///…``; characters such as
spaces percent-encoded, credentials from the usual environment). Inputs — images, directories,
glob patterns, lists and manifests — and the Parquet output directory may be either; the
local-path code keeps its own guards (no writing through symbolic links, names taken atomically),
and on a URI each file is written under a temporary name and moved into place (an object store
makes the object appear whole, or not at all). Needs pyarrow only when a URI is used.
"""
from __future__ import annotations

import fnmatch
import functools
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote

from onnxcam.models.files import OutputError, check_target, write_output

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` is a URI (``scheme://…``) rather than a local path."""
    return isinstance(location, str) and bool(_SCHEME.match(location))


@functools.lru_cache(maxsize=256)
def _filesystem(uri: str) -> tuple[Any, str]:
    from pyarrow.fs import FileSystem

    try:
        return FileSystem.from_uri(uri)
    except ImportError:
        raise
    except Exception as exc:  # noqa: BLE001  (ArrowInvalid for a bad URI, OSError for an unknown scheme)
        raise OSError(f"{uri}: not a usable file-system URI ({str(exc).splitlines()[0]})") from None


def resolve(uri: str) -> tuple[Any, str]:
    """(``pyarrow.fs`` file system, path in it) of ``uri``; the file system is made once per
    parent location, so the images of one directory share it."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    if not name or parent.endswith(":/") or parent.endswith(":"):
        return _filesystem(uri)
    fs, base = _filesystem(parent)
    return fs, f"{base.rstrip('/')}/{unquote(name)}"


def child(location: str, relative: str) -> str:
    """``relative`` (a path, or itself a URI) inside ``location`` (a directory path or URI)."""
    if is_uri(relative):
        return relative
    if not is_uri(location):
        return str(Path(location) / relative)
    return f"{location.rstrip('/')}/{quote(relative.lstrip('/'))}"


def parent(location: str) -> str:
    """The directory holding ``location``."""
    return location.rstrip("/").rpartition("/")[0] if is_uri(location) else str(Path(location).parent)


def suffix(location: str) -> str:
    """The lower-case file name ending (``.jpg``) of a path or URI."""
    name = location.rstrip("/").rpartition("/")[2] if is_uri(location) else Path(location).name
    return Path(name).suffix.lower()


def kind(uri: str) -> str | None:
    """'file', 'dir' or None (missing) for a URI."""
    from pyarrow.fs import FileType

    fs, path = resolve(uri)
    found = fs.get_file_info(path).type
    return {FileType.File: "file", FileType.Directory: "dir"}.get(found)


def list_files(uri: str, recursive: bool) -> list[str]:
    """The files under the directory ``uri`` as URIs, sorted; hidden entries (``.name``) skipped."""
    from pyarrow.fs import FileSelector, FileType

    fs, base = resolve(uri)
    found = []
    for info in fs.get_file_info(FileSelector(base, recursive=recursive, allow_not_found=True)):
        relative = info.path[len(base):].lstrip("/")
        if info.type == FileType.File and not any(part.startswith(".") for part in relative.split("/")):
            found.append(relative)
    return [child(uri, r) for r in sorted(found)]


def _glob_regex(pattern: str) -> re.Pattern:
    """A regular expression for a glob pattern over ``/``-separated names: ``*`` and ``?`` stay
    within one directory, ``**/`` spans any number of them, ``[…]`` is a character class."""
    out = []
    for token in re.split(r"(\*\*/|\*\*|\*|\?|\[!?[^\]]*\])", pattern):
        if token == "**/":
            out.append("(?:.*/)?")
        elif token == "**":
            out.append(".*")
        elif token == "*":
            out.append("[^/]*")
        elif token == "?":
            out.append("[^/]")
        elif token.startswith("[") and token.endswith("]") and len(token) > 2:
            negated = token.startswith("[!")
            members = token[2 if negated else 1:-1].replace("\\", "\\\\").replace("^", "\\^")
            out.append(("[^" if negated else "[") + members + "]")
        else:
            out.append(re.escape(token))
    return re.compile("".join(out) + r"\Z")


def glob(pattern: str) -> list[str]:
    """The files matching a URI glob pattern (``s3://b/val/*/*.JPEG``; ``**`` crosses directories)."""
    head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    root = head.rpartition("/")[0]
    rest = pattern[len(root) + 1:]
    regex = _glob_regex(rest)
    return [f for f in list_files(root, recursive="/" in rest or "**" in rest) if regex.match(f[len(root) + 1:])]


def read_bytes(location: str) -> bytes:
    """The bytes of a file (a local path or a URI)."""
    if not is_uri(location):
        return Path(location).read_bytes()
    fs, path = resolve(location)
    with fs.open_input_stream(path) as f:
        return f.read()


class LocalDir:
    """An output directory on the local disk (see ``models.files.write_output``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def make(self, sub: str = "") -> None:
        folder = self.root / sub
        if sub and folder.is_symlink():
            raise OutputError(f"{folder} is a symbolic link; refusing to write through it")
        folder.mkdir(parents=True, exist_ok=True)

    def names(self, sub: str, pattern: str) -> list[str]:
        return sorted(p.name for p in (self.root / sub).glob(pattern) if p.is_file() and not p.is_symlink())

    def exists(self, name: str) -> bool:
        return (self.root / name).exists() or (self.root / name).is_symlink()

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def tail(self, name: str, n: int) -> bytes:
        path = self.root / name
        if not path.is_file() or path.is_symlink() or path.stat().st_size < n:
            return b""
        with open(path, "rb") as f:
            f.seek(-n, 2)
            return f.read(n)

    def write(self, name: str, write: Callable[[IO[bytes]], object] | bytes, overwrite: bool) -> None:
        write_output(self.root / name, write, overwrite=overwrite)

    def remove(self, name: str) -> None:
        check_target(self.root / name, overwrite=True).unlink(missing_ok=True)

    def source(self, sub: str) -> tuple[str, None]:
        """(what ``pyarrow.parquet.read_table`` reads, its file system)."""
        return str(self.root / sub), None


class ArrowDir:
    """An output directory on a ``pyarrow.fs`` file system (a URI)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.base = resolve(self.uri)

    def __str__(self) -> str:
        return self.uri

    def _path(self, name: str) -> str:
        return f"{self.base.rstrip('/')}/{name}" if name else self.base

    def make(self, sub: str = "") -> None:
        self.fs.create_dir(self._path(sub), recursive=True)

    def names(self, sub: str, pattern: str) -> list[str]:
        from pyarrow.fs import FileSelector, FileType

        infos = self.fs.get_file_info(FileSelector(self._path(sub), allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == FileType.File and fnmatch.fnmatch(i.base_name, pattern))

    def exists(self, name: str) -> bool:
        from pyarrow.fs import FileType

        return self.fs.get_file_info(self._path(name)).type != FileType.NotFound

    def read(self, name: str) -> bytes:
        with self.fs.open_input_stream(self._path(name)) as f:
            return f.read()

    def tail(self, name: str, n: int) -> bytes:
        from pyarrow.fs import FileType

        info = self.fs.get_file_info(self._path(name))
        if info.type != FileType.File or (info.size or 0) < n:
            return b""
        with self.fs.open_input_file(self._path(name)) as f:
            f.seek(info.size - n)
            return f.read(n)

    def write(self, name: str, write: Callable[[IO[bytes]], object] | bytes, overwrite: bool) -> None:
        """Write ``name`` under a temporary name, then move it into place."""
        if not overwrite and self.exists(name):
            raise OutputError(f"{self.uri}/{name} exists; pass --overwrite to replace it")
        folder, _, leaf = name.rpartition("/")
        tmp = f"{folder + '/' if folder else ''}.{leaf}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with self.fs.open_output_stream(self._path(tmp)) as f:
                f.write(write) if isinstance(write, (bytes, bytearray, memoryview)) else write(f)
            self.fs.move(self._path(tmp), self._path(name))
        except BaseException:
            if self.exists(tmp):
                self.fs.delete_file(self._path(tmp))
            raise

    def remove(self, name: str) -> None:
        if self.exists(name):
            self.fs.delete_file(self._path(name))

    def source(self, sub: str) -> tuple[str, Any]:
        return self._path(sub), self.fs


def output_dir(location: str | Path) -> LocalDir | ArrowDir:
    """The output directory at ``location`` (a local path or a URI)."""
    return ArrowDir(location) if is_uri(location) else LocalDir(location)
