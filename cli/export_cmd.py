"""``onnxcam export`` (filled in by the exporter work)."""
import click


@click.command("export")
def export_command() -> None:
    """Export a classifier into an explanation graph."""
