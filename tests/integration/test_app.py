"""The search page (search_app/app.py), run by ``streamlit.testing`` against a real index.

The index is conftest's ``search_home``: the synthetic release ingested and its images
stored by real materializations, encoded by the tiny random models and published by the
local backend. The page reads everything through the environment, as ``streamlit run`` would.
"""

from __future__ import annotations

import io
import re
import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from resources.config import Settings

APP = str(Path(__file__).resolve().parents[2] / "search_app" / "app.py")


@pytest.fixture
def page_env(monkeypatch, search_home: Path, tiny_models):
    """The environment a ``streamlit run`` of the page would get, pointed at the built index."""
    monkeypatch.setenv("IMAGE_SEARCH_HOME", str(search_home))
    monkeypatch.setenv("IMAGE_SEARCH_IMAGE_MODEL", str(tiny_models[0]))
    monkeypatch.setenv("IMAGE_SEARCH_TEXT_MODEL", str(tiny_models[1]))
    return search_home


def run_page(params: dict[str, str] | None = None) -> AppTest:
    """The page after its first run, opened with ``params`` as the URL's query string."""
    at = AppTest.from_file(APP, default_timeout=120)
    for name, value in (params or {}).items():
        at.query_params[name] = value
    return at.run()


def like_buttons(at: AppTest) -> list:
    return [b for b in at.button if b.key and b.key.startswith("like-")]


def assert_clean(at: AppTest) -> None:
    """No traceback and no error message on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def plain(markdown: str) -> str:
    """Markdown the page escaped, as the visitor reads it."""
    return re.sub(r"\\(.)", r"\1", markdown)


def result_heading(at: AppTest) -> str:
    headings = [plain(s.value) for s in at.subheader if "results for" in s.value]
    assert len(headings) == 1, [s.value for s in at.subheader]
    return headings[0]


def catalog(home: Path) -> pd.DataFrame:
    return pd.read_parquet(Settings(home=home).catalog_path)


def test_landing_page_invites_a_search(page_env):
    at = run_page()
    assert_clean(at)
    assert any("Type some words" in i.value for i in at.info)
    assert not like_buttons(at)


def _search(at: AppTest, query: str) -> AppTest:
    """Type ``query`` and press the form's Search button."""
    at.text_input(key="q").input(query)
    submit = [b for b in at.button if b.label == "Search"]
    assert len(submit) == 1
    return submit[0].click().run()


@pytest.mark.parametrize("query", ["a red circle", "un círculo rojo", "红色的圆"])
def test_text_search_in_any_language_shows_results_and_puts_them_in_the_url(page_env, query):
    at = run_page()
    at.slider(key="k").set_value(7)
    at = _search(at, query)
    assert_clean(at)
    assert result_heading(at).startswith("7 results for")
    assert len(like_buttons(at)) == 7
    assert len(at.image) == 7
    assert at.query_params["q"] == query
    assert at.query_params["k"] == "7"


def test_each_result_shows_its_stored_image_score_keywords_and_credit(page_env):
    at = _search(run_page({"k": "4"}), "a blue square")
    assert_clean(at)
    rows = catalog(page_env).set_index("photo_id")
    ids = [b.key.removeprefix("like-") for b in like_buttons(at)]
    assert len(ids) == 4
    # Images come from the local store, served by Streamlit's media endpoint, not from Unsplash.
    assert all("/media/" in image.value[0] and not image.value[0].startswith("http") for image in at.image)
    scores = [m.value for m in at.markdown if m.value.startswith("cosine **")]
    assert len(scores) == 4
    credits = [m.value for m in at.markdown if m.value.startswith("Photo by [")]
    for photo_id in ids:
        assert any(f"]({rows.loc[photo_id, 'photo_url']}) on Unsplash" in c for c in credits)
    describes = {c.value for c in at.caption}
    assert any(rows.loc[pid, "describe"].split()[0] in " ".join(describes) for pid in ids)


def test_upload_finds_the_same_photo_first(page_env, sample_release: Path):
    at = run_page({"k": "5"})
    photo_id = catalog(page_env)["photo_id"].iloc[3]
    data = (sample_release / "images" / f"{photo_id}.jpg").read_bytes()
    at.file_uploader[0].upload("../../etc/passwd.jpg", data, "image/jpeg")
    at.run()
    assert_clean(at)
    assert result_heading(at) == "5 results for your photo"
    assert like_buttons(at)[0].key == f"like-{photo_id}"
    top = [m.value for m in at.markdown if m.value.startswith("cosine **")][0]
    assert float(top.split("**")[1]) > 0.99
    assert "q" not in at.query_params


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"this is not an image", "not an image"),
        (b"", "empty"),
    ],
)
def test_unreadable_upload_is_a_message_not_a_traceback(page_env, data, reason):
    at = run_page()
    at.file_uploader[0].upload("photo.jpg", data, "image/jpeg")
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "uploaded image" in at.error[0].value and reason in at.error[0].value
    assert not like_buttons(at)


