"""``image-search bench relevance``: recall@k and nDCG@k of the three search modes against real judgements.

The judgements are the conversions document's (keyword, downloaded photo) pairs and the
photos users marked good for their saved word searches (docs/saved-searches.md), scored on
an evaluation index with the judged keywords held out of ``describe``; the method and the
latest figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse

import pandas as pd
import pyarrow.parquet as pq

from benchmarks.harness import add_json_flag, print_figures
from resources.index.base import MODES, check_k
from resources.models.relevance import (
    PrecomputedTexts,
    hold_out,
    marked_judgements,
    query_set,
    random_baseline,
    score_mode,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench relevance``."""
    parser = sub.add_parser(
        "relevance",
        help="recall@k and nDCG@k of the vector, keyword and hybrid modes against the release's conversions",
        description="Judge the search modes by the downloads recorded in the conversions document, with the "
        "judged keywords held out of describe (see the module docstring). Needs the ingested tables, the "
        "catalog and the image vectors of IMAGE_SEARCH_IMAGE_MODEL; the text model is IMAGE_SEARCH_TEXT_MODEL.",
    )
    parser.add_argument("--k", type=int, default=10, help="results judged per query (default 10)")
    parser.add_argument(
        "--max-queries",
        type=int,
        default=1000,
        help="keywords evaluated, those with the most judged photos first (default 1000)",
    )
    parser.add_argument(
        "--no-hold-out",
        dest="hold_out",
        action="store_false",
        help="leave the judged keywords in describe, to see how much of the keyword score they alone give",
    )
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build the held-out evaluation index, run every query in every mode, print the figures."""
    import sys
    import tempfile
    import time
    from pathlib import Path

    from resources.config import Settings
    from resources.errors import ImageSearchError
    from resources.index.base import BuildInfo
    from resources.index.local import LocalBackend
    from resources.release.catalog import index_inputs
    from search_app.service import SearchService

    check_k(args.k)
    if args.max_queries < 1:
        raise ImageSearchError(f"--max-queries {args.max_queries} must be at least 1")
    settings = Settings.from_env()
    conversions_path = settings.tables_dir / "conversions.parquet"
    if not conversions_path.is_file() or not settings.catalog_path.is_file():
        raise ImageSearchError(
            f"no conversions table or catalog under {settings.home}: materialize the ingestion assets first "
            "(dagster asset materialize -m definitions --select 'group:ingestion')"
        )
    documents, vectors = index_inputs(settings)
    if len(documents) == 0:
        raise ImageSearchError(
            f"no catalog photo has a vector for image model {settings.image_model}: materialize image_embeddings first"
        )
    present = pq.read_schema(conversions_path).names
    conversions = pd.read_parquet(
        conversions_path, columns=[c for c in ("keyword", "photo_id", "conversion_type") if c in present]
    )
    if "conversion_type" in conversions.columns:
        conversions = conversions[conversions["conversion_type"].astype("string").str.strip() == "download"]
    queries = query_set(conversions, documents["photo_id"], args.max_queries)
    marked = marked_judgements(settings.home, set(documents["photo_id"]))
    for keyword, photos in marked.items():
        queries.setdefault(keyword, set()).update(photos)
    if not queries:
        raise ImageSearchError(
            f"no conversion in {conversions_path} names an indexed photo: nothing to judge the modes by"
        )
    removed = 0
    if args.hold_out:
        documents, removed = hold_out(documents, queries)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    by_mode: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-relevance-") as tmp:
        eval_settings = settings.replace(home=Path(tmp), backend="local")
        backend = LocalBackend(eval_settings, ann_min_docs=len(documents) + 1)
        info = BuildInfo.for_vectors(settings.image_model, settings.text_model, vectors)
        say(f"bench relevance: evaluation index of {len(documents)} photos, {len(queries)} queries")
        backend.build(documents, vectors, info)
        service = SearchService(backend, eval_settings)
        encoded = time.perf_counter()
        service = SearchService(backend, eval_settings, encoder=PrecomputedTexts(service.encoder(), list(queries)))
        seconds = time.perf_counter() - encoded
        say(f"bench relevance: loaded the models and encoded {len(queries)} queries in {seconds:.1f} s")
        step = max(1, len(queries) // 10)
        for mode in MODES:
            started = time.perf_counter()

            def search(keyword: str, k: int, mode: str = mode) -> list[str]:
                return [r.photo_id for r in service.search_text(keyword, k=k, mode=mode)]

            def progress(done: int, mode: str = mode) -> None:
                if done % step == 0 or done == len(queries):
                    say(f"bench relevance: {mode} {done}/{len(queries)}")

            recall, ndcg = score_mode(search, queries, args.k, progress)
            by_mode[mode] = {"recall": recall, "ndcg": ndcg, "seconds": time.perf_counter() - started}
    base_recall, base_ndcg = random_baseline([len(r) for r in queries.values()], len(documents), args.k)
    figures = {
        "k": args.k,
        "queries": len(queries),
        "judgements": int(sum(len(r) for r in queries.values())),
        "marked_judgements": int(sum(len(r) for r in marked.values())),
        "indexed_photos": len(documents),
        "held_out": args.hold_out,
        "held_out_tokens": removed,
        "image_model": settings.image_model,
        "text_model": settings.text_model,
        "modes": {m: {key: round(v, 4) for key, v in f.items()} for m, f in by_mode.items()},
        "random": {"recall": round(base_recall, 4), "ndcg": round(base_ndcg, 4)},
    }
    return print_figures(args, figures, lambda f: _lines(f, args.k))


def _lines(f: dict, k: int) -> list[str]:
    return [
        f"relevance over {f['queries']} queries ({f['judgements']} judgements, {f['marked_judgements']} of them marks, "
        f"{f['indexed_photos']} indexed photos, {f['held_out_tokens']} judged keyword tokens held out of describe)",
        f"{'mode':<8} {f'recall@{k}':>10} {f'nDCG@{k}':>10} {'seconds':>8}",
        *(f"{mode:<8} {m['recall']:>10.4f} {m['ndcg']:>10.4f} {m['seconds']:>8.1f}" for mode, m in f["modes"].items()),
        f"{'random':<8} {f['random']['recall']:>10.4f} {f['random']['ndcg']:>10.4f} {'-':>8}",
    ]
