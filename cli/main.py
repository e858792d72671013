"""The ``onnxcam`` command: a click group whose sub-commands live one per module."""
from __future__ import annotations

import click
from onnxcam.cli.demo_cmd import demo_command
from onnxcam.cli.doctor_cmd import doctor_command
from onnxcam.cli.evaluate_cmd import evaluate_command
from onnxcam.cli.explain_cmd import explain_command
from onnxcam.cli.export_cmd import export_command
from onnxcam.cli.info_cmd import info_command
from onnxcam.cli.serve_cmd import serve_command
from onnxcam.cli.triton_cmd import triton_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxcam")
def main() -> None:
    """Grad-CAM family explanations as plain ONNX graphs."""


main.add_command(export_command)
main.add_command(explain_command)
main.add_command(info_command)
main.add_command(demo_command)
main.add_command(evaluate_command)
main.add_command(serve_command)
main.add_command(triton_command)
main.add_command(doctor_command)

if __name__ == "__main__":  # pragma: no cover
    main()
