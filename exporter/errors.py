"""Errors the exporter raises for the user to read."""


class ExportError(Exception):
    """One-line user-facing error; the CLI prints it and exits 2."""
