"""docs/testing.md's layer table names exactly the test files in each layer folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
PAGE = TESTS.parent / "docs" / "testing.md"


@pytest.mark.parametrize("layer", ["unit", "integration", "e2e"])
def test_the_layer_table_lists_every_file_of_the_layer(layer):
    row = next((line for line in PAGE.read_text().splitlines() if line.startswith(f"| `{layer}` |")), None)
    assert row is not None, f"docs/testing.md has no table row for the {layer} layer"
    listed = set(re.findall(r"`(test_\w+)`", row))
    present = {path.stem for path in (TESTS / layer).glob("test_*.py")}
    assert listed == present, (
        f"docs/testing.md's {layer} row: add {sorted(present - listed)}, drop {sorted(listed - present)}"
    )
