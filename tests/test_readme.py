"""The README's "Supported models" table is the one tests/zoo.py generates from the zoo tests' lists."""
from __future__ import annotations

from pathlib import Path

from zoo import readme_section, table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_supported_models_table_is_generated_from_the_zoo() -> None:
    assert readme_section(README.read_text()) == table(), "run `python tests/zoo.py` and paste the table into README.md"
