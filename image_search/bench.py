"""``image-search bench ...``: benchmarks that print their figures beside a baseline run in the same process."""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path

#: Modules under image_search/ that each add one benchmark through ``register(subparsers)``.
BENCHMARKS: tuple[str, ...] = ("bench_query", "bench_ingest", "bench_download", "bench_relevance", "bench_embed", "bench_scale")


def cpu_description() -> str:
    """The CPU model, its bf16 and AVX2 flags and the CPU count: figures compare only on the same CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"unknown CPU, {os.cpu_count()} CPUs"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "unknown CPU")
    flags = sorted({flag for flag in ("avx512_bf16", "amx_bf16", "avx2") if f" {flag}" in info})
    return f"{model}, flags {' '.join(flags) or 'none of avx2/avx512_bf16/amx_bf16'}, {os.cpu_count()} CPUs"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its subcommands (one module each)."""
    parser = sub.add_parser("bench", help="benchmarks (each prints its baseline beside it)")
    bench_sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name in BENCHMARKS:
        importlib.import_module(f"image_search.{name}").register(bench_sub)
