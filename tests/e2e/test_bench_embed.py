"""``image-search bench embed``, run as a user runs it: the real CLI in a subprocess, tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from benchmarks.embed import BENCH_SIZE, run_asset, write_bench_images

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "image_search.cli", "bench", "embed", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bench_images_are_photo_sized_jpegs_written_once(tmp_path):
    paths = write_bench_images(tmp_path, 3, workers=1)
    stamps = [p.stat().st_mtime_ns for p in paths]
    with Image.open(paths[0]) as image:
        assert image.format == "JPEG" and image.size == BENCH_SIZE
    assert write_bench_images(tmp_path, 3, workers=1) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    assert not list(tmp_path.glob(".*.tmp"))


def test_bench_compares_both_paths_on_the_same_images(tmp_path, tiny_models):
    result = _cli(
        "--images",
        str(tmp_path / "images"),
        "--make",
        "12",
        "--model",
        str(tiny_models[0]),
        "--device",
        "cpu",
        "--batch-size",
        "4",
        "--runtime",
        "torch",
        "--json",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["images"] == figures["baseline_images"] == 12 and figures["project_failures"] == 0
    assert figures["baseline_img_per_s"] > 0 and figures["project_img_per_s"] > 0
    assert figures["speedup"] == round(figures["project_img_per_s"] / figures["baseline_img_per_s"], 2)
    assert figures["cosine_min"] >= 0.99 and figures["cosine_mean"] >= figures["cosine_min"]
    assert figures["peak_rss_mb"] >= figures["project_peak_rss_mb"] > 0
    assert figures["dim"] == 512 and figures["device"] == "cpu"
    assert figures["model_only_img_per_s"] > 0 and figures["decode_only_img_per_s"] > 0
    assert figures["speedup_vs_model_only"] == round(figures["project_img_per_s"] / figures["model_only_img_per_s"], 2)
    assert figures["cpu_model"] and isinstance(figures["cpu_flags"], str) and len(figures["load_average"]) == 3
    assert figures["runtime"] == "torch" and figures["gate_verdict"] == "not run"


def test_bench_builds_and_gates_the_runtime_the_pipeline_would_choose(tmp_path, tiny_models):
    result = _cli(
        "--images",
        str(tmp_path / "images"),
        "--make",
        "24",
        "--model",
        str(tiny_models[0]),
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--baseline-limit",
        "4",
        "--runtime",
        "openvino",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "runtime chosen: openvino/int8, gate passed (cosine min" in result.stdout
    assert "(m) PyTorch model only, prepared pixels, batch 32" in result.stdout and "(b)/(m):" in result.stdout


def test_asset_run_reports_the_peak_memory_of_a_real_materialization(tmp_path, tiny_models):
    sources = write_bench_images(tmp_path / "images", 4, workers=1)
    figures = run_asset(sources, 20, str(tiny_models[0]))
    assert figures["asset_images"] == figures["asset_encoded"] == 20
    assert figures["asset_peak_rss_mb"] > 100 and figures["asset_img_per_s"] > 0


def test_a_missing_folder_is_one_line_and_exit_2(tmp_path):
    result = _cli("--images", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--make N" in result.stderr
