"""Judging model pairs on the same queries: nDCG@10 and recall@10 with 95% bootstrap intervals.

The judgements are (query words -> photos judged relevant): the release's conversions
(a download after a search, as ``bench relevance`` reads them) and, where saved searches
exist (issue #26), the photos users marked good for a saved text search. Every model is
scored on the queries whose judged photos all models index, so the figures compare like
with like. Two models are told apart only when the paired bootstrap interval of their
difference excludes 0; otherwise the judgements are too few to separate them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resources.errors import ImageSearchError
from resources.models.relevance import ndcg_at_k, recall_at_k

K = 10
#: Bootstrap resamples of the queries; enough for a stable 2.5th/97.5th percentile.
RESAMPLES = 2000
#: Below this many queries no interval is worth reading: the verdict is "too few judgements".
MIN_QUERIES = 5
METRICS = ("ndcg_at_10", "recall_at_10")
#: Words a query of a spaced script needs before its language is guessed.
MIN_WORDS = 3
#: Verdicts of a model against the serving one.
BETTER, WORSE, NOT_SEPARATED, TOO_FEW, SERVING = "better", "worse", "not separated", "too few judgements", "serving"


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% bootstrap interval."""

    mean: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": round(self.mean, 4), "low": round(self.low, 4), "high": round(self.high, 4)}


def resample_rows(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``resamples x n`` query positions drawn with replacement; one draw shared by every model, so intervals pair."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap(values: np.ndarray, rows: np.ndarray) -> Interval:
    """The mean of per-query ``values`` and its 95% percentile-bootstrap interval over ``rows``."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    means = values[rows].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Interval(float(values.mean()), float(low), float(high))


def verdict(candidate: np.ndarray, serving: np.ndarray, rows: np.ndarray) -> tuple[str, Interval]:
    """How ``candidate`` compares with ``serving`` on the same queries, and the interval of their difference."""
    difference = bootstrap(np.asarray(candidate) - np.asarray(serving), rows)
    if len(candidate) < MIN_QUERIES:
        return TOO_FEW, difference
    if difference.low > 0:
        return BETTER, difference
    if difference.high < 0:
        return WORSE, difference
    return NOT_SEPARATED, difference


def per_query(ranked: dict[str, list[str]], judged: dict[str, set[str]], k: int = K) -> dict[str, np.ndarray]:
    """Per-query nDCG@k and recall@k of the rankings, in the order of ``judged``."""
    ndcg = [ndcg_at_k(ranked[q], judged[q], k) for q in judged]
    recall = [recall_at_k(ranked[q], judged[q], k) for q in judged]
    return {"ndcg_at_10": np.array(ndcg), "recall_at_10": np.array(recall)}


def merge_judgements(*sources: dict[str, set[str]]) -> dict[str, set[str]]:
    """One judgement set: each query's relevant photos from every source (query words stripped and lower-cased)."""
    merged: dict[str, set[str]] = {}
    for source in sources:
        for query, photos in source.items():
            key = " ".join(str(query).split()).lower()
            if key and photos:
                merged.setdefault(key, set()).update(photos)
    return dict(sorted(merged.items()))


def strongest(judged: dict[str, set[str]], limit: int) -> dict[str, set[str]]:
    """At most ``limit`` of the queries: those with the most judged photos (ties by query), as
    :func:`resources.models.relevance.query_set` keeps keywords, so no source (a saved-search
    store of any size) makes a comparison run past the limit the user gave."""
    if limit < 1:
        raise ImageSearchError(f"--max-queries {limit} leaves nothing to judge: give 1 or more")
    kept = sorted(judged, key=lambda query: (-len(judged[query]), query))[:limit]
    return {query: judged[query] for query in sorted(kept)}


def restrict(judged: dict[str, set[str]], indexed: set[str]) -> dict[str, set[str]]:
    """The judgements with only photos in ``indexed``; queries left with none are dropped."""
    kept = {q: photos & indexed for q, photos in judged.items()}
    return {q: photos for q, photos in kept.items() if photos}


def _unspaced(text: str) -> bool:
    """Whether ``text`` holds Chinese, Japanese or Korean characters, scripts that write words without spaces."""
    return any("\u3040" <= c <= "\u30ff" or "\u3400" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af" for c in text)


def language_of(text: str) -> str:
    """The language of a query (ISO 639-1 from langdetect, seeded), or ``und`` when it cannot be told.

    langdetect is confidently wrong on a word or two of a spaced script ("mountain" comes
    out Finnish), so queries of fewer than :data:`MIN_WORDS` words there are ``und``, as is
    any label below 0.9 probability.
    """
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    if len(text.split()) < MIN_WORDS and not _unspaced(text):
        return "und"
    DetectorFactory.seed = 0
    try:
        best = detect_langs(text)[0]
    except LangDetectException:
        return "und"
    return best.lang if best.prob >= 0.9 else "und"


def summarise(scores: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, dict[str, float]]:
    """Each metric's mean and interval."""
    return {metric: bootstrap(scores[metric], rows).as_dict() for metric in METRICS}


def by_language(scores: dict[str, np.ndarray], languages: list[str], seed: int = 0) -> dict[str, dict]:
    """The metrics per query language, each with its own bootstrap over that language's queries."""
    out = {}
    for language in sorted(set(languages)):
        picked = np.flatnonzero(np.array(languages) == language)
        rows = resample_rows(len(picked), seed=seed)
        out[language] = {"queries": int(len(picked)), **summarise({m: v[picked] for m, v in scores.items()}, rows)}
    return out
