"""Faults the platform must survive, each provoked for real: killed processes, a failing image
server, an unreachable search backend, a release that drops and adds photos, and two runs
writing the same bucket at once. Also the refresh over two generated releases, driven by the
project's own sensors and automation conditions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from resources.errors import ImageSearchError
from resources.locks import store_lock

ROOT = Path(__file__).resolve().parents[1]

_HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from resources.locks import store_lock
    with store_lock(Path(sys.argv[1]), "images bucket b05", timeout=5):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path), str(seconds)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_writer_waits_for_the_lock_then_fails_clearly_after_the_timeout(tmp_path):
    lock = tmp_path / "locks" / "images" / "b05.lock"
    holder = _hold_lock(lock, 1.5)
    try:
        with pytest.raises(ImageSearchError, match=r"images bucket b05 is being written by another run .* 0.3 s"):
            with store_lock(lock, "images bucket b05", timeout=0.3):
                pass
        waited = []
        started = time.monotonic()
        with store_lock(lock, "images bucket b05", timeout=30, log=waited.append):
            elapsed = time.monotonic() - started
        assert holder.wait(timeout=10) == 0
        assert 0.5 < elapsed < 10 and len(waited) == 1 and "waiting for another run" in waited[0]
    finally:
        holder.kill()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    lock = tmp_path / "locks" / "search_index.lock"
    holder = _hold_lock(lock, 60)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    started = time.monotonic()
    with store_lock(lock, "search_index", timeout=5):
        assert time.monotonic() - started < 1
