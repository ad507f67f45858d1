"""The relevance benchmark: its metrics against hand-computed values, the query set, the hold-out."""

from __future__ import annotations

import json
import math
import subprocess

import pandas as pd
import pytest

from image_search.bench_relevance import hold_out, ndcg_at_k, query_set, random_baseline, recall_at_k
from tests.cli import image_search, tiny_env

pytestmark = pytest.mark.e2e


def test_recall_and_ndcg_match_hand_computed_values():
    ranked = ["a", "b", "c", "d", "e"]
    relevant = {"b", "d", "z"}
    # k=3: only b (rank 2) is in the top 3; 1 of 3 relevant found.
    assert recall_at_k(ranked, relevant, 3) == pytest.approx(1 / 3)
    # DCG = 1/log2(3) = 0.63093; ideal DCG of 3 relevant at ranks 1..3 = 1 + 0.63093 + 0.5 = 2.13093.
    assert ndcg_at_k(ranked, relevant, 3) == pytest.approx(0.63093 / 2.13093, abs=1e-5)
    # k=5: b (rank 2) and d (rank 4): DCG = 0.63093 + 0.43068 = 1.06161; ideal the same 2.13093.
    assert recall_at_k(ranked, relevant, 5) == pytest.approx(2 / 3)
    assert ndcg_at_k(ranked, relevant, 5) == pytest.approx(1.06161 / 2.13093, abs=1e-5)


def test_perfect_and_empty_rankings():
    assert ndcg_at_k(["x", "y"], {"x", "y"}, 10) == pytest.approx(1.0)
    assert recall_at_k(["x", "y"], {"x", "y"}, 10) == 1.0
    assert ndcg_at_k([], {"x"}, 10) == 0.0
    assert recall_at_k(["q"], {"x"}, 10) == 0.0
    # More relevant photos than k: the ideal ranking fills all k places, so k hits give 1.0.
    assert ndcg_at_k(list("abc"), set("abcdef"), 3) == pytest.approx(1.0)
    assert recall_at_k(list("abc"), set("abcdef"), 3) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        recall_at_k(["a"], set(), 10)


def test_random_baseline_is_the_expectation_of_random_rankings():
    # 1 relevant among 4 photos, k=2: recall = P(relevant in top 2) = 1/2;
    # nDCG = (1/4)(1 + 1/log2 3) / 1 = 0.40773.
    recall, ndcg = random_baseline([1], indexed=4, k=2)
    assert recall == pytest.approx(0.5)
    assert ndcg == pytest.approx(0.25 * (1 + 1 / math.log2(3)))
    # Simulate: the mean over all 4 placements of the relevant photo equals the expectation.
    placements = [["r" if i == pos else f"n{i}" for i in range(4)] for pos in range(4)]
    assert sum(ndcg_at_k(p, {"r"}, 2) for p in placements) / 4 == pytest.approx(ndcg)


def test_query_set_keeps_indexed_photos_normalises_keywords_and_ranks_by_judgements():
    conversions = pd.DataFrame(
        {
            "keyword": [" Dog", "dog", "dog ", "cat", "cat", "bird", "!!", None, "fish"],
            "photo_id": ["p1", "p2", "p1", "p3", "gone", "p4", "p1", "p2", "gone"],
        }
    )
    queries = query_set(conversions, indexed_ids=["p1", "p2", "p3", "p4"], max_queries=10)
    assert queries == {"dog": {"p1", "p2"}, "bird": {"p4"}, "cat": {"p3"}}
    assert list(queries) == ["dog", "bird", "cat"]
    assert list(query_set(conversions, ["p1", "p2", "p3", "p4"], max_queries=2)) == ["dog", "bird"]
    assert query_set(conversions, indexed_ids=["nothing"], max_queries=10) == {}


def test_hold_out_removes_judged_keywords_from_judged_photos_only():
    documents = pd.DataFrame(
        {
            "photo_id": ["p1", "p2", "p3"],
            "describe": ["blue dog snow-covered", "dog lake mountain", None],
            "photo_description": ["a dog in snow", "a dog", "x"],
        }
    )
    queries = {"dog": {"p1"}, "mountain lake": {"p2"}, "snow": {"p1"}, "cat": {"p3"}}
    held, removed = hold_out(documents, queries)
    assert held["describe"].tolist()[:2] == ["blue", "dog"]
    assert pd.isna(held["describe"].iloc[2])
    assert removed == 4
    # Descriptions are not derived from searches and stay; the input frame is untouched.
    assert held["photo_description"].tolist() == documents["photo_description"].tolist()
    assert documents["describe"].iloc[0] == "blue dog snow-covered"


