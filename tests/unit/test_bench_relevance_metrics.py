"""The relevance benchmark's library: its metrics against hand-computed values, the query set, the hold-out."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from resources.models.relevance import hold_out, ndcg_at_k, query_set, random_baseline, recall_at_k


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
