"""Hold a child process at a known point of its work: the test side of ``tests/pause_hook``.

A kill test that fires when a log line appears races its victim: a fast machine finishes
the work before the kill lands, a slow one kills too early. Instead the test names a
function (``module:Qualified.name#n``, paused before its n-th call), starts the child with
:meth:`PausePoint.env`, and :meth:`PausePoint.wait` returns once the child stands there and
blocks; it stays there until the test kills it or calls :meth:`PausePoint.release`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOOK_DIR = Path(__file__).resolve().parent / "pause_hook"
#: Only a guard against a hung test: reaching the point never depends on this.
GIVE_UP_S = 600


class PausePoint:
    """One pause point, listening on a Unix socket for the child that reaches it."""

    def __init__(self, target: str):
        self.target = target
        # A short folder of its own: Unix socket paths are limited to about 100 bytes.
        self._dir = tempfile.mkdtemp(prefix="pause-")
        self.address = os.path.join(self._dir, "sock")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.address)
        self._server.listen()
        self._server.settimeout(0.5)
        self._held: socket.socket | None = None

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with the hook on PYTHONPATH and the point named."""
        env = dict(os.environ if base is None else base)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HOOK_DIR), env.get("PYTHONPATH", "")) if p)
        env["TEST_PAUSE_AT"] = self.target
        env["TEST_PAUSE_SOCKET"] = self.address
        return env

    def wait(self, child: subprocess.Popen, log: Path | None = None) -> dict:
        """Block until a process of ``child`` stands at the point; return what it said (pid, ppid, at).

        Fails at once if ``child`` ends first, quoting the end of ``log``.
        """
        for _ in range(int(GIVE_UP_S / self._server.gettimeout())):
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                if child.poll() is not None:
                    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
                    raise AssertionError(f"exited (rc {child.returncode}) before reaching {self.target}\n{tail}")
                continue
            self._held = conn
            return json.loads(conn.makefile().readline())
        raise AssertionError(f"nothing reached {self.target} in {GIVE_UP_S} s")

    def release(self) -> None:
        """Let the held process go on."""
        if self._held is not None:
            self._held.close()
            self._held = None

    def close(self) -> None:
        self.release()
        self._server.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "PausePoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def kill_group(child: subprocess.Popen) -> None:
    """SIGKILL the process group ``child`` leads (start it with ``start_new_session=True``), and reap it."""
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()


_HOLD_LOCK = """
import sys
from pathlib import Path
from resources.storage.locks import store_lock
with store_lock(Path(sys.argv[1]), sys.argv[2], timeout=5, run_id=sys.argv[3] or None):
    print("held", flush=True)
    sys.stdin.readline()
"""


def hold_lock(lock: Path, what: str = "images bucket b05", run_id: str | None = None) -> subprocess.Popen:
    """A process holding ``lock`` (as ``run_id``, if given) until a line or the end arrives on its stdin, or it is killed."""
    root = HOOK_DIR.parents[1]
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(lock), what, run_id or ""],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "held"
    return child


def wait_until(condition, what: str) -> None:
    """Poll ``condition`` until it holds (a state the threads reach), failing after a minute."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.001)
