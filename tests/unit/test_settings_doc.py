"""docs/configuration.md is what scripts/settings_doc.py renders from the Settings field descriptions."""

from __future__ import annotations

from scripts.settings_doc import PAGE, render


def test_the_configuration_page_matches_the_settings():
    assert PAGE.read_text() == render(), "docs/configuration.md is stale: run python scripts/settings_doc.py"


def test_every_setting_has_a_description():
    from resources.config import Settings

    assert [name for name, info in Settings.model_fields.items() if not info.description] == []
