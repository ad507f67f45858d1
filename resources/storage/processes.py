"""Whether a process recorded earlier still runs: the owner of a lock, the worker of a run.

A pid alone is not enough: once its process died, the kernel may give the number to
another process. A process is identified by its pid, its host and a moment it was
known to be running; it is the same process only if a process with that pid exists now,
was started no later than that moment, and is not a zombie.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass

import psutil

#: The kernel reports start times to about 10 ms and psutil anchors them to the boot time in
#: whole seconds: compare with this much slack.
_START_TIME_SLACK_S = 1.0


def pid_running(pid: int, alive_at: float) -> bool:
    """Whether process ``pid`` of this host runs and is the one that was running at time ``alive_at`` (epoch s)."""
    try:
        process = psutil.Process(pid)
        return process.create_time() <= alive_at + _START_TIME_SLACK_S and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass(frozen=True)
class ProcessRef:
    """One process, recorded so that another process can later tell whether it still runs."""

    host: str
    pid: int
    started: float

    @classmethod
    def current(cls) -> "ProcessRef":
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time())

    def is_alive(self) -> bool | None:
        """True or False on this host; None for a process of another host, which cannot be seen from here."""
        if self.host != socket.gethostname():
            return None
        return pid_running(self.pid, self.started)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"

    def to_json(self, **extra) -> str:
        return json.dumps({**asdict(self), **extra})

    @classmethod
    def from_json(cls, text: str) -> tuple["ProcessRef", dict] | None:
        """The process and the extra fields written by :meth:`to_json`, or None for anything else."""
        try:
            fields = json.loads(text)
            ref = cls(str(fields.pop("host")), int(fields.pop("pid")), float(fields.pop("started")))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return ref, fields
