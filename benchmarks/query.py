"""``image-search bench query``: query latency of the local backend, exact and approximate.

Times publishing, kNN (against a plain numpy baseline) and text queries end to end on a
synthetic index, in one process; the method and the latest figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.harness import add_json_flag, print_figures

WORDS = ("mountain", "sea", "city", "forest", "dog", "cat", "flower", "car", "night", "snow", "beach", "portrait")
COLORS = ("red", "green", "blue", "yellow", "black", "white")
COUNTRIES = ("Spain", "Japan", "Kenya", "Peru", None)
QUERIES = ("a dog on the beach", "montañas nevadas", "城市夜景", "red flowers", "a cat sleeping", "forest in fog")


def clustered_vectors(n: int, dim: int = 512, clusters: int = 256, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    """``n`` unit float32 vectors around ``clusters`` random centres (cosine to the centre about 0.85)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        m = min(step, n - start)
        noise = rng.standard_normal((m, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
        block = centres[rng.integers(0, clusters, m)] + noise
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + m] = block
    return out


def synthetic_documents(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` documents with every stored field, varied enough for keyword search and each filter."""
    from resources.index.base import ORIENTATIONS

    rng = np.random.default_rng(seed)
    ids = np.char.add("photo", np.arange(n).astype(str))
    picked = np.array(WORDS)[rng.integers(0, len(WORDS), (n, 3))]
    describe = np.char.add(np.char.add(np.char.add(picked[:, 0], " "), np.char.add(picked[:, 1], " ")), picked[:, 2])
    colors = np.array(COLORS)
    return pd.DataFrame(
        {
            "photo_id": ids,
            "describe": describe,
            "photo_description": None,
            "ai_description": np.char.add("a photo of a ", picked[:, 0]),
            "photo_image_url": np.char.add("https://images.unsplash.com/", ids),
            "photo_url": np.char.add("https://unsplash.com/photos/", ids),
            "photographer_name": "Ada Example",
            "photographer_username": "ada",
            "orientation": np.array(ORIENTATIONS)[rng.integers(0, 3, n)],
            "dominant_color": colors[rng.integers(0, len(colors), n)],
            "colors": colors[rng.integers(0, len(colors), (n, 2))].tolist(),
            "photo_location_country": np.array(COUNTRIES, dtype=object)[rng.integers(0, len(COUNTRIES), n)],
            "photo_submitted_at": pd.Timestamp("2018-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 3000, n), unit="D"),
        }
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench query``."""
    parser = sub.add_parser("query", help="query latency of the local backend: exact, approximate, end to end")
    parser.add_argument("--docs", type=int, default=25_000, help="documents in the synthetic index (default 25000)")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per figure (default 200)")
    parser.add_argument("--clusters", type=int, default=1024, help="cluster centres of the synthetic vectors")
    parser.add_argument("--skip-text", action="store_true", help="time kNN only, without loading the configured models")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def _ms(samples: list[float]) -> dict[str, float]:
    values = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p95_ms": round(float(np.percentile(values, 95)), 3)}


def timed(fn, items) -> tuple[list[float], list]:
    """Call ``fn`` on each of ``items`` one at a time: (seconds per call, results)."""
    times, outs = [], []
    for item in items:
        start = time.perf_counter()
        outs.append(fn(item))
        times.append(time.perf_counter() - start)
    return times, outs


def run(args: argparse.Namespace) -> int:
    """Build the synthetic index, time every path, print the figures."""
    from resources.config import Settings
    from resources.errors import ImageSearchError
    from resources.index.base import BuildInfo
    from resources.index.local import LocalBackend
    from resources.index.local_build import exact_top10

    if args.docs < 100 or args.queries < 10:
        raise ImageSearchError("bench query needs --docs >= 100 and --queries >= 10")
    settings = Settings.from_env()
    figures: dict[str, object] = {"docs": args.docs, "queries": args.queries}
    figures["load_average_at_start"] = round(os.getloadavg()[0], 2)
    encoder = None
    dim = 512
    if not args.skip_text:
        from search_app.service import _open_encoder

        start = time.perf_counter()
        encoder = _open_encoder(settings)
        encoder.encode_texts(["warm up"])
        figures["model_load_s"] = round(time.perf_counter() - start, 2)
        figures["image_model"], figures["text_model"], dim = encoder.image_model_id, encoder.text_model_id, encoder.dim
    figures["dim"] = dim

    start = time.perf_counter()
    everything = clustered_vectors(args.docs + args.queries, dim, clusters=args.clusters, seed=0)
    vectors, queries = everything[: args.docs], everything[args.docs :]
    documents = synthetic_documents(args.docs, seed=0)
    figures["generate_s"] = round(time.perf_counter() - start, 2)

    with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp:
        home_settings = settings.replace(home=Path(tmp), backend="local")
        info = BuildInfo.for_vectors(
            encoder.image_model_id if encoder else settings.image_model,
            encoder.text_model_id if encoder else settings.text_model,
            vectors,
        )
        backend = LocalBackend(home_settings)
        report = backend.build(documents, vectors, info)
        figures["publish_s"] = round(report.seconds, 2)
        figures["publish_approximate"] = report.details["approximate"]
        truth = exact_top10(vectors, queries)
        for q in queries[:10]:
            vectors @ q
            backend.knn(q, 10)
        base_times, _ = timed(lambda q: np.argsort(-(vectors @ q))[:10], queries)
        exact_times, exact_rows = timed(lambda q: backend.knn_rows(q, 10, exact=True)[0], queries)
        default_times, _ = timed(lambda q: backend.knn(q, 10), queries)
        figures["knn_baseline_numpy_argsort"] = _ms(base_times)
        figures["knn_exact"] = _ms(exact_times)
        figures["knn_default_with_stored_fields"] = _ms(default_times)
        figures["exact_matches_truth"] = bool(all(list(e) == list(t) for e, t in zip(exact_rows, truth)))

        if encoder is not None:
            from search_app.service import SearchService

            service = SearchService(backend, home_settings, encoder=encoder)
            texts = [f"{QUERIES[i % len(QUERIES)]} {i}" for i in range(args.queries)]
            service.search_text(texts[0], k=10)
            torch_model = encoder.text_model
            torch_model.encode(texts[:1])
            baseline_times, baseline = timed(
                lambda t: torch_model.encode([t], convert_to_numpy=True, normalize_embeddings=True)[0], texts
            )
            encode_times, vectors_out = timed(lambda t: encoder.encode_texts([t])[0], texts)
            text_times, _ = timed(lambda t: service.search_text(t, k=10), texts)
            figures["text_runtime"] = f"{encoder.text_runtime} ({encoder.precision} on {encoder.device})"
            tokenizer = torch_model.tokenizer
            figures["text_tokens_mean"] = round(float(np.mean([len(tokenizer(t)["input_ids"]) for t in texts])), 1)
            figures["text_encode_baseline_torch"] = _ms(baseline_times)
            figures["text_encode"] = _ms(encode_times)
            figures["text_encode_min_cosine_to_baseline"] = round(
                float(min(np.dot(a, b) for a, b in zip(vectors_out, baseline))), 6
            )
            figures["text_end_to_end"] = _ms(text_times)

        if report.details["approximate"] is None:
            backend = LocalBackend(home_settings, ann_min_docs=1)
            report = backend.build(documents, vectors, info)
            figures["publish_with_approximate_s"] = round(report.seconds, 2)
        figures["approximate"] = report.details["approximate"]
        for q in queries[:10]:
            backend.knn_rows(q, 10)
        ann_times, ann_rows = timed(lambda q: backend.knn_rows(q, 10)[0], queries)
        figures["knn_approximate"] = _ms(ann_times)
        figures["recall_at_10_approximate"] = round(
            float(np.mean([len(set(a) & set(t)) / 10 for a, t in zip(ann_rows, truth)])), 4
        )

    figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
    figures["cpus"] = os.cpu_count()
    return print_figures(args, figures)
