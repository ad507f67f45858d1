"""The model registry: the candidate model pairs beside the configured one, and which pair serves.

A model pair is an image model and the text model that shares its vector space, under a
name. The pair in ``IMAGE_SEARCH_IMAGE_MODEL``/``IMAGE_SEARCH_TEXT_MODEL`` is always there
as :data:`CONFIGURED` and serves until a promotion names another. The registry is one JSON
file, ``<home>/models/registry.json``, replaced atomically under ``<home>/locks/models.lock``,
so two commands never lose each other's change.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.storage.files import write_text
from resources.storage.locks import store_lock

#: The name of the configured pair; no registered model may take it.
CONFIGURED = "default"
#: Registered names: also part of index names and folder names, so lowercase, digits and '-'.
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
#: Seconds a command waits for another one changing the registry.
LOCK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ModelPair:
    """A registered (or the configured) image model and text model, and the size of their vectors."""

    name: str
    image_model: str
    text_model: str
    dim: int = 0
    added_at: str = ""

    def ids(self) -> dict[str, Any]:
        """How results and records name the pair: the registered name and the model ids."""
        return {"name": self.name, "image_model": self.image_model, "text_model": self.text_model}


def check_name(name: str) -> str:
    """``name`` when it can name a model; otherwise a one-line error."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ImageSearchError(
            f"model name {name!r} is not usable: use 1-40 lowercase letters, digits or '-', starting with a letter or digit"
        )
    return name


class Registry:
    """The registry file of ``settings.home`` (see the module docstring)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path = Path(settings.home) / "models" / "registry.json"
        self.lock = Path(settings.home) / "locks" / "models.lock"

    # -- reading -------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        """The registry as stored; a one-line error when it is unreadable or not one the commands wrote.

        Names read back are checked as :func:`check_name` checks new ones, since they become
        folder and index names (CWE-22): a hand-edited or forged file cannot reach the disk.
        """
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
            state.setdefault("models", {})
            fields = set(ModelPair.__dataclass_fields__)
            for key, entry in state["models"].items():
                if check_name(key) != entry.get("name") or not set(entry) <= fields:
                    raise ValueError(f"entry {key!r} is not a model pair")
                ModelPair(**entry)
            for role in ("serving", "previous"):
                if state.get(role) is not None:
                    check_name(state[role])
        except FileNotFoundError:
            return {"models": {}, "serving": None, "previous": None}
        except (OSError, ValueError, TypeError, AttributeError, ImageSearchError) as exc:
            raise ImageSearchError(
                f"the model registry {self.path} is unreadable ({exc}): restore it or delete it"
            ) from None
        return state

    def configured(self) -> ModelPair:
        """The pair the settings name, as :data:`CONFIGURED`; its size is its stored vectors' (0 before any)."""
        from resources.vectors.vector_store import VectorStore

        dim = VectorStore.for_settings(self.settings).dimension() or 0
        return ModelPair(CONFIGURED, self.settings.image_model, self.settings.text_model, dim)

    def candidates(self) -> list[ModelPair]:
        """The registered pairs, by name."""
        models = self._state()["models"]
        return [ModelPair(**models[name]) for name in sorted(models)]

    def pairs(self) -> list[ModelPair]:
        """The configured pair, then every registered one."""
        return [self.configured(), *self.candidates()]

    def get(self, name: str) -> ModelPair:
        """The pair named ``name``; a one-line error listing the names when there is none."""
        for pair in self.pairs():
            if pair.name == name:
                return pair
        known = ", ".join(p.name for p in self.pairs())
        raise ImageSearchError(f"no model named {name!r}: registered are {known} (see `image-search models list`)")

    def serving(self) -> ModelPair:
        """The pair that answers searches: the last promoted one, else the configured one."""
        name = self._state().get("serving")
        return self.get(name) if name else self.configured()

    def previous(self) -> ModelPair | None:
        """The pair that served before the last promotion or rollback, if it is still registered."""
        name = self._state().get("previous")
        if not name:
            return None
        return next((p for p in self.pairs() if p.name == name), None)

    def name_of(self, image_model: str, text_model: str) -> str | None:
        """The name under which the pair of these model ids is known, or ``None``."""
        serving = self._state().get("serving")
        found = [p.name for p in self.pairs() if (p.image_model, p.text_model) == (image_model, text_model)]
        if serving in found:
            return serving
        return found[0] if found else None

    # -- changing ------------------------------------------------------------------

    @contextmanager
    def _change(self) -> Iterator[dict[str, Any]]:
        """The state to change in the ``with`` block, written back atomically when it ends cleanly."""
        with store_lock(self.lock, "the model registry", LOCK_TIMEOUT_S):
            state = self._state()
            yield state
            write_text(self.path, json.dumps(state, indent=2, sort_keys=True) + "\n", durable=True)

    def add(self, name: str, image_model: str, text_model: str, dim: int) -> ModelPair:
        """Register a checked pair (see :func:`resources.models.release.check_pair`) under a new name."""
        check_name(name)
        if name == CONFIGURED:
            raise ImageSearchError(f"{CONFIGURED!r} names the configured models: choose another name")
        with self._change() as state:
            if name in state["models"]:
                raise ImageSearchError(
                    f"a model named {name!r} is registered already: remove it first or pick another name"
                )
            added = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            pair = ModelPair(name, image_model, text_model, int(dim), added)
            state["models"][name] = asdict(pair)
        return pair

    def remove(self, name: str) -> ModelPair:
        """Unregister ``name``; refused for the serving pair and for the configured one."""
        with self._change() as state:
            if name == CONFIGURED:
                raise ImageSearchError(
                    f"{CONFIGURED!r} is the configured pair: change IMAGE_SEARCH_IMAGE_MODEL instead"
                )
            if name not in state["models"]:
                raise ImageSearchError(f"no registered model named {name!r} (see `image-search models list`)")
            if state.get("serving") == name:
                raise ImageSearchError(f"{name!r} answers searches now: promote another model or roll back first")
            pair = ModelPair(**state["models"].pop(name))
            if state.get("previous") == name:
                state["previous"] = None
        return pair

    def set_serving(self, name: str) -> ModelPair:
        """Record that ``name`` serves now and that the one serving until now is the previous; returns that one.

        Refused when ``name`` was unregistered meanwhile (``rm`` from another machine), so
        the registry never names a serving pair it does not hold.
        """
        with self._change() as state:
            if name != CONFIGURED and name not in state["models"]:
                raise ImageSearchError(f"model {name!r} was removed meanwhile: register it again to promote it")
            before = state.get("serving") or CONFIGURED
            state["previous"] = before
            state["serving"] = None if name == CONFIGURED else name
        return self.get(before)


def pair_settings(settings: Settings, pair: ModelPair) -> Settings:
    """``settings`` with the models of ``pair``: what encodes, builds and queries for that pair."""
    if (settings.image_model, settings.text_model) == (pair.image_model, pair.text_model):
        return settings
    return settings.replace(image_model=pair.image_model, text_model=pair.text_model)


def serving_settings(settings: Settings) -> Settings:
    """``settings`` with the serving pair's models: what the published index is built and checked with."""
    return pair_settings(settings, Registry(settings).serving())
