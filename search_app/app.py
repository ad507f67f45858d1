"""The search page: find photos by words in any language, by an uploaded photo, or by "more like this".

Any search can be steered: a "Without" box pushes results away from some words, and a
"more like this" search takes words to add ("more like this, and at night"); the page then
runs a composed query (docs/composition.md).

Run it with ``streamlit run search_app/app.py`` (``make demo`` does). The search lives in
the page's URL, so it can be bookmarked or shared; the query service is loaded once per
server process and shared by every visitor.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Callable

import streamlit as st

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.index.base import MODES, ORIENTATIONS, Filters
from resources.saved.store import SavedStore
from search_app import saved_page
from search_app.results import SearchResult
from search_app.saved import filters_dict
from search_app.service import QueryPart, SearchService, load_query_image

#: Extensions the upload widget offers; the service checks the content whatever the name says.
UPLOAD_TYPES = ("jpg", "jpeg", "png", "webp")
DEFAULT_K = 12
#: The most results the page shows at once (a search may return up to ``MAX_K``).
MAX_SHOWN = 60
COLUMNS = 4
ANY = "any"

#: Widget keys kept in the URL, with the value each takes when the URL does not name it.
URL_DEFAULTS: dict[str, Any] = {
    "q": "",
    "mode": "vector",
    "k": DEFAULT_K,
    "min_score": 0.0,
    "orientation": ANY,
    "color": "",
    "country": "",
    "since": None,
    "until": None,
    "hide_duplicates": True,
    "also": "",
    "without": "",
}
LIKE = "like"


def _escape(text: str) -> str:
    """``text`` with the Markdown that could format or link escaped, for untrusted strings shown as Markdown."""
    return "".join("\\" + ch if ch in "\\`*_[]<>~$" else ch for ch in text)


def _message(text: str) -> str:
    """An error message as Markdown: its `code spans` kept, everything else escaped."""
    parts = text.split("`")
    if len(parts) % 2 == 0:
        return _escape(text)
    return "`".join(part if i % 2 else _escape(part) for i, part in enumerate(parts))


def _safe_link(url: str | None) -> str | None:
    """``url`` if it is an http(s) link, else ``None``: data decides nothing about the page's links."""
    if url and url.startswith(("https://", "http://")) and not any(ch in url for ch in " ()<>\n"):
        return url
    return None


def _settings_key(settings: Settings) -> str:
    """What tells two configurations apart, without secrets (which stay out of the cache key)."""
    return repr(sorted(settings.describe().items()))


@st.cache_resource(show_spinner="Warming up: loading the models and opening the index (first query only)...")
def _load_service(_settings: Settings, key: str) -> SearchService:
    """The query service for ``key``'s settings, loaded once per server process."""
    return SearchService.from_settings(_settings)


@st.cache_resource
def _warm_services() -> set[str]:
    """Settings keys whose service has answered a query in this process (a shared, mutable set)."""
    return set()


def _parse_url(params: Any) -> tuple[dict[str, Any], list[str]]:
    """Widget values read from the URL's query parameters, and a message per value that was unusable."""
    values = dict(URL_DEFAULTS)
    problems = []
    values["q"] = params.get("q", "").strip()
    values["color"] = params.get("color", "").strip()
    values["country"] = params.get("country", "").strip()
    values["also"] = params.get("also", "").strip()
    values["without"] = params.get("without", "").strip()
    mode = params.get("mode")
    if mode is not None:
        if mode in MODES:
            values["mode"] = mode
        else:
            problems.append(f"mode={mode!r} in the address is not one of {', '.join(MODES)}: using vector.")
    orientation = params.get("orientation")
    if orientation is not None:
        if orientation in ORIENTATIONS:
            values["orientation"] = orientation
        else:
            problems.append(
                f"orientation={orientation!r} in the address is not one of {', '.join(ORIENTATIONS)}: ignored."
            )
    for name, cast, low, high in (("k", int, 1, MAX_SHOWN), ("min_score", float, 0.0, 1.0)):
        raw = params.get(name)
        if raw is None:
            continue
        try:
            number = cast(raw)
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            problems.append(f"{name}={raw!r} in the address is not a number: using {URL_DEFAULTS[name]}.")
        else:
            values[name] = min(max(number, low), high)
    raw = params.get("hide_duplicates")
    if raw is not None:
        if raw.lower() in ("true", "false"):
            values["hide_duplicates"] = raw.lower() == "true"
        else:
            problems.append(f"hide_duplicates={raw!r} in the address is not true or false: hiding them.")
    for name in ("since", "until"):
        raw = params.get(name)
        if raw is None:
            continue
        try:
            values[name] = dt.date.fromisoformat(raw)
        except ValueError:
            problems.append(f"{name}={raw!r} in the address is not a date like 2024-05-31: ignored.")
    return values, problems


