"""What a refresh of a saved search records, and what it tells: new matches, unseen ones, good answers lost.

A results record is ``{"build", "refreshed_at", "top": [{"photo_id", "score", ...}],
"previous": {"build", "ids"} | None}``: the top k found on ``build`` and the top k ids of
the build before it. A photo is *new* when it is in the top k now and was not on the
previous build, so re-running a search on the same build keeps its new photos new until
the next build, and a first run (no previous build) finds nothing new: it is the baseline.
"""

from __future__ import annotations

from typing import Any

from resources.errors import ImageSearchError
from resources.saved.store import now


def next_results(previous: dict | None, build: str, top: list[dict[str, Any]]) -> dict[str, Any]:
    """The record after finding ``top`` on ``build``, given the ``previous`` record (or ``None``)."""
    if previous is None:
        baseline = None
    elif previous["build"] == build:
        baseline = previous.get("previous")
    else:
        baseline = {"build": previous["build"], "ids": [t["photo_id"] for t in previous["top"]]}
    return {"build": build, "refreshed_at": now(), "top": top, "previous": baseline}


def new_matches(results: dict | None) -> list[dict[str, Any]]:
    """The top-k entries that entered since the previous build, best first; none before a second build."""
    if not results or not results.get("previous"):
        return []
    before = set(results["previous"]["ids"])
    return [entry for entry in results["top"] if entry["photo_id"] not in before]


def unseen(results: dict | None, looked: set[str]) -> list[dict[str, Any]]:
    """The top-k entries its user has not looked at yet (the page's "new since last look")."""
    return [entry for entry in (results or {}).get("top", []) if entry["photo_id"] not in looked]


def dropped_good(results: dict | None, marks: dict[str, str]) -> list[str]:
    """The photos marked good that are not in the top k, sorted: answers a rebuild lost."""
    top = {entry["photo_id"] for entry in (results or {}).get("top", [])}
    return sorted(pid for pid, mark in marks.items() if mark == "good" and pid not in top)


def judgements(searches: list, marks_of) -> dict[str, set[str]]:
    """Lower-cased words of each saved text search -> the photos marked good for it, for ``bench relevance``.

    ``marks_of(name)`` gives a search's marks; searches of other kinds (a photo, a composition)
    cannot be asked as words, so they are left out, and so are marks that cannot be read.
    """
    judged: dict[str, set[str]] = {}
    for search in searches:
        if search.kind != "text":
            continue
        try:
            good = {pid for pid, mark in marks_of(search.name).items() if mark == "good"}
        except ImageSearchError:
            continue
        if good:
            judged.setdefault(search.query["text"].strip().lower(), set()).update(good)
    return judged
