"""``image-search bench download`` run as a real subprocess, on its smallest size."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_download_cli_prints_both_rates():
    completed = subprocess.run(
        [sys.executable, "-m", "image_search.cli", "bench", "download"]
        + ["--images", "40", "--baseline-images", "5", "--latency-ms", "10", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(completed.stdout)
    assert (figures["images"], figures["stored"], figures["failed"], figures["baseline_images"]) == (40, 40, 0, 5)
    assert figures["baseline_images_per_s"] > 0 and figures["project_images_per_s"] > 0
    assert figures["kept_original"] == 40, "plain baseline JPEGs are kept as they are"


# --------------------------------------------------------------------------- broken hosts and outages
