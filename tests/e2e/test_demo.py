"""``make demo``'s script as a newcomer runs it: stage progress and a summary, or one useful line when it fails."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _demo(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``scripts/demo.sh`` on a fresh DAGSTER_HOME (the project's dagster.yaml) and IMAGE_SEARCH_HOME; returns the log path too."""
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copy(ROOT / ".dagster" / "dagster.yaml", dagster_home)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_SEARCH_")}
    clean.update(
        DAGSTER_HOME=str(dagster_home), IMAGE_SEARCH_HOME=str(tmp_path / "data"), SERVE="0", VENV=".venv", **env
    )
    done = subprocess.run(
        ["bash", "scripts/demo.sh"],
        cwd=ROOT,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    return done, dagster_home / "logs" / "image-search.log"


def test_a_sample_demo_shows_each_stage_and_what_to_open_next(tmp_path):
    done, log = _demo(tmp_path, SAMPLE="1", SAMPLE_PHOTOS="24")
    shown = done.stdout
    assert done.returncode == 0, shown[-3000:]
    lines = shown.splitlines()
    for stage in (
        "photos materialized: rows 24",
        "images: 24/24",
        "images materialized: rows 24, fetched 24, failed 0",
        "image_embeddings materialized: rows 24, encoded 24",
        "search_index materialized: rows 24",
    ):
        assert any(stage in line for line in lines), stage
    assert lines[-3].startswith("make demo: done, 24 photos searchable") and str(log) in lines[-3]
    assert "image-search query" in lines[-2] and "make demo" in lines[-1]
    assert not [line for line in lines if " - DEBUG - " in line or "Traceback" in line or "Warning" in line]
    assert len(lines) < 80, f"{len(lines)} lines for 24 photos"
    assert "RUN_SUCCESS" in log.read_text(), "Dagster's own output is kept in the log"


def test_a_failed_download_ends_with_its_one_line_and_what_to_do(tmp_path):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}/lite/latest"
    done, log = _demo(tmp_path, SAMPLE="0", IMAGE_SEARCH_DATASET=url)
    lines = done.stdout.splitlines()
    assert done.returncode != 0
    assert lines[-3].startswith(f"image-search: unsplash_release failed: download of {url} failed 5 times (last: ")
    assert lines[-2].startswith(f"image-search: the full log: {log}")
    assert "SAMPLE=1 make demo" in lines[-1]
    assert not [line for line in lines if "Traceback" in line or " - DEBUG - " in line]
    kept = log.read_text()
    assert f"download of {url} failed 5 times" in kept and 'File "' in kept, "the error and its trace go to the log"
