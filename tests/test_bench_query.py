"""``image-search bench query`` run as a subprocess on a small synthetic index with the tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[1]


def test_bench_query_reports_every_figure(tiny_models, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_SEARCH_")}
    env.update(
        IMAGE_SEARCH_HOME=str(tmp_path),
        IMAGE_SEARCH_IMAGE_MODEL=str(tiny_models[0]),
        IMAGE_SEARCH_TEXT_MODEL=str(tiny_models[1]),
        IMAGE_SEARCH_PRECISION="fp32",
    )
    out = subprocess.run(
        [sys.executable, "-m", "image_search.cli", "bench", "query", "--docs", "3000", "--queries", "30",
         "--clusters", "64", "--json"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["docs"] == 3000 and figures["dim"] == 512
    assert figures["image_model"] == str(tiny_models[0])
    assert figures["publish_approximate"] is None and figures["approximate"].startswith("faiss IVF-flat")
    assert figures["exact_matches_truth"] is True
    assert figures["recall_at_10_approximate"] >= 0.98
    for name in (
        "knn_baseline_numpy_argsort", "knn_exact", "knn_approximate",
        "text_encode_baseline_torch", "text_encode", "text_end_to_end",
    ):
        assert 0 < figures[name]["p50_ms"] <= figures[name]["p95_ms"]
    assert figures["text_end_to_end"]["p50_ms"] >= figures["knn_default_with_stored_fields"]["p50_ms"]
    assert figures["text_runtime"] == "onnx (fp32 on cpu)" and figures["text_encode_min_cosine_to_baseline"] >= 0.9999
    assert figures["text_tokens_mean"] > 2
    # Only the text model's ONNX export (graph and weights) stays behind: the query service reuses it.
    exports = list((tmp_path / "models" / "onnx").glob("*.onnx"))
    assert len(exports) == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == [
        Path("models", "onnx", exports[0].name), Path("models", "onnx", exports[0].name + ".data")
    ]


def test_bench_query_refuses_a_tiny_run(tmp_path: Path):
    out = subprocess.run(
        [sys.executable, "-m", "image_search.cli", "bench", "query", "--docs", "10", "--skip-text"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "IMAGE_SEARCH_HOME": str(tmp_path)}, timeout=120,
    )
    assert out.returncode == 2 and "--docs >= 100" in out.stderr
