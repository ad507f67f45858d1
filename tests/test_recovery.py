"""A killed run never blocks the next one: dead runs, their pool slots and their locks recovered."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from resources.errors import ImageSearchError
from resources.locks import REPORT_EVERY_S, Wait, store_lock
from resources.processes import ProcessRef, pid_running

ROOT = Path(__file__).resolve().parents[1]


# -- processes, waits and locks ---------------------------------------------------------


def test_a_process_counts_as_alive_only_while_its_pid_names_the_same_process():
    assert ProcessRef.current().is_alive() is True
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    ref = ProcessRef(socket.gethostname(), child.pid, psutil.Process(child.pid).create_time())
    assert ref.is_alive() is True
    child.stdin.close()
    child.wait()
    assert ref.is_alive() is False, "exited and reaped"
    started = psutil.Process().create_time()
    assert pid_running(os.getpid(), alive_at=started) is True
    assert pid_running(os.getpid(), alive_at=started - 60) is False, "a pid reused by a process started later"
    assert ProcessRef("another-host", os.getpid(), started).is_alive() is None, "cannot be seen from here"


def test_a_wait_reports_at_once_then_every_interval_and_gives_up_after_the_timeout():
    now = [100.0]
    wait = Wait(timeout=3 * REPORT_EVERY_S, since=90.0, clock=lambda: now[0])
    assert wait.report_due() and wait.waited == 10.0
    now[0] += REPORT_EVERY_S - 1
    assert not wait.report_due() and not wait.expired()
    now[0] += 1
    assert wait.report_due() and not wait.report_due()
    now[0] = 90.0 + 3 * REPORT_EVERY_S
    assert wait.expired()


_HOLD = """
import sys
from pathlib import Path
from resources.locks import store_lock
with store_lock(Path(sys.argv[1]), "images bucket b05", timeout=5, run_id="run-a"):
    print("held", flush=True)
    sys.stdin.read()
"""


def _holder(lock: Path) -> subprocess.Popen:
    """A process that holds ``lock`` (as run ``run-a``) until its stdin closes."""
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(lock)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_wait_for_a_live_lock_holder_names_it_and_gives_up_with_what_to_do(tmp_path):
    lock = tmp_path / "locks" / "images" / "b05.lock"
    holder = _holder(lock)
    try:
        said = []
        with pytest.raises(ImageSearchError) as failure:
            with store_lock(lock, "images bucket b05", timeout=0.5, log=said.append):
                pass
        named = f"run run-a, pid {holder.pid} on {socket.gethostname()}"
        assert len(said) == 1 and said[0].startswith(f"waiting for another run ({named}) that is writing images bucket b05")
        message = str(failure.value)
        assert named in message and "IMAGE_SEARCH_LOCK_TIMEOUT" in message and "\n" not in message
    finally:
        holder.stdin.close()
        holder.wait()
    with store_lock(lock, "images bucket b05", timeout=5) as left_by:
        assert left_by is None, "a holder that exited cleanly leaves no record"


def test_a_lock_whose_holder_was_killed_is_taken_over_naming_it(tmp_path):
    lock = tmp_path / "locks" / "search_index.lock"
    holder = _holder(lock)
    holder.kill()
    holder.wait()
    with store_lock(lock, "search_index", timeout=5) as left_by:
        assert left_by == f"run run-a, pid {holder.pid} on {socket.gethostname()}"
    with store_lock(lock, "search_index", timeout=5) as left_by:
        assert left_by is None
