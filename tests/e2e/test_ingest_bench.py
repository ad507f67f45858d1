"""``image-search bench ingest`` runs end to end and measures the ingestion children, not itself."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_ingest_small_release():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "image_search.cli",
            "bench",
            "ingest",
            "--photos",
            "200",
            "--keywords",
            "4000",
            "--conversions",
            "6000",
            "--collections",
            "600",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    figures = json.loads(done.stdout)
    assert figures["photos"] == 200 and figures["input_mb"] > 0 and figures["parquet_mb"] > 0
    assert figures["ingest_peak_rss_mb"] > figures["imports_peak_rss_mb"] > 50
    assert figures["baseline_peak_rss_mb"] > figures["imports_peak_rss_mb"]
    assert figures["ingest_skipped_records"] == 0
    assert figures["baseline_skipped_records"] > 0, "the old reader splits records holding quoted line breaks"
    assert "CPUs" in figures["cpu"]
