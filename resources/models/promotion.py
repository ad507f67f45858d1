"""Promotion, rollback and removal of model pairs: what ``image-search models promote|rollback|rm`` do.

A promotion is judged first (:func:`resources.models.compare.refusal`) unless forced, then
made by :func:`resources.models.release.switch`, one atomic publish; a rollback switches
back to the previous pair's kept build. Each returns a record for the release history.
"""

from __future__ import annotations

from typing import Any

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.index import model_backend
from resources.models.compare import compare, refusal
from resources.models.registry import ModelPair, Registry
from resources.models.release import switch


def promote(settings: Settings, name: str, force: bool = False) -> dict[str, Any]:
    """Publish ``name``'s shadow build; refused with one line when the judgements say it answers worse, unless ``force``."""
    registry = Registry(settings)
    pair, serving = registry.get(name), registry.serving()
    if pair.name == serving.name:
        raise ImageSearchError(f"{name!r} answers searches already")
    judged = compare(settings, [serving.name, pair.name])
    reason = refusal(judged, name)
    if reason and not force:
        raise ImageSearchError(reason)
    before, info = switch(settings, pair)
    return {
        "promoted": pair.ids(),
        "previous": before.name,
        "build": info.name,
        "dim": info.dim,
        "forced": bool(force and reason),
        "refusal_overridden": reason if force else None,
        "models": judged["models"],
        "queries": judged["queries"],
    }


def rollback(settings: Settings) -> dict[str, Any]:
    """Publish the previous pair's kept build again; nothing is encoded or built."""
    previous = Registry(settings).previous()
    if previous is None:
        raise ImageSearchError("there is no previous model to roll back to: nothing was promoted yet")
    before, info = switch(settings, previous)
    return {"serving": previous.name, "rolled_back_from": before.name, "build": info.name, "dim": info.dim}


def remove(settings: Settings, name: str) -> ModelPair:
    """Unregister ``name`` and drop its shadow index; refused for the serving pair (its vectors are left on disk)."""
    pair = Registry(settings).remove(name)
    model_backend(settings, name).drop_all()
    return pair