@pytest.fixture(scope="module")
def embedded_home(tmp_path_factory, search_home, tiny_models):
    """A copy of the session's ingested sample release with a real ``image_embeddings`` run (tiny models)."""
    import shutil

    from dagster import DagsterInstance, materialize

    from assets.embeddings import image_embeddings
    from resources.dagster_resources import ClipResource, SettingsResource

    home = tmp_path_factory.mktemp("relevance_home")
    for part in ("tables", "catalog", "images"):
        shutil.copytree(search_home / part, home / part)
    clip, text = (str(p) for p in tiny_models)
    resource = SettingsResource(home=str(home), image_model=clip, text_model=text)
    materialize(
        [image_embeddings],
        resources={"settings": resource, "clip": ClipResource(settings=resource)},
        instance=DagsterInstance.ephemeral(),
        tags={"dagster/asset_partition_range_start": "b00", "dagster/asset_partition_range_end": "b63"},
    )
    return home


def _bench(home, tiny_models, *args: str) -> subprocess.CompletedProcess:
    return image_search("bench", "relevance", *args, env=tiny_env(home, tiny_models))


def _bench_in_process(home, tiny_models, monkeypatch, capsys, *args: str) -> str:
    """The same command through ``image_search.cli.main`` in this process (no interpreter start-up)."""
    from image_search.cli import main

    monkeypatch.setenv("IMAGE_SEARCH_HOME", str(home))
    monkeypatch.setenv("IMAGE_SEARCH_IMAGE_MODEL", str(tiny_models[0]))
    monkeypatch.setenv("IMAGE_SEARCH_TEXT_MODEL", str(tiny_models[1]))
    capsys.readouterr()
    assert main(["bench", "relevance", *args]) == 0
    return capsys.readouterr().out


def test_bench_relevance_on_a_generated_release(embedded_home, tiny_models, monkeypatch, capsys):
    held = _bench(embedded_home, tiny_models, "--k", "10", "--json")
    assert held.returncode == 0, held.stderr
    report = json.loads(held.stdout)
    conversions = pd.read_parquet(embedded_home / "tables" / "conversions.parquet")
    downloads = conversions[conversions["conversion_type"] == "download"]
    expected = query_set(downloads, pd.read_parquet(embedded_home / "catalog" / "catalog.parquet")["photo_id"], 1000)
    assert report["queries"] == len(expected) > 10
    assert report["judgements"] == sum(len(r) for r in expected.values())
    assert report["indexed_photos"] == 48 and report["held_out"] and report["held_out_tokens"] > 0
    assert set(report["modes"]) == {"vector", "keyword", "hybrid"}
    for figures in report["modes"].values():
        assert 0.0 <= figures["recall"] <= 1.0 and 0.0 <= figures["ndcg"] <= 1.0
    assert report["random"]["recall"] == pytest.approx(10 / 48, abs=1e-4)
    assert "bench relevance: keyword" in held.stderr

    # Left in describe, the judged keywords name the answers: the keyword mode must score higher.
    leaked = _bench_in_process(embedded_home, tiny_models, monkeypatch, capsys, "--k", "10", "--json", "--no-hold-out")
    leaked_report = json.loads(leaked)
    assert leaked_report["held_out_tokens"] == 0
    assert leaked_report["modes"]["keyword"]["recall"] > report["modes"]["keyword"]["recall"]
    # The vector mode reads no text: holding out changes nothing for it.
    assert leaked_report["modes"]["vector"] | {"seconds": 0} == report["modes"]["vector"] | {"seconds": 0}

    table = _bench_in_process(embedded_home, tiny_models, monkeypatch, capsys, "--k", "5", "--max-queries", "3")
    assert "relevance over 3 queries" in table and "recall@5" in table
    assert [line.split()[0] for line in table.splitlines()[2:-1]] == ["vector", "keyword", "hybrid", "random"]
    assert table.splitlines()[-1].startswith("cpu: ") and "CPUs" in table.splitlines()[-1], "every benchmark names its CPU"


def test_bench_relevance_without_ingested_tables_says_what_to_run(tmp_path, tiny_models):
    out = _bench(tmp_path, tiny_models)
    assert out.returncode == 2
    assert "materialize the ingestion assets first" in out.stderr and "Traceback" not in out.stderr