def _url_value(value: Any) -> str:
    """A widget value as the URL spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _write_url(values: dict[str, Any], like: str | None) -> None:
    """Put the current search in the URL, leaving out values at their defaults to keep links short."""
    params = st.query_params
    for name, default in URL_DEFAULTS.items():
        value = values[name]
        if value == default or value is None:
            params.pop(name, None)
        else:
            params[name] = _url_value(value)
    if like:
        params[LIKE] = like
    else:
        params.pop(LIKE, None)


def _start_text_search() -> None:
    """The search form was submitted: its words replace any photo search (the "Without" words stay)."""
    st.session_state.q = st.session_state.q.strip()
    st.session_state.like = None
    st.session_state.also = ""
    st.session_state.upload_round += 1


def _start_upload_search() -> None:
    """A photo was uploaded: it replaces the words and any "more like this"."""
    st.session_state.q = ""
    st.session_state.like = None
    st.session_state.also = ""


def _start_more_like_this(photo_id: str) -> None:
    """A result's "More like this" was clicked: search with that photo, its own words still to come."""
    st.session_state.q = ""
    st.session_state.like = photo_id
    st.session_state.also = ""
    st.session_state.upload_round += 1
    st.session_state[saved_page.VIEW] = None


def _composed(base: QueryPart, also: str, without: str) -> list[QueryPart] | None:
    """The parts of a search steered by words to add and words to avoid; ``None`` when there are none."""
    if not also and not without:
        return None
    parts = [base]
    if also:
        parts.append(QueryPart(text=also))
    if without:
        parts.append(QueryPart(text=without, weight=-1.0))
    return parts


def _described(what: str, also: str, without: str) -> str:
    """The heading's name for a search, with its added and avoided words."""
    if also:
        what += f" and “{_escape(also)}”"
    if without:
        what += f" without “{_escape(without)}”"
    return what


def _init_state() -> None:
    """On a session's first run, take the search from the URL (a bookmark or a shared link)."""
    if "upload_round" in st.session_state:
        # The "and" box shows only beside a photo search; keep its value across runs without it
        # (Streamlit drops the state of a widget a run does not draw, unless it is written back).
        st.session_state.also = st.session_state.also
        return
    values, problems = _parse_url(st.query_params)
    for name, value in values.items():
        st.session_state[name] = value
    st.session_state.like = st.query_params.get(LIKE) or None
    st.session_state.upload_round = 0
    st.session_state.url_problems = problems


def _controls() -> Filters:
    """The sidebar: mode, number of results, minimum score and filters."""
    with st.sidebar:
        st.header("Search options")
        st.radio(
            "Mode",
            MODES,
            key="mode",
            horizontal=True,
            help="How words are matched: by meaning (vector), "
            "by keyword (BM25 on the photo's keywords and descriptions), or both fused (hybrid).",
        )
        st.slider("Number of results", 1, MAX_SHOWN, key="k")
        st.slider(
            "Minimum score",
            0.0,
            1.0,
            step=0.01,
            key="min_score",
            help="Results scoring below this are left out (cosine similarity for vector search).",
        )
        st.subheader("Filters")
        st.selectbox("Orientation", (ANY, *ORIENTATIONS), key="orientation")
        st.text_input("Colour", key="color", placeholder="e.g. blue")
        st.text_input("Country", key="country", placeholder="e.g. Iceland")
        st.date_input("Submitted on or after", key="since", format="YYYY-MM-DD")
        st.date_input("Submitted on or before", key="until", format="YYYY-MM-DD")
        st.toggle(
            "Hide duplicates",
            key="hide_duplicates",
            help="Show one photo per group of near-identical photos (the best-ranked one).",
        )
    state = st.session_state
    return Filters(
        orientation=None if state.orientation == ANY else state.orientation,
        color=state.color.strip().lower() or None,
        country=state.country.strip() or None,
        since=state.since,
        until=state.until,
    )


