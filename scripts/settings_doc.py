"""Write docs/configuration.md from the ``Settings`` field descriptions, so the two cannot drift apart.

Run ``python scripts/settings_doc.py`` after changing a setting; ``tests/unit/test_settings_doc.py``
fails while the page differs from what this renders.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resources.config import Settings, env_variable  # noqa: E402

PAGE = ROOT / "docs" / "configuration.md"
HEADER = """# Configuration

Every setting is an environment variable, read in one place (`resources/config.py`); all
are optional. A bad value stops the command with one line naming the variable and what to
use. Credentials (`IMAGE_SEARCH_ES_PASSWORD`, `IMAGE_SEARCH_ES_API_KEY`, `IMAGE_SEARCH_API_KEY`,
and any user name, password or signature inside a URL) are never printed.

`DAGSTER_HOME` is `./.dagster`, whose `dagster.yaml` the project owns, so runs and logs
persist across `make demo` runs.

This page is generated from the settings' own descriptions by `python scripts/settings_doc.py`.

| variable | default | meaning |
|---|---|---|
"""


def _default(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def render() -> str:
    """The whole page: the header, then one row per setting in declaration order."""
    rows = []
    for name, info in Settings.model_fields.items():
        description = (info.description or "").replace("](docs/", "](")
        rows.append(f"| `{env_variable(name)}` | {_default(info.default)} | {description} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(ROOT)}")
