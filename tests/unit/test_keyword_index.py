"""The BM25 keyword index: multilingual tokens, masks, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from resources.index.keyword_index import KeywordIndex, document_text, tokenize

TEXTS = ["red car on a street", "blue sky over mountains", "red apple red", "一只猫 睡觉", "montañas nevadas", ""]


def test_tokens_are_lowercased_words_in_any_script():
    assert tokenize("Red CAR, montañas! 一只猫") == ["red", "car", "montañas", "一只猫"]
    assert tokenize(None) == []


def test_document_text_joins_describe_and_descriptions_skipping_missing():
    row = {"describe": "cat dog", "photo_description": None, "ai_description": "a pet", "photo_id": "x"}
    assert document_text(row) == "cat dog a pet"
    assert document_text({"describe": float("nan")}) == ""


def test_search_ranks_by_bm25_and_returns_only_matches():
    index = KeywordIndex.build(TEXTS)
    rows, scores = index.search("red", 10)
    assert list(rows) == [2, 0] and scores[0] > scores[1] > 0
    assert list(index.search("MONTAÑAS", 10)[0]) == [4]
    assert list(index.search("一只猫", 10)[0]) == [3]
    assert len(index.search("unknown words", 10)[0]) == 0
    assert len(index.search("", 10)[0]) == 0


def test_mask_excludes_rows_inside_the_search():
    index = KeywordIndex.build(TEXTS)
    mask = np.array([True, True, False, True, True, True])
    assert list(index.search("red", 10, mask)[0]) == [0]
    assert list(index.search("red", 1, mask)[0]) == [0]


def test_saved_index_loads_and_answers_the_same(tmp_path: Path):
    index = KeywordIndex.build(TEXTS)
    index.save(tmp_path / "kw")
    loaded = KeywordIndex.load(tmp_path / "kw")
    for query in ("red", "sky mountains", "一只猫"):
        a, b = index.search(query, 5), loaded.search(query, 5)
        assert list(a[0]) == list(b[0]) and np.allclose(a[1], b[1])


def test_index_of_empty_texts_saves_and_finds_nothing(tmp_path: Path):
    index = KeywordIndex.build(["", ""])
    index.save(tmp_path / "kw")
    loaded = KeywordIndex.load(tmp_path / "kw")
    assert loaded.size == 2 and len(loaded.search("anything", 5)[0]) == 0
