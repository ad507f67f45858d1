"""Dagster resources around the plain-Python ones; only the pipeline (assets, definitions) imports this module."""

import os
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

from dagster import ConfigurableResource, EnvVar, InitResourceContext, ResourceDependency
from pydantic import Field, SecretStr, create_model

from resources.config import SECRETS, Settings, env_variable

if TYPE_CHECKING:
    from resources.encoder.clip import ClipEncoder

#: Settings passed to runs as ``EnvVar`` references when set: the URLs may hold a password or a token.
CREDENTIALS = ("es_url", "notify_url", *SECRETS)


def _config_type(annotation) -> type:
    """The Dagster config type of a setting: paths, choices and secrets travel as strings, checked by :class:`Settings`."""
    if annotation is Path or typing.get_origin(annotation) is Literal:
        return str
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    plain = options[0] if options else annotation
    return str if plain is SecretStr else plain


class _SettingsResourceBase(ConfigurableResource):
    """Gives assets, checks and sensors the run's :class:`~resources.config.Settings` (``settings: ResourceParam[Settings]``).

    Every setting is a field; one left unset comes from its ``IMAGE_SEARCH_*`` variable when
    a run (or sensor tick) starts, so ``dagster definitions validate`` needs none of them.
    """

    def get(self) -> Settings:
        """The effective settings: the fields set here over the environment."""
        given = {name: value for name in Settings.model_fields if (value := getattr(self, name)) is not None}
        return Settings.from_env(**given)

    def create_resource(self, context: InitResourceContext) -> Settings:
        """What assets, checks and sensors receive: the plain settings, not this resource."""
        return self.get()

    @classmethod
    def with_credentials_from_env(cls) -> "SettingsResource":
        """The resource with each credential set in this environment as an ``EnvVar``.

        Dagster resolves an ``EnvVar`` in the run when it starts and never stores or shows
        its value; unset credentials stay unset (a local index needs none).
        """
        return cls(**{name: EnvVar(env_variable(name)) for name in CREDENTIALS if os.environ.get(env_variable(name))})


SettingsResource = create_model(
    "SettingsResource",
    __base__=_SettingsResourceBase,
    __module__=__name__,
    __doc__=_SettingsResourceBase.__doc__,
    **{
        name: (Optional[_config_type(info.annotation)], Field(None, description=info.description))
        for name, info in Settings.model_fields.items()
    },
)


class ClipResource(ConfigurableResource):
    """The one CLIP encoder (:class:`~resources.encoder.clip.ClipEncoder`) for the run, from the run's settings.

    Models load on first use and at most once per process, so every asset of a run that
    shares a process shares the loaded weights.
    """

    settings: ResourceDependency[Settings]

    def get(self) -> "ClipEncoder":
        """The encoder configured by the settings (models, device, precision, batch size, workers)."""
        from resources.encoder.clip import ClipEncoder

        return ClipEncoder.from_settings(self.settings)
