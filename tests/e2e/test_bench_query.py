"""``image-search bench query`` run as a subprocess on a small synthetic index with the tiny models."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli import clean_env, image_search, tiny_env


def test_bench_query_reports_every_figure(tiny_models, tmp_path: Path):
    out = image_search(
        "bench",
        "query",
        "--docs",
        "3000",
        "--queries",
        "30",
        "--clusters",
        "64",
        "--json",
        env=tiny_env(tmp_path, tiny_models, IMAGE_SEARCH_PRECISION="fp32"),
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["docs"] == 3000 and figures["dim"] == 512
    assert figures["image_model"] == str(tiny_models[0])
    assert figures["publish_approximate"] is None and figures["approximate"].startswith("faiss IVF-flat")
    assert figures["exact_matches_truth"] is True
    assert figures["recall_at_10_approximate"] >= 0.98
    for name in (
        "knn_baseline_numpy_argsort",
        "knn_exact",
        "knn_approximate",
        "text_encode_baseline_torch",
        "text_encode",
        "text_end_to_end",
    ):
        assert 0 < figures[name]["p50_ms"] <= figures[name]["p95_ms"]
    assert figures["text_end_to_end"]["p50_ms"] >= figures["knn_default_with_stored_fields"]["p50_ms"]
    assert figures["text_runtime"] == "onnx (fp32 on cpu)" and figures["text_encode_min_cosine_to_baseline"] >= 0.9999
    assert figures["text_tokens_mean"] > 2
    # Only the text model's ONNX export (graph and weights) stays behind: the query service reuses it.
    exports = list((tmp_path / "models" / "onnx").glob("*.onnx"))
    assert len(exports) == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == [
        Path("models", "onnx", exports[0].name),
        Path("models", "onnx", exports[0].name + ".data"),
    ]


def test_bench_query_refuses_a_tiny_run(tmp_path: Path):
    out = image_search(
        "bench", "query", "--docs", "10", "--skip-text", env=clean_env(IMAGE_SEARCH_HOME=tmp_path), timeout=120
    )
    assert out.returncode == 2 and "--docs >= 100" in out.stderr