def test_truncated_upload_says_it_cannot_be_decoded(page_env):
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), "red").save(buffer, format="PNG")
    at = run_page()
    at.file_uploader[0].upload("photo.png", buffer.getvalue()[:200], "image/png")
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "uploaded image" in at.error[0].value


def test_more_like_this_searches_with_that_photo_and_goes_in_the_url(page_env):
    at = _search(run_page({"k": "6"}), "a green triangle")
    first = like_buttons(at)[2].key.removeprefix("like-")
    at = like_buttons(at)[2].click().run()
    assert_clean(at)
    assert at.query_params["like"] == first
    assert "q" not in at.query_params
    assert at.text_input(key="q").value == ""
    assert result_heading(at) == f"6 results for photo {first}"
    assert any(image.captions == ["The photo you started from"] for image in at.image)
    assert first not in [b.key.removeprefix("like-") for b in like_buttons(at)]


def test_opening_a_shared_url_runs_its_search(page_env):
    at = run_page({"q": "red", "mode": "keyword", "k": "3"})
    assert_clean(at)
    assert at.text_input(key="q").value == "red"
    assert at.radio(key="mode").value == "keyword"
    assert result_heading(at) == "3 results for “red” (keyword)"
    assert len([m for m in at.markdown if m.value.startswith("BM25 **")]) == 3

    photo_id = catalog(page_env)["photo_id"].iloc[0]
    at = run_page({"like": photo_id, "k": "2"})
    assert_clean(at)
    assert result_heading(at) == f"2 results for photo {photo_id}"


def test_unusable_url_values_are_explained_and_defaulted(page_env):
    at = run_page({"q": "red", "k": "lots", "mode": "fuzzy", "since": "yesterday", "min_score": "nan"})
    assert not at.exception
    warnings = plain(" ".join(w.value for w in at.warning))
    for problem in ("k='lots'", "mode='fuzzy'", "since='yesterday'", "min_score='nan'"):
        assert problem in warnings
    assert result_heading(at).startswith("12 results for")


def test_nothing_above_the_minimum_score_says_so(page_env):
    at = run_page({"q": "a red circle", "min_score": "0.99"})
    assert_clean(at)
    assert not like_buttons(at)
    assert any("No photo matches" in w.value and "0.99" in w.value for w in at.warning)


def test_orientation_filter_applies_inside_the_search(page_env):
    rows = catalog(page_env)
    portrait = set(rows.loc[rows["orientation"] == "portrait", "photo_id"])
    assert 0 < len(portrait) < len(rows)
    at = run_page({"q": "a shape", "k": "60"})
    at.selectbox(key="orientation").set_value("portrait").run()
    assert_clean(at)
    assert at.query_params["orientation"] == "portrait"
    assert {b.key.removeprefix("like-") for b in like_buttons(at)} == portrait


def test_no_index_yet_names_the_command_that_builds_it(monkeypatch, tmp_path: Path, tiny_models):
    monkeypatch.setenv("IMAGE_SEARCH_HOME", str(tmp_path / "empty"))
    at = run_page({"q": "red"})
    assert not at.exception
    assert len(at.error) == 1
    message = at.error[0].value
    assert "no search index" in message
    # The command that builds it stays a code span, not escaped text.
    assert "`make demo`" in message


