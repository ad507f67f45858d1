"""The search page's saved searches: a Save box under the results, a Saved list in the sidebar, and a search's own view.

The view shows the search's latest top k (from the last refresh of the index), flags the
photos its user has not seen before, and puts a thumbs up and down on each, the marks that
``bench relevance`` and the pipeline's check use. Opening the view counts as a look.
"""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from resources.errors import ImageSearchError
from resources.saved.refresh import unseen
from resources.saved.store import SavedSearch, SavedStore
from search_app import saved
from search_app.service import SearchService

COLUMNS = 4
VIEW = "saved_view"


def _open(name: str | None) -> None:
    st.session_state[VIEW] = name


def sidebar(store: SavedStore) -> None:
    """The Saved list: one button per search with its count of photos new since its user last looked."""
    with st.sidebar:
        st.header("Saved searches")
        try:
            rows, problems = saved.overview(store)
        except ImageSearchError as exc:
            rows, problems = [], [str(exc)]
        for problem in problems:
            st.warning(problem)
        if not rows:
            st.caption("Search, then save it below the results to watch it.")
        for row in rows:
            label = f"{row['name']} ({row['unseen']} new)" if row["unseen"] else row["name"]
            st.button(label, key=f"open-{row['name']}", on_click=_open, args=(row["name"],), width="stretch")


def _save(store: SavedStore, service: Callable[[], SearchService], search: dict[str, Any], images: list[bytes]) -> None:
    """The Save button's callback: it runs before the page, so the Saved list already shows the new search."""
    try:
        kept = saved.save(service(), store, SavedSearch(name=st.session_state.save_name.strip(), **search), images)
    except ImageSearchError as exc:
        st.session_state["saved_message"] = ("error", str(exc))
        return
    st.session_state["saved_message"] = (
        "success",
        f"Saved “{kept.name}”: each refresh of the index now looks for new photos for it.",
    )


def save_box(
    store: SavedStore, service: Callable[[], SearchService], search: dict[str, Any], images: list[bytes]
) -> None:
    """A name box and a Save button that keep the search on the page (``search``: a :class:`SavedSearch` less its name)."""
    with st.form("save", border=False):
        name_column, button_column = st.columns([5, 1], vertical_alignment="bottom")
        name_column.text_input("Save this search as", key="save_name", placeholder="e.g. red circles")
        button_column.form_submit_button("Save", width="stretch", on_click=_save, args=(store, service, search, images))
    kind, message = st.session_state.pop("saved_message", (None, None))
    if kind is not None:
        getattr(st, kind)(message)


def _mark(store: SavedStore, service: SearchService, name: str, photo_id: str, value: str | None) -> None:
    try:
        saved.mark(service, store, name, photo_id, value)
    except ImageSearchError as exc:
        st.session_state["saved_problem"] = str(exc)


def view(store: SavedStore, service: SearchService, name: str, show_result: Callable) -> None:
    """One saved search: its latest top k with new ones flagged and a thumbs up and down on each."""
    st.button("← Back to search", on_click=_open, args=(None,))
    problem = st.session_state.pop("saved_problem", None)
    if problem:
        st.error(problem)
    try:
        shown = saved.show(store, name)
        results = store.results(name)
        fresh = {e["photo_id"] for e in unseen(results, store.looked(name))} | {e["photo_id"] for e in shown["new"]}
    except ImageSearchError as exc:
        st.error(str(exc))
        return
    st.subheader(f"Saved search “{name}”: {store.get(name).label()}")
    st.caption(f"{len(shown['new'])} new with the latest build ({shown['build']}), refreshed {shown['refreshed_at']}.")
    for photo_id in shown["missing_good"]:
        st.warning(f"Photo {photo_id}, marked good, is no longer in the top {len(shown['top'])}.")
    columns = st.columns(COLUMNS)
    for rank, entry in enumerate(shown["top"]):
        with columns[rank % COLUMNS], st.container(border=True):
            _entry(store, service, name, entry, entry["photo_id"] in fresh, shown["marks"], show_result)
    store.look(name, [e["photo_id"] for e in shown["top"]])


def _entry(store, service, name, entry, fresh, marks, show_result) -> None:
    photo_id = entry["photo_id"]
    if fresh:
        st.markdown(":green-badge[new]")
    try:
        show_result(service.photo(photo_id))
    except ImageSearchError as exc:
        st.caption(str(exc))
    mark = marks.get(photo_id)
    up, down = st.columns(2)
    up.button(
        "👍" + (" good" if mark == "good" else ""),
        key=f"good-{photo_id}",
        width="stretch",
        on_click=_mark,
        args=(store, service, name, photo_id, None if mark == "good" else "good"),
    )
    down.button(
        "👎" + (" bad" if mark == "bad" else ""),
        key=f"bad-{photo_id}",
        width="stretch",
        on_click=_mark,
        args=(store, service, name, photo_id, None if mark == "bad" else "bad"),
    )


def query_of(parts: list | None, single: dict[str, Any]) -> dict[str, Any]:
    """The saved form of the page's search: ``single`` when it is not composed, else its parts (an image is image 0)."""
    if parts is None:
        return single
    kept = []
    for part in parts:
        if part.text is not None:
            kept.append({"text": part.text, "weight": part.weight})
        elif part.photo_id is not None:
            kept.append({"photo_id": part.photo_id, "weight": part.weight})
        else:
            kept.append({"image": 0, "weight": part.weight})
    return {"parts": kept}
