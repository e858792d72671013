"""``onnxcam doctor``: which onnxruntime is installed and which execution providers work here."""
from __future__ import annotations

import json

import click
from onnxcam.cli.common import setup_logging


@click.command("doctor", short_help="Which onnxruntime and execution providers work here, and why not.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def doctor_command(as_json: bool) -> None:
    """Print the installed onnxruntime distributions, each execution provider of the build with
    whether a session really runs on it (and onnxruntime's reason when not), whether a GPU is
    visible, and what the default provider choice is."""
    setup_logging()
    from onnxcam.runtime.doctor import report, text

    facts = report()
    click.echo(json.dumps(facts, indent=2) if as_json else text(facts))
