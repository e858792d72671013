"""The errors onnxcam raises for people to read, and how their messages name parameters.

A message names a parameter through :func:`param`, so that the same error reads right for a
Python caller and on the command line: ``str(error)`` spells ``param("scores", "OUTPUT")`` as
``scores=OUTPUT`` (and ``param("overwrite", True)`` as ``overwrite=True``), while
``error.for_cli()`` spells them ``--scores OUTPUT`` and ``--overwrite``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["OnnxcamError", "param"]

_MARK = "\x1f"
_PARAM = re.compile(f"{_MARK}([A-Za-z_][A-Za-z0-9_]*){_MARK}([^{_MARK}]*){_MARK}")


def param(name: str, value: object = "") -> str:
    """``name`` (with an example ``value``) as a parameter inside an error message."""
    return f"{_MARK}{name}{_MARK}{value}{_MARK}"


def _python(match: re.Match) -> str:
    return f"{match[1]}={match[2]}" if match[2] else f"{match[1]}="


class OnnxcamError(Exception):
    """Base of every error onnxcam raises on purpose; its message is one line for an end user."""

    def __str__(self) -> str:
        return _PARAM.sub(_python, super().__str__())

    def for_cli(self, flags: Mapping[str, str] | None = None) -> str:
        """The message with parameters spelled as command-line flags: ``--name VALUE`` (``--name``
        for ``True``), underscores as hyphens unless ``flags`` maps the name to another flag."""
        def flag(match: re.Match) -> str:
            spelled = (flags or {}).get(match[1], "--" + match[1].replace("_", "-"))
            return spelled if match[2] in ("", "True") else f"{spelled} {match[2]}"

        return _PARAM.sub(flag, Exception.__str__(self))
