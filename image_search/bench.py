"""``image-search bench ...``: benchmarks that print their figures beside a baseline run in the same process."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its subcommands (one module each)."""
    from image_search import bench_embed, bench_query

    parser = sub.add_parser("bench", help="benchmarks (each prints its baseline beside it)")
    bench_sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for module in (bench_embed, bench_query):
        module.register(bench_sub)
