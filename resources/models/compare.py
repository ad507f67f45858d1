"""``models compare``: every built model pair judged on the same queries, with speed, latency and size.

Quality is nDCG@10 and recall@10 of the vector search on each pair's build, with 95%
bootstrap intervals (:mod:`resources.models.evaluation`); the same per query language when
the queries are in more than one (what tells a multilingual text model from another). Speed is measured here and now: images encoded per second on a
fixed sample of stored images, and the median time of one text query (encoding and kNN).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.images.image_store import ImageStore
from resources.models import evaluation as ev
from resources.models.registry import ModelPair, Registry
from resources.models.release import evaluation_backend, open_encoder
from resources.release.catalog import read_catalog
from resources.vectors.vector_store import VectorStore

#: Queries timed one by one for the latency figure.
LATENCY_QUERIES = 20
#: Stored images encoded for the speed figure.
SPEED_IMAGES = 32
SPEED_PASSES = 3


def conversion_judgements(settings: Settings, max_queries: int) -> dict[str, set[str]]:
    """The release's downloads after a search, as ``bench relevance`` reads them; empty without a conversions table."""
    from resources.models.relevance import query_set

    path = settings.tables_dir / "conversions.parquet"
    if not path.is_file() or not settings.catalog_path.is_file():
        return {}
    present = pq.read_schema(path).names
    table = pd.read_parquet(path, columns=[c for c in ("keyword", "photo_id", "conversion_type") if c in present])
    if "conversion_type" in table.columns:
        table = table[table["conversion_type"].astype("string").str.strip() == "download"]
    return query_set(table, read_catalog(settings, ["photo_id"])["photo_id"], max_queries)


def marked_judgements(settings: Settings) -> dict[str, set[str]]:
    """Saved text searches -> the photos users marked good (issue #26, :func:`resources.saved.refresh.judgements`)."""
    from resources.saved.refresh import judgements
    from resources.saved.store import SavedStore

    store = SavedStore(settings.home)
    searches, _ = store.searches()
    return judgements(searches, store.marks)


def _common_photos(settings: Settings, pairs: list[ModelPair]) -> set[str]:
    """Catalog photos every pair has a vector for: the photos all builds can return."""
    common = set(read_catalog(settings, ["photo_id"])["photo_id"])
    for pair in pairs:
        common &= set(VectorStore(settings.embeddings_dir, pair.image_model).load()[0])
    return common


def _speed(encoder, paths: list) -> float:
    """Images per second encoding ``paths``: the best of :data:`SPEED_PASSES` passes after one image to warm up.

    The best pass is the one least disturbed by other work on the machine.
    """
    if not paths:
        return 0.0
    list(encoder.encode_image_files(paths[:1]))
    best = float("inf")
    for _ in range(SPEED_PASSES):
        started = time.perf_counter()
        done = sum(len(batch.indices) for batch in encoder.encode_image_files(paths))
        best = min(best, time.perf_counter() - started)
    return round(done / best, 1)


def _judge(settings: Settings, pair: ModelPair, backend, judged: dict[str, set[str]], paths: list) -> dict[str, Any]:
    """One pair's rankings, per-query scores and timings."""
    encoder = open_encoder(settings, pair)
    queries = list(judged)
    ranked = {}
    if queries:
        vectors = encoder.encode_texts(queries)
        ranked = {q: [hit.photo_id for hit in backend.knn(v, ev.K)] for q, v in zip(queries, vectors)}
    timings = []
    for query in (queries or ["a photo"])[:LATENCY_QUERIES]:
        started = time.perf_counter()
        backend.knn(encoder.encode_texts([query])[0], ev.K)
        timings.append(time.perf_counter() - started)
    info = backend.info()
    return {
        "scores": ev.per_query(ranked, judged),
        "figures": {
            "model": pair.ids(),
            "dim": info.dim,
            "build": info.name,
            "indexed": backend.count(),
            "index_bytes": backend.size_bytes(),
            "encode_images_per_s": _speed(encoder, paths),
            "query_ms_p50": round(float(np.median(timings)) * 1000, 2),
        },
    }


def compare(settings: Settings, names: list[str] | None = None, max_queries: int = 1000) -> dict[str, Any]:
    """Judge every built pair (or those ``names``) against the serving one; the figures as a JSON-ready dict."""
    registry = Registry(settings)
    serving = registry.serving()
    pairs = registry.pairs() if names is None else [registry.get(name) for name in names]
    backends = {pair.name: evaluation_backend(settings, pair) for pair in pairs}
    built = [pair for pair in pairs if backends[pair.name] is not None]
    if not built:
        raise ImageSearchError("no model has a build to compare: let the refresh build the registered models first")
    conversions, marks = conversion_judgements(settings, max_queries), marked_judgements(settings)
    judged = ev.restrict(ev.merge_judgements(conversions, marks), _common_photos(settings, built))
    judged = ev.strongest(judged, max_queries)
    catalog = read_catalog(settings, ["photo_id"])["photo_id"].tolist()
    store = ImageStore(settings.images_dir)
    paths = [p for p in (store.local_path(pid) for pid in catalog[: SPEED_IMAGES * 2]) if p is not None][:SPEED_IMAGES]
    languages = [ev.language_of(q) for q in judged]
    rows = ev.resample_rows(len(judged))
    judged_by = {pair.name: _judge(settings, pair, backends[pair.name], judged, paths) for pair in built}
    models = {}
    for pair in built:
        scores, figures = judged_by[pair.name]["scores"], judged_by[pair.name]["figures"]
        figures.update(ev.summarise(scores, rows) if judged else {m: None for m in ev.METRICS})
        if len(set(languages)) > 1:
            figures["by_language"] = ev.by_language(scores, languages)
        figures["verdict"] = _verdicts(pair, serving, judged_by, rows)
        models[pair.name] = figures
    return {
        "k": ev.K,
        "queries": len(judged),
        "judgements": int(sum(len(photos) for photos in judged.values())),
        "sources": {"conversions": len(conversions), "saved_search_marks": len(marks)},
        "serving": serving.name,
        "models": models,
        "not_built": [pair.name for pair in pairs if pair not in built],
    }


def _verdicts(pair: ModelPair, serving: ModelPair, judged_by: dict, rows: np.ndarray) -> dict[str, Any]:
    """Per metric: how ``pair`` compares with the serving pair, and the interval of the difference."""
    if pair.name == serving.name:
        return {metric: {"result": ev.SERVING} for metric in ev.METRICS}
    if serving.name not in judged_by:
        return {metric: {"result": "serving model not built"} for metric in ev.METRICS}
    out = {}
    for metric in ev.METRICS:
        mine, theirs = judged_by[pair.name]["scores"][metric], judged_by[serving.name]["scores"][metric]
        result, difference = ev.verdict(mine, theirs, rows)
        out[metric] = {"result": result, "difference": difference.as_dict() if len(mine) else None}
    return out


def refusal(result: dict[str, Any], name: str) -> str | None:
    """Why promoting ``name`` is refused by ``result``'s judgements, or ``None`` when it is not."""
    verdicts = result["models"].get(name, {}).get("verdict", {})
    worse = [m for m in ev.METRICS if verdicts.get(m, {}).get("result") == ev.WORSE]
    if not worse:
        return None
    shown = ", ".join(
        f"{m} {verdicts[m]['difference']['mean']:+.3f} (95% interval up to {verdicts[m]['difference']['high']:+.3f})"
        for m in worse
    )
    return (
        f"promotion of {name!r} refused: on {result['queries']} judged queries it answers worse than "
        f"{result['serving']!r} ({shown}); pass --force to promote anyway"
    )
