"""``image-search bench api`` run as a subprocess on a small synthetic index with the tiny models."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli import image_search, tiny_env


def test_bench_api_reports_every_level_with_batching_on_and_off(tiny_models, tmp_path: Path):
    out = image_search(
        "bench",
        "api",
        "--docs",
        "500",
        "--requests",
        "50",
        "--queries",
        "10",
        "--rounds",
        "2",
        "--json",
        env=tiny_env(tmp_path, tiny_models, IMAGE_SEARCH_PRECISION="fp32"),
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["docs"] == 500 and figures["rounds"] == 2 and "CPUs" in figures["cpu"]
    assert 0 < figures["baseline_bench_query_text_end_to_end"]["p50_ms"]
    for label in ("batching_on", "batching_off"):
        for level in ("c1", "c4", "c16"):
            assert figures[label][level]["req_per_s"] > 0
            assert 0 < figures[label][level]["p50_ms"] <= figures[label][level]["p99_ms"]
    assert figures["batching_off"]["server_batching"] == {"enabled": False}
    on = figures["batching_on"]["server_batching"]
    assert on["enabled"] is True and on["text"]["items"] >= 3 * 50
    assert figures["c16_speedup_on_vs_off"] > 0
