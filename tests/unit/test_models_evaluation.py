"""The model release's library parts on their own: bootstrap intervals, verdicts, judgements, the registry file."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.models import evaluation as ev
from resources.models.compare import refusal
from resources.models.registry import CONFIGURED, Registry, check_name, serving_settings


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_queries() -> None:
    rng = np.random.default_rng(1)
    few, many = rng.random(10), rng.random(1000)
    small = ev.bootstrap(few, ev.resample_rows(len(few)))
    large = ev.bootstrap(many, ev.resample_rows(len(many)))
    assert small.low <= small.mean <= small.high
    assert large.high - large.low < (small.high - small.low) / 3


def test_verdict_tells_apart_only_what_the_judgements_separate() -> None:
    rows = ev.resample_rows(40)
    good, bad = np.full(40, 0.9), np.full(40, 0.1)
    assert ev.verdict(good, bad, rows)[0] == ev.BETTER
    assert ev.verdict(bad, good, rows)[0] == ev.WORSE
    noise = np.random.default_rng(0).random(40)
    assert ev.verdict(noise, noise[::-1].copy(), rows)[0] == ev.NOT_SEPARATED
    assert ev.verdict(good[:3], bad[:3], ev.resample_rows(3))[0] == ev.TOO_FEW
    assert ev.verdict(good[:0], bad[:0], ev.resample_rows(0))[0] == ev.TOO_FEW


def test_refusal_names_the_metric_and_the_way_out() -> None:
    result = {
        "queries": 40,
        "serving": "default",
        "models": {
            "big": {
                "verdict": {
                    "ndcg_at_10": {"result": ev.WORSE, "difference": {"mean": -0.4, "low": -0.5, "high": -0.3}},
                    "recall_at_10": {
                        "result": ev.NOT_SEPARATED,
                        "difference": {"mean": -0.1, "low": -0.2, "high": 0.1},
                    },
                }
            }
        },
    }
    line = refusal(result, "big")
    assert "ndcg_at_10 -0.400" in line and "--force" in line and "\n" not in line
    result["models"]["big"]["verdict"]["ndcg_at_10"]["result"] = ev.NOT_SEPARATED
    assert refusal(result, "big") is None


def test_judgements_merge_sources_and_keep_only_indexed_photos() -> None:
    merged = ev.merge_judgements({"Beach ": {"a"}}, {"beach": {"b"}, "  ": {"c"}, "sky": set()})
    assert merged == {"beach": {"a", "b"}}
    assert ev.restrict({"beach": {"a", "b"}, "sea": {"z"}}, {"a"}) == {"beach": {"a"}}


def test_per_query_scores_follow_bench_relevance() -> None:
    scores = ev.per_query({"q": ["a", "x", "b"]}, {"q": {"a", "b"}})
    assert scores["recall_at_10"][0] == 1.0
    assert 0.9 < scores["ndcg_at_10"][0] < 1.0


def test_language_of_a_query() -> None:
    assert ev.language_of("ein Hund läuft am Strand entlang und spielt mit dem Ball") == "de"
    assert ev.language_of("perro en la playa") == "es"
    assert ev.language_of("猫") == "zh-cn"
    assert ev.language_of("mountain") == ev.language_of("12345") == "und"


@pytest.mark.parametrize("name", ["", "Big", "a_b", "-x", "x" * 41, "a b"])
def test_model_names_that_cannot_name_an_index_are_refused(name: str) -> None:
    with pytest.raises(ImageSearchError, match="is not usable"):
        check_name(name)


def test_registry_adds_removes_and_records_serving(tmp_path) -> None:
    settings = Settings(home=tmp_path, image_model="img-a", text_model="txt-a")
    registry = Registry(settings)
    assert [p.name for p in registry.pairs()] == [CONFIGURED]
    registry.add("big", "img-b", "txt-b", 768)
    with pytest.raises(ImageSearchError, match="registered already"):
        registry.add("big", "img-c", "txt-c", 768)
    with pytest.raises(ImageSearchError, match="configured"):
        registry.add(CONFIGURED, "img-c", "txt-c", 768)
    assert registry.serving().name == CONFIGURED and registry.previous() is None
    assert registry.set_serving("big").name == CONFIGURED
    assert serving_settings(settings).image_model == "img-b"
    assert registry.name_of("img-b", "txt-b") == "big"
    with pytest.raises(ImageSearchError, match="answers searches now"):
        registry.remove("big")
    registry.set_serving(CONFIGURED)
    assert registry.previous().name == "big"
    registry.remove("big")
    assert registry.previous() is None
    assert json.loads(registry.path.read_text())["models"] == {}


def test_concurrent_registrations_all_land(tmp_path) -> None:
    """The lock around read-change-write: eight threads adding at once lose none of the names."""
    registry = Registry(Settings(home=tmp_path))
    threads = [threading.Thread(target=registry.add, args=(f"m{i}", f"img{i}", f"txt{i}", 512)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(p.name for p in registry.candidates()) == sorted(f"m{i}" for i in range(8))


def test_an_unreadable_registry_is_one_line(tmp_path) -> None:
    registry = Registry(Settings(home=tmp_path))
    registry.path.parent.mkdir(parents=True)
    registry.path.write_text("{not json")
    with pytest.raises(ImageSearchError, match="unreadable"):
        registry.serving()


def test_answers_marked_good_in_saved_searches_are_judgements(tmp_path) -> None:
    from resources.models.compare import marked_judgements
    from resources.saved.store import SavedSearch, SavedStore

    store = SavedStore(tmp_path)
    store.add(SavedSearch(name="beach", query={"text": "Beach at dusk"}))
    store.add(SavedSearch(name="like", query={"like": "p9"}))
    store.mark("beach", "p1", "good")
    store.mark("beach", "p2", "bad")
    store.mark("like", "p3", "good")
    judged = ev.merge_judgements(marked_judgements(Settings(home=tmp_path)))
    assert judged == {"beach at dusk": {"p1"}}
