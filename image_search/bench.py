"""``image-search bench ...``: benchmarks that print their figures beside a baseline run in the same process."""

from __future__ import annotations

import argparse
import importlib

#: Modules under image_search/ that each add one benchmark through ``register(subparsers)``.
BENCHMARKS: tuple[str, ...] = ("bench_query", "bench_ingest", "bench_download", "bench_relevance", "bench_embed")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its subcommands (one module each)."""
    parser = sub.add_parser("bench", help="benchmarks (each prints its baseline beside it)")
    bench_sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name in BENCHMARKS:
        importlib.import_module(f"image_search.{name}").register(bench_sub)
