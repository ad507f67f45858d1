"""``image-search bench ingest``: peak memory of ingesting a release of Unsplash Lite's size.

Writes a synthetic release (no images; 25,000 photos, 2.7 M keyword rows and 4 M
conversion rows by default, like Lite 1.0) into a temporary folder, then materializes the
ingestion assets (release, five tables, catalog) in a child process and reports that
child's peak resident memory (``ru_maxrss``) beside the input size. The baseline is a
child that imports the same modules and ingests nothing, so the difference is what the
data costs.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_INGEST = """
import sys
from dagster import DagsterInstance, materialize
from assets.catalog import photo_catalog, photo_ids_unique
from assets.raw import collections, colors, conversions, keywords, photos, unsplash_release
from resources.dagster_resources import SettingsResource
if sys.argv[1] != "--baseline":
    result = materialize(
        [unsplash_release, photos, keywords, collections, conversions, colors, photo_catalog, photo_ids_unique],
        resources={"settings": SettingsResource(home=sys.argv[1], dataset=sys.argv[2])},
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success
"""


def _child_peak_mb(args: list[str]) -> tuple[float, float]:
    """Run the ingestion script in a fresh interpreter; (its peak RSS in MB, seconds)."""
    started = time.perf_counter()
    # ru_maxrss of RUSAGE_CHILDREN is the largest of all waited-for children, so each
    # measurement runs through its own intermediate interpreter.
    probe = (
        "import resource, subprocess, sys;"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-c", _INGEST, *args],
        check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
    )
    return int(done.stdout.strip()) / 1024, time.perf_counter() - started


def run(photos: int, keywords: int, conversions: int, collections: int) -> dict:
    """Generate, ingest and measure; return the figures."""
    from image_search.sample import write_release

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        release = Path(tmp) / "release"
        started = time.perf_counter()
        write_release(release, photos=photos, keywords=keywords, conversions=conversions, collections=collections, images=False)
        generate_s = time.perf_counter() - started
        input_mb = sum(p.stat().st_size for p in release.glob("*.tsv000")) / 2**20
        baseline_mb, _ = _child_peak_mb(["--baseline"])
        peak_mb, ingest_s = _child_peak_mb([str(Path(tmp) / "home"), str(release)])
        tables_mb = sum(p.stat().st_size for p in (Path(tmp) / "home").rglob("*.parquet")) / 2**20
    return {
        "photos": photos, "keywords": keywords, "conversions": conversions, "collections": collections,
        "input_tsv_mb": round(input_mb, 1), "parquet_mb": round(tables_mb, 1),
        "generate_s": round(generate_s, 1), "ingest_s": round(ingest_s, 1),
        "baseline_peak_rss_mb": round(baseline_mb), "ingest_peak_rss_mb": round(peak_mb),
    }


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``image-search bench ingest``."""
    parser = sub.add_parser("ingest", help="peak memory of ingesting a generated release of the real size")
    parser.add_argument("--photos", type=int, default=25_000)
    parser.add_argument("--keywords", type=int, default=2_700_000)
    parser.add_argument("--conversions", type=int, default=4_000_000)
    parser.add_argument("--collections", type=int, default=1_650_000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_main)


def _main(args: argparse.Namespace) -> int:
    figures = run(args.photos, args.keywords, args.conversions, args.collections)
    if args.json:
        print(json.dumps(figures))
    else:
        print(
            f"release: {figures['photos']:,} photos, {figures['keywords']:,} keyword rows, "
            f"{figures['conversions']:,} conversion rows, {figures['collections']:,} collection rows "
            f"= {figures['input_tsv_mb']} MB of TSV (generated in {figures['generate_s']} s)\n"
            f"baseline (same imports, no data): peak RSS {figures['baseline_peak_rss_mb']} MB\n"
            f"ingestion (release, 5 tables, catalog): peak RSS {figures['ingest_peak_rss_mb']} MB "
            f"in {figures['ingest_s']} s, {figures['parquet_mb']} MB of Parquet written"
        )
    return 0
