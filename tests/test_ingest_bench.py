"""``image-search bench ingest`` runs end to end and measures the ingestion child, not itself."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_ingest_small_release():
    done = subprocess.run(
        [sys.executable, "-m", "image_search.cli", "bench", "ingest", "--photos", "200", "--keywords", "4000",
         "--conversions", "6000", "--collections", "600", "--json"],
        capture_output=True, text=True, check=True, timeout=300,
    )
    figures = json.loads(done.stdout)
    assert figures["photos"] == 200 and figures["input_tsv_mb"] > 0 and figures["parquet_mb"] > 0
    assert figures["ingest_peak_rss_mb"] > figures["baseline_peak_rss_mb"] > 50
