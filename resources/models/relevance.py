"""Judged relevance: the query set users' downloads and marks make, the keyword hold-out, and the ranking metrics.

``image-search bench relevance`` grades the search modes with these, and ``image-search
models compare`` grades the models; both judge by what users did (the release's download
conversions) and what they marked good in saved searches.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from resources.index.keyword_index import tokenize


def recall_at_k(ranked: list[str], relevant: set[str], k: int) -> float:
    """The share of ``relevant`` found among the first ``k`` of ``ranked``."""
    if not relevant:
        raise ValueError("recall is undefined for a query with no relevant photo")
    return len(set(ranked[:k]) & relevant) / len(relevant)


def ndcg_at_k(ranked: list[str], relevant: set[str], k: int) -> float:
    """Normalised discounted cumulative gain of the first ``k`` of ``ranked``, binary relevance."""
    if not relevant:
        raise ValueError("nDCG is undefined for a query with no relevant photo")
    dcg = sum(1.0 / math.log2(rank + 1) for rank, pid in enumerate(ranked[:k], start=1) if pid in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return dcg / ideal


def random_baseline(relevant_sizes: list[int], indexed: int, k: int) -> tuple[float, float]:
    """Expected mean recall@k and nDCG@k of a uniformly random ranking of ``indexed`` photos."""
    discounts = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, indexed) + 1))
    recalls, ndcgs = [], []
    for size in relevant_sizes:
        recalls.append(min(k, indexed) / indexed)
        ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(size, k) + 1))
        ndcgs.append(size / indexed * discounts / ideal)
    return float(np.mean(recalls)), float(np.mean(ndcgs))


def query_set(conversions: pd.DataFrame, indexed_ids, max_queries: int) -> dict[str, set[str]]:
    """Keyword -> the indexed photos downloaded after searching it.

    Keywords are stripped and lower-cased; pairs whose photo is not indexed, and keywords
    with no word character, are dropped. When there are more than ``max_queries`` keywords,
    the ones with the most judged photos are kept (ties by keyword), so runs are repeatable.
    """
    pairs = conversions[["keyword", "photo_id"]].dropna()
    pairs = pairs.assign(keyword=pairs["keyword"].astype(str).str.strip().str.lower())
    pairs = pairs[pairs["photo_id"].isin(set(indexed_ids))]
    pairs = pairs[pairs["keyword"].map(lambda text: bool(tokenize(text)))].drop_duplicates()
    if pairs.empty:
        return {}
    grouped = pairs.groupby("keyword")["photo_id"].agg(set)
    order = sorted(grouped.index, key=lambda kw: (-len(grouped[kw]), kw))[:max_queries]
    return {kw: grouped[kw] for kw in order}


def hold_out(documents: pd.DataFrame, queries: dict[str, set[str]]) -> tuple[pd.DataFrame, int]:
    """``documents`` with each judged photo's ``describe`` stripped of the tokens of its judged keywords.

    Returns the new frame and how many tokens were removed.
    """
    banned: dict[str, set[str]] = {}
    for keyword, photos in queries.items():
        words = set(tokenize(keyword))
        for pid in photos:
            banned.setdefault(pid, set()).update(words)
    removed = 0
    describe = documents["describe"].tolist()
    for i, pid in enumerate(documents["photo_id"]):
        words = banned.get(pid)
        if not words or not isinstance(describe[i], str):
            continue
        kept = [w for w in describe[i].split() if not (set(tokenize(w)) & words)]
        removed += len(describe[i].split()) - len(kept)
        describe[i] = " ".join(kept)
    return documents.assign(describe=describe), removed


class PrecomputedTexts:
    """The service's encoder with the query texts encoded up front, in batches.

    The vector and hybrid modes encode each query through the service; one batched pass
    gives the same vectors in a fraction of the time. Texts not given are encoded as usual.
    """

    def __init__(self, encoder, texts: list[str]):
        self._encoder = encoder
        self.image_model_id = encoder.image_model_id
        self.text_model_id = encoder.text_model_id
        self.dim = encoder.dim
        self._vectors = dict(zip(texts, encoder.encode_texts(texts)))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self._vectors]
        if missing:
            self._vectors.update(zip(missing, self._encoder.encode_texts(missing)))
        return np.stack([self._vectors[t] for t in texts])

    def encode_image(self, image) -> np.ndarray:
        return self._encoder.encode_image(image)


def score_mode(search, queries: dict[str, set[str]], k: int, progress=None) -> tuple[float, float]:
    """Mean recall@k and nDCG@k of ``search(keyword, k) -> ranked photo_ids`` over ``queries``."""
    recalls, ndcgs = [], []
    for done, (keyword, relevant) in enumerate(queries.items(), start=1):
        ranked = search(keyword, k)
        recalls.append(recall_at_k(ranked, relevant, k))
        ndcgs.append(ndcg_at_k(ranked, relevant, k))
        if progress is not None:
            progress(done)
    return float(np.mean(recalls)), float(np.mean(ndcgs))


def marked_judgements(home, indexed: set[str]) -> dict[str, set[str]]:
    """Words of each saved text search under ``home`` -> its indexed photos marked good (resources/saved/)."""
    from resources.saved.refresh import judgements
    from resources.saved.store import SavedStore

    store = SavedStore(home)
    searches, _ = store.searches()
    judged = {words: photos & indexed for words, photos in judgements(searches, store.marks).items()}
    return {words: photos for words, photos in judged.items() if photos}
