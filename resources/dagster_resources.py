"""Dagster resources: thin ConfigurableResource wrappers around the plain-Python resources.

Only the pipeline (assets, definitions) imports this module.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource

from resources.config import Settings


class SettingsResource(ConfigurableResource):
    """The project's :class:`~resources.config.Settings`; fields set here override the environment.

    Left empty, every value comes from the ``IMAGE_SEARCH_*`` variables when a run starts,
    so ``dagster definitions validate`` needs none of them.
    """

    home: Optional[str] = None
    dataset: Optional[str] = None
    image_model: Optional[str] = None
    text_model: Optional[str] = None
    backend: Optional[str] = None

    def get(self) -> Settings:
        """The effective settings for this run."""
        overrides = {
            name: (Path(value) if name == "home" else value)
            for name in ("home", "dataset", "image_model", "text_model", "backend")
            if (value := getattr(self, name)) is not None
        }
        settings = dataclasses.replace(Settings.from_env(), **overrides)
        settings.validate()
        return settings