def _show_results(results: list[SearchResult], what: str, min_score: float, keyword: bool) -> None:
    """The result grid, or a message saying nothing passed."""
    if not results:
        cut = f" with a score of at least {min_score:.2f}" if min_score else ""
        st.warning(f"No photo matches {what}{cut}. Lower the minimum score, loosen the filters, or try other words.")
        return
    st.subheader(f"{len(results)} results for {what}")
    columns = st.columns(COLUMNS)
    for rank, result in enumerate(results):
        with columns[rank % COLUMNS], st.container(border=True):
            _show_result(result, keyword)


def _score_line(result: SearchResult, keyword: bool) -> str:
    """The score as the service defines it: BM25 in keyword mode, else cosine (and the fused score in hybrid)."""
    if keyword:
        return f"BM25 **{result.score:.2f}**"
    if result.cosine is None:
        return f"score **{result.score:.4f}**"
    line = f"cosine **{result.cosine:.3f}**"
    if abs(result.score - result.cosine) > 1e-6:
        line += f" · fused {result.score:.4f}"
    return line


def _image_of(result: SearchResult) -> str | None:
    """Where the page loads the photo from: the local image store when it holds it, else its URL."""
    return str(result.local_path) if result.local_path else _safe_link(result.image_url)


def _show_result(result: SearchResult, keyword: bool) -> None:
    """One result: the image, its score, its keywords, the photographer credited, and "More like this"."""
    link = _safe_link(result.photo_url)
    image = _image_of(result)
    if image:
        st.image(image, width="stretch", link=link)
    st.markdown(_score_line(result, keyword))
    name = _escape(result.photographer_name or result.photographer_username or "unknown photographer")
    st.markdown(f"Photo by [{name}]({link}) on Unsplash" if link else f"Photo by {name}")
    if result.describe:
        describe = result.describe if len(result.describe) <= 160 else result.describe[:157] + "..."
        st.caption(_escape(describe))
    st.button(
        "More like this",
        key=f"like-{result.photo_id}",
        on_click=_start_more_like_this,
        args=(result.photo_id,),
        width="stretch",
    )


def _without_source(results: list[SearchResult], photo_id: str, k: int) -> list[SearchResult]:
    """More-like-this results less the photo they started from, which is shown above them instead."""
    source = next((r for r in results if r.photo_id == photo_id), None)
    if source is not None:
        image = _image_of(source)
        if image:
            st.image(image, caption="The photo you started from", width=160)
    return [r for r in results if r.photo_id != photo_id][:k]


def _run(search: Callable[[SearchService], list[SearchResult]], settings: Settings) -> list[SearchResult] | None:
    """Load the service (once per process) and run ``search``; a problem is shown as a message."""
    key = _settings_key(settings)
    warm = _warm_services()
    try:
        service = _load_service(settings, key)
        label = "Searching..." if key in warm else "Warming up: the first query after start-up loads the models..."
        with st.spinner(label):
            results = search(service)
        model = service.answered_by()
        st.caption(
            _escape(
                f"Answered by model {model['name'] or 'unregistered'}: {model['image_model']} + {model['text_model']}, {model['dim']}-d"
            )
        )
    except ImageSearchError as exc:
        st.error(_message(str(exc)))
        return None
    warm.add(key)
    return results


