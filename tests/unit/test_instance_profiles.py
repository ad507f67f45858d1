"""The Dagster instance profiles and deployment definitions the project ships, read as files and loaded in-process."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_the_instance_profiles_agree_on_everything_but_storage():
    """deploy/postgres/dagster.yaml keeps the default's monitoring, retries, launcher and pools."""
    default = yaml.safe_load((ROOT / ".dagster" / "dagster.yaml").read_text())
    postgres = yaml.safe_load((ROOT / "deploy" / "postgres" / "dagster.yaml").read_text())
    assert postgres.pop("storage") == {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}
    assert postgres == default