def test_unreachable_backend_names_the_masked_url(monkeypatch, tmp_path: Path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("IMAGE_SEARCH_HOME", str(tmp_path))
    monkeypatch.setenv("IMAGE_SEARCH_BACKEND", "elasticsearch")
    monkeypatch.setenv("IMAGE_SEARCH_ES_URL", f"http://admin:s3cret@127.0.0.1:{port}")
    at = run_page({"q": "red"})
    assert not at.exception
    assert len(at.error) == 1
    message = plain(at.error[0].value)
    assert f"http://***:***@127.0.0.1:{port}" in message and "s3cret" not in message


def test_a_bad_setting_is_a_message(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("IMAGE_SEARCH_BACKEND", "solr")
    at = run_page({"q": "red"})
    assert not at.exception
    assert len(at.error) == 1 and "IMAGE_SEARCH_BACKEND='solr'" in plain(at.error[0].value)


def test_the_service_loads_once_per_process_for_every_visitor(page_env, monkeypatch):
    import streamlit as st

    from search_app.service import SearchService

    loads = []
    real = SearchService.from_settings.__func__

    def counted(cls, settings):
        loads.append(settings.home)
        return real(cls, settings)

    monkeypatch.setattr(SearchService, "from_settings", classmethod(counted))
    st.cache_resource.clear()
    for query in ("a red circle", "a blue square"):
        assert_clean(_search(run_page(), query))
    assert_clean(run_page({"q": "yellow", "mode": "hybrid"}))
    assert loads == [page_env]


@pytest.fixture(scope="module")
def duplicates_home(tmp_path_factory, search_home: Path, sample_release: Path, sample_release_info: dict, tiny_models):
    """A copy of ``search_home`` with near_duplicates materialized, and the planted pair it groups.

    The tiny random model puts every photo close to every other, so the grouping threshold
    is set just under the cosine of the closest planted pair rather than at the default.
    """
    from dagster import DagsterInstance, materialize

    from assets.duplicates import near_duplicates
    from resources.dagster_resources import SettingsResource
    from search_app.service import SearchService

    models = {"image_model": str(tiny_models[0]), "text_model": str(tiny_models[1])}
    service = SearchService.from_settings(Settings(home=search_home, **models))
    cosines = {}
    for original, copy in sample_release_info["duplicates"]:
        results = service.more_like_this(original, k=len(sample_release_info["photo_ids"]))
        cosines[(original, copy)] = next(r.cosine for r in results if r.photo_id == copy)
    pair, cosine = max(cosines.items(), key=lambda item: item[1])
    home = tmp_path_factory.mktemp("dups") / "home"
    shutil.copytree(search_home, home)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMAGE_SEARCH_DUPLICATE_THRESHOLD", f"{cosine - 1e-4:.6f}")
        materialize(
            [near_duplicates],
            resources={"settings": SettingsResource(home=str(home), dataset=str(sample_release), **models)},
            instance=DagsterInstance.ephemeral(),
        )
    return home, pair


def test_hide_duplicates_is_on_by_default_and_can_be_turned_off(monkeypatch, duplicates_home, tiny_models):
    home, (original, copy) = duplicates_home
    monkeypatch.setenv("IMAGE_SEARCH_HOME", str(home))
    monkeypatch.setenv("IMAGE_SEARCH_IMAGE_MODEL", str(tiny_models[0]))
    monkeypatch.setenv("IMAGE_SEARCH_TEXT_MODEL", str(tiny_models[1]))

    def shown(at: AppTest) -> set[str]:
        return {b.key.removeprefix("like-") for b in like_buttons(at)}

    at = run_page({"like": original, "k": "10"})
    assert_clean(at)
    assert at.toggle(key="hide_duplicates").value is True
    assert copy not in shown(at) and len(shown(at)) == 10
    at.toggle(key="hide_duplicates").set_value(False).run()
    assert_clean(at)
    assert at.query_params["hide_duplicates"] == "false"
    assert copy in shown(at) and len(shown(at)) == 10


def _expected(rows: pd.DataFrame, control: str) -> tuple[dict[str, str], set[str]]:
    """URL parameters setting one filter control, and the photos of the catalog that pass it."""
    if control == "color":
        colour = rows["colors"].explode().value_counts().index[0]
        passing = rows["colors"].map(lambda colors: colour in list(colors))
        return {"color": colour}, set(rows.loc[passing, "photo_id"])
    if control == "country":
        country = rows["photo_location_country"].value_counts().index[0]
        passing = rows["photo_location_country"].str.lower() == country.lower()
        return {"country": country.upper()}, set(rows.loc[passing, "photo_id"])
    days = pd.to_datetime(rows["photo_submitted_at"], utc=True).dt.date
    since, until = sorted(days)[len(days) // 4], sorted(days)[len(days) // 2]
    return {"since": since.isoformat(), "until": until.isoformat()}, set(
        rows.loc[(days >= since) & (days <= until), "photo_id"]
    )


@pytest.mark.parametrize("control", ["color", "country", "dates"])
def test_filter_controls_from_the_url_apply_inside_the_search(page_env, control):
    params, passing = _expected(catalog(page_env), control)
    assert 0 < len(passing) < 48
    at = run_page({"q": "a shape", "k": "60", **params})
    assert_clean(at)
    assert {b.key.removeprefix("like-") for b in like_buttons(at)} == passing
    for name, value in params.items():
        assert at.query_params[name] == (value.lower() if name == "color" else value)


def test_an_unknown_photo_id_in_the_url_is_a_message(page_env):
    at = run_page({"like": "[no](https://example.com)"})
    assert not at.exception
    assert len(at.error) == 1
    message = at.error[0].value
    assert "is not in the index" in plain(message)
    # The id comes from the URL: its brackets are escaped, so it shows as text, never as a link.
    assert "\\[no\\](https://example.com)" in message


def _shown(at: AppTest) -> set[str]:
    """The photos on the page (the grid fills its columns in turn, so the element order is not the rank)."""
    return {b.key.removeprefix("like-") for b in like_buttons(at)}


def _composed_ids(home: Path, parts, k: int, mode: str = "vector") -> list[str]:
    from search_app.service import SearchService

    service = SearchService.from_settings(Settings(home=home))
    return [r.photo_id for r in service.search_composed(parts, k=k, mode=mode, collapse_duplicates=True)]


def test_more_like_this_and_words_without_words(page_env):
    from search_app.service import QueryPart

    at = _search(run_page({"k": "5"}), "a green triangle")
    source = like_buttons(at)[1].key.removeprefix("like-")
    at = like_buttons(at)[1].click().run()
    at.text_input(key="also").input("at night").run()
    assert_clean(at)
    assert result_heading(at) == f"5 results for photo {source} and “at night”"
    expected = _composed_ids(page_env, [QueryPart(photo_id=source), QueryPart(text="at night")], 6)
    assert _shown(at) == set([pid for pid in expected if pid != source][:5])
    assert at.query_params["also"] == "at night" and at.query_params["like"] == source

    at.text_input(key="without").input("a red circle").run()
    assert_clean(at)
    assert result_heading(at) == f"5 results for photo {source} and “at night” without “a red circle”"
    parts = [QueryPart(photo_id=source), QueryPart(text="at night"), QueryPart(text="a red circle", weight=-1)]
    assert _shown(at) == set([pid for pid in _composed_ids(page_env, parts, 6) if pid != source][:5])
    assert at.query_params["without"] == "a red circle"

    # Another photo starts its own "and" words; the "Without" words stay until cleared.
    other = like_buttons(at)[0].key.removeprefix("like-")
    at = like_buttons(at)[0].click().run()
    assert_clean(at)
    assert at.text_input(key="also").value == ""
    assert result_heading(at) == f"5 results for photo {other} without “a red circle”"
    assert "also" not in at.query_params

    # The address alone reproduces the search.
    shared = run_page({"like": source, "k": "5", "also": "at night", "without": "a red circle"})
    assert_clean(shared)
    assert _shown(shared) == set([pid for pid in _composed_ids(page_env, parts, 6) if pid != source][:5])


def test_without_words_leave_keyword_matches_out(page_env):
    rows = catalog(page_env)
    words = rows["describe"].fillna("").str.split()
    word = words.explode().value_counts().index[0]
    having = rows[words.map(lambda w: word in w)]
    unwanted = next(w for w in having["describe"].str.split().explode() if w != word)
    at = run_page({"q": word, "mode": "keyword", "k": "60", "without": unwanted})
    assert_clean(at)
    assert f"results for “{word}” without “{unwanted}” (keyword)" in result_heading(at)
    shown = set(_shown(at))
    text = (
        rows.set_index("photo_id")[["describe", "photo_description", "ai_description"]].fillna("").agg(" ".join, axis=1)
    )
    assert shown and not any(unwanted in text[pid].lower().split() for pid in shown)
    at.text_input(key="without").input("").run()
    assert shown < set(_shown(at))


def test_a_photo_with_words_in_keyword_mode_is_fused(page_env):
    photo_id = catalog(page_env)["photo_id"].iloc[4]
    at = run_page({"like": photo_id, "mode": "keyword", "also": "snow", "k": "4"})
    assert_clean(at)
    assert result_heading(at) == f"4 results for photo {photo_id} and “snow”"
    assert len([m for m in at.markdown if m.value.startswith("cosine **") and "fused" in m.value]) == 4


def test_an_uploaded_photo_without_words(page_env, sample_release: Path):
    from search_app.service import QueryPart, load_query_image

    photo_id = catalog(page_env)["photo_id"].iloc[6]
    data = (sample_release / "images" / f"{photo_id}.jpg").read_bytes()
    at = run_page({"k": "5", "without": "a blue square"})
    at.file_uploader[0].upload("mine.jpg", data, "image/jpeg")
    at.run()
    assert_clean(at)
    assert result_heading(at) == "5 results for your photo without “a blue square”"
    parts = [QueryPart(image=load_query_image(data)), QueryPart(text="a blue square", weight=-1)]
    assert _shown(at) == set(_composed_ids(page_env, parts, 5))