def main() -> None:
    """Render the page and run the search the URL, the form, an upload or a click asks for."""
    st.set_page_config(page_title="Image search", layout="wide")
    _init_state()
    st.title("Image search")
    st.caption("Find photos by words in any language, by a photo of your own, or by one of the results.")
    for problem in st.session_state.url_problems:
        st.warning(_escape(problem))
    st.session_state.url_problems = []

    try:
        settings = Settings.from_env()
    except ImageSearchError as exc:
        st.error(_message(str(exc)))
        return
    filters = _controls()
    store = SavedStore(settings.home)
    saved_page.sidebar(store)
    if st.session_state.get(saved_page.VIEW):
        service = _run(lambda s: s, settings)
        if service is not None:
            saved_page.view(store, service, st.session_state[saved_page.VIEW], lambda r: _show_result(r, False))
        return
    with st.form("search", border=False):
        text_column, button_column = st.columns([5, 1], vertical_alignment="bottom")
        text_column.text_input("Search in any language", key="q", placeholder="e.g. a dog on the beach / 海边的狗")
        button_column.form_submit_button("Search", on_click=_start_text_search, width="stretch")
    upload = st.file_uploader(
        "...or search with a photo",
        type=list(UPLOAD_TYPES),
        key=f"upload-{st.session_state.upload_round}",
        on_change=_start_upload_search,
    )

    state = st.session_state
    st.text_input(
        "Without",
        key="without",
        placeholder="e.g. people / 人",
        help="Steer any search away from these words (a negative part of a composed query).",
    )
    if state.like:
        st.text_input(
            "More like this, and…",
            key="also",
            placeholder="e.g. at night / 夜晚",
            help="Add words to the photo you started from (a positive part of a composed query).",
        )
    also, without = state.also.strip(), state.without.strip()
    _write_url({name: state[name] for name in URL_DEFAULTS}, state.like)
    # A minimum of 0 means no cut, so random test models (cosines around 0) still show results.
    options = {
        "k": state.k,
        "min_score": state.min_score or None,
        "filters": filters,
        "collapse_duplicates": state.hide_duplicates,
    }
    keyword = False
    # A photo cannot be matched by keywords: in keyword mode its words join it by fusion (hybrid).
    photo_mode = "hybrid" if state.mode == "keyword" else state.mode
    if upload is not None:
        try:
            image = load_query_image(upload.getvalue())
        except ImageSearchError as exc:
            st.error(_message(str(exc)))
            return
        st.image(image, caption="Your photo", width=160)
        parts = _composed(QueryPart(image=image), "", without)
        query, images, mode = saved_page.query_of(parts, {"image": 0}), [upload.getvalue()], photo_mode
        if parts is None:
            results = _run(lambda s: s.search_image(image, **options), settings)
        else:
            results = _run(lambda s: s.search_composed(parts, mode=photo_mode, **options), settings)
        what = _described("your photo", "", without)
    elif state.like:
        like = state.like
        parts = _composed(QueryPart(photo_id=like), also, without)
        query, images, mode = saved_page.query_of(parts, {"like": like}), [], photo_mode
        if parts is None:
            found = _run(lambda s: s.more_like_this(like, **{**options, "k": state.k + 1}), settings)
        else:
            found = _run(lambda s: s.search_composed(parts, mode=photo_mode, **{**options, "k": state.k + 1}), settings)
        results = None if found is None else _without_source(found, like, state.k)
        what = _described(f"photo {_escape(like)}", also, without)
    elif state.q:
        q, mode = state.q, state.mode
        parts = _composed(QueryPart(text=q), "", without)
        query, images = saved_page.query_of(parts, {"text": q}), []
        if parts is None:
            results = _run(lambda s: s.search_text(q, mode=mode, **options), settings)
        else:
            results = _run(lambda s: s.search_composed(parts, mode=mode, **options), settings)
        what = _described(f"“{_escape(q)}”", "", without) + f" ({mode})"
        keyword = mode == "keyword"
    else:
        st.info("Type some words and press Search, or upload a photo.")
        return
    if results is not None:
        _show_results(results, what, state.min_score, keyword)
        search = {
            "query": query,
            "mode": mode,
            "k": state.k,
            "filters": filters_dict(filters),
            "min_score": state.min_score or None,
            "hide_duplicates": state.hide_duplicates,
        }
        saved_page.save_box(store, lambda: _load_service(settings, _settings_key(settings)), search, images)


main()
