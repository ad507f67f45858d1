"""Saved searches' store and refresh logic: names, duplicates, damaged files kept aside, concurrent writers, diffs."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from resources.errors import ImageSearchError, NotFoundError, UnavailableError
from resources.saved import store as store_module
from resources.saved.refresh import dropped_good, judgements, new_matches, next_results, unseen
from resources.saved.store import CorruptFileError, SavedSearch, SavedStore


def search(name: str = "red circles", **options) -> SavedSearch:
    return SavedSearch(name=name, query=options.pop("query", {"text": "red circle"}), **options)


def top(*ids: str) -> list[dict]:
    return [{"photo_id": pid, "score": 1.0 - i / 10} for i, pid in enumerate(ids)]


@pytest.mark.parametrize(
    "name", ["../etc", "a/b", "a\\b", ".hidden", "x.json", "", " lead", "trail ", "a" * 65, "two\nlines"]
)
def test_a_name_with_path_characters_is_refused_in_one_line(tmp_path: Path, name: str):
    with pytest.raises(ImageSearchError, match="not usable") as caught:
        SavedStore(tmp_path).add(search(name))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "saved").exists() or not any((tmp_path / "saved").iterdir())


def test_add_get_list_and_remove(tmp_path: Path):
    store = SavedStore(tmp_path)
    first = store.add(
        search("red circles", k=5, filters={"orientation": "landscape"}),
        results=next_results(None, "b1", top("p1", "p2")),
    )
    store.add(
        search("blue", query={"parts": [{"image": 0, "weight": 1.0}, {"text": "people", "weight": -1.0}]}),
        images=[b"jpeg"],
    )
    assert store.names() == ["blue", "red circles"]
    assert store.get("red circles") == first and first.created_at
    assert store.image("blue", 0) == b"jpeg"
    assert store.looked("red circles") == {"p1", "p2"}
    store.remove("blue")
    assert store.names() == ["red circles"]
    assert not any(p.name.startswith(".") for p in (tmp_path / "saved").iterdir())
    with pytest.raises(NotFoundError, match="no saved search named 'blue'"):
        store.get("blue")
    with pytest.raises(NotFoundError):
        store.remove("blue")


def test_a_duplicate_name_is_refused_and_the_first_search_kept(tmp_path: Path):
    store = SavedStore(tmp_path)
    store.add(search(k=5))
    store.mark("red circles", "p1", "good")
    with pytest.raises(ImageSearchError, match="exists already"):
        store.add(search(k=9, query={"text": "other"}))
    assert store.get("red circles").k == 5 and store.marks("red circles") == {"p1": "good"}


def test_marks_are_set_changed_and_taken_back(tmp_path: Path):
    store = SavedStore(tmp_path)
    store.add(search())
    store.mark("red circles", "p1", "good")
    store.mark("red circles", "p2", "bad")
    store.mark("red circles", "p2", "good")
    assert store.mark("red circles", "p1", None) == {"p2": "good"}
    with pytest.raises(ImageSearchError, match="not one of good, bad"):
        store.mark("red circles", "p1", "great")
    with pytest.raises(NotFoundError):
        store.mark("nothing", "p1", "good")


def test_a_corrupt_file_is_kept_aside_and_no_other_search_is_lost(tmp_path: Path):
    store = SavedStore(tmp_path)
    for name in ("a", "b", "c"):
        store.add(search(name))
        store.mark(name, "p1", "good")
    damaged = tmp_path / "saved" / "b" / "search.json"
    damaged.write_text('{"name": "b", "query": ', encoding="utf-8")
    marks = tmp_path / "saved" / "c" / "marks.json"
    marks.write_text("not json", encoding="utf-8")
    found, problems = store.searches()
    assert [s.name for s in found] == ["a", "c"]
    (problem,) = problems
    assert "'b'" in problem and "search.json is not valid JSON" in problem and "\n" not in problem
    aside = list(damaged.parent.glob("search.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == '{"name": "b", "query": '
    with pytest.raises(CorruptFileError, match="marks.json is not valid JSON"):
        store.mark("c", "p2", "good")
    assert [p.read_text() for p in marks.parent.glob("marks.json.corrupt-*")] == ["not json"]
    assert store.mark("c", "p2", "good") == {"p2": "good"}
    assert store.marks("a") == {"p1": "good"}
    store.add(search("b"))
    assert store.marks("b") == {"p1": "good"}


def _mark_many(home: str, writer: int, count: int, ready, go) -> None:
    store = SavedStore(Path(home))
    ready.wait()
    go.wait()
    for i in range(count):
        store.mark("shared", f"w{writer}-{i}", "good")
        if i % 5 == 0:
            store.look("shared", [f"w{writer}-{i}"])


def test_concurrent_writers_in_several_processes_lose_no_mark(tmp_path: Path):
    store = SavedStore(tmp_path)
    store.add(search("shared"))
    writers, count = 4, 25
    ctx = multiprocessing.get_context("fork")
    ready, go = ctx.Barrier(writers + 1), ctx.Event()
    processes = [ctx.Process(target=_mark_many, args=(str(tmp_path), w, count, ready, go)) for w in range(writers)]
    for process in processes:
        process.start()
    ready.wait()  # every writer is started and waits at the same point
    go.set()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    assert len(store.marks("shared")) == writers * count
    assert store.get("shared").name == "shared"
    assert json.loads((tmp_path / "saved" / "shared" / "marks.json").read_text())


def test_new_matches_are_what_entered_the_top_k_with_the_latest_build():
    first = next_results(None, "b1", top("p1", "p2", "p3"))
    assert new_matches(first) == []
    second = next_results(first, "b2", top("p4", "p1", "p5"))
    assert [e["photo_id"] for e in new_matches(second)] == ["p4", "p5"]
    again = next_results(second, "b2", top("p4", "p1", "p5"))
    assert again["previous"] == {"build": "b1", "ids": ["p1", "p2", "p3"]} and new_matches(again) == new_matches(second)
    assert new_matches(next_results(again, "b3", top("p4", "p1", "p5"))) == []
    assert [e["photo_id"] for e in unseen(second, {"p1", "p4"})] == ["p5"]


def test_dropped_good_names_the_good_marks_outside_the_top_k():
    results = next_results(None, "b1", top("p1", "p2"))
    assert dropped_good(results, {"p1": "good", "p3": "good", "p9": "bad", "p0": "good"}) == ["p0", "p3"]
    assert dropped_good(results, {"p2": "good"}) == []


def test_judgements_take_good_marks_of_word_searches():
    searches = [search("a", query={"text": " Red Circle "}), search("b", query={"like": "p1"}), search("c")]
    marks = {"a": {"p1": "good", "p2": "bad"}, "b": {"p3": "good"}, "c": {"p4": "good"}}
    assert judgements(searches, marks.__getitem__) == {"red circle": {"p1", "p4"}}


def test_bench_relevance_takes_the_indexed_good_marks_of_saved_word_searches(tmp_path: Path):
    from resources.models.relevance import marked_judgements

    store = SavedStore(tmp_path)
    store.add(search("a"))
    store.add(search("b", query={"text": "blue"}))
    store.mark("a", "p1", "good")
    store.mark("a", "gone", "good")
    store.mark("b", "p2", "bad")
    assert marked_judgements(tmp_path, {"p1", "p2"}) == {"red circle": {"p1"}}


def test_a_lock_held_too_long_is_busy_without_naming_its_file_or_holder(tmp_path):
    slow = SavedStore(tmp_path, lock_timeout=0.2)
    slow.add(search("cats"))
    with SavedStore(tmp_path).locked("cats"):
        with pytest.raises(UnavailableError) as caught:
            slow.mark("cats", "p1", "good")
    message = str(caught.value)
    assert "busy" in message and str(tmp_path) not in message and "pid" not in message


def test_look_alike_names_cannot_both_be_saved_even_at_once(tmp_path):
    store = SavedStore(tmp_path, lock_timeout=5)
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda n: _try_add(store, n), ["Cats", "cats", "CATS", "ｃａｔｓ"] * 2))
    assert outcomes.count("saved") == 1 and len(store.names()) == 1


def test_the_number_of_saved_searches_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "MAX_SAVED_SEARCHES", 2)
    store = SavedStore(tmp_path)
    store.add(search("a"))
    store.add(search("b"))
    with pytest.raises(ImageSearchError, match="2 saved searches already.*remove one first"):
        store.add(search("c"))
    assert store.names() == ["a", "b"]


def test_a_damaged_file_replaced_while_read_is_not_moved_aside(tmp_path, monkeypatch):
    store = SavedStore(tmp_path)
    store.add(search("cats"))
    marks = store.folder("cats") / "marks.json"
    marks.write_text("{broken")
    real_stat = store_module.os.stat

    def replaced_meanwhile(path, *args, **kwargs):
        if Path(path) == marks:  # a writer's whole-file rename lands between the read and the check
            store_module.files.write_text(marks, '{"p1": {"mark": "good", "at": "now"}}')
            monkeypatch.setattr(store_module.os, "stat", real_stat)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(store_module.os, "stat", replaced_meanwhile)
    with pytest.raises(UnavailableError, match="being replaced"):
        store.marks("cats")
    assert store.marks("cats") == {"p1": "good"}
    assert not list(marks.parent.glob("marks.json.corrupt-*"))


def _try_add(store: SavedStore, name: str) -> str:
    try:
        store.add(search(name))
        return "saved"
    except ImageSearchError:
        return "refused"
