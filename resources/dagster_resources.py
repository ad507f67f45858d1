"""Dagster resources: thin ConfigurableResource wrappers around the plain-Python resources.

Only the pipeline (assets, definitions) imports this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from dagster import ConfigurableResource

from resources.config import Settings

if TYPE_CHECKING:
    from resources.clip import ClipEncoder


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
            name: value
            for name in ("home", "dataset", "image_model", "text_model", "backend")
            if (value := getattr(self, name)) is not None
        }
        return Settings.from_env(**overrides)


class ClipResource(ConfigurableResource):
    """The one CLIP encoder (:class:`~resources.clip.ClipEncoder`) for the run, from the run's settings.

    Models load on first use and at most once per process, so every asset of a run that
    shares a process shares the loaded weights.
    """

    settings: SettingsResource

    def get(self) -> "ClipEncoder":
        """The encoder configured by the settings (models, device, precision, batch size, workers)."""
        from resources.clip import ClipEncoder

        return ClipEncoder.from_settings(self.settings.get())
