"""Lock files that keep two runs from writing the same part of the store at once, and waits that say what they wait for.

Each writer holds an exclusive ``flock`` on ``<home>/locks/<stage>[/<bucket>].lock`` and
records itself in it, so a waiter can name it; the kernel releases a dead holder's lock,
and its record tells the next holder who died. A waiter reports as :class:`Wait` directs
and gives up after ``IMAGE_SEARCH_LOCK_TIMEOUT`` (docs/operations.md).
"""

from __future__ import annotations

import fcntl
import functools
import os
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator

from resources.errors import ImageSearchError
from resources.storage.processes import ProcessRef

#: Seconds between two lines about the same wait.
REPORT_EVERY_S = 60.0
_POLL_S = 0.2


class Wait:
    """The policy of every wait on another run (a lock here, a pool slot in ``resources/run_recovery.py``).

    Report at once and then every :data:`REPORT_EVERY_S`, so nothing waits silently; give
    up after ``timeout`` seconds, so nothing waits forever. ``since`` (on ``clock``) is when
    the wait began, if earlier than now.
    """

    def __init__(self, timeout: float, since: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.timeout, self.clock = timeout, clock
        self.started = clock() if since is None else since
        self._reported: float | None = None

    @property
    def waited(self) -> float:
        return max(0.0, self.clock() - self.started)

    def expired(self) -> bool:
        return self.waited >= self.timeout

    def report_due(self) -> bool:
        """True on the first call and then once every :data:`REPORT_EVERY_S`."""
        now = self.clock()
        if self._reported is not None and now - self._reported < REPORT_EVERY_S:
            return False
        self._reported = now
        return True


def _holder(fd: int) -> str | None:
    """Who the lock file says holds it: ``run <id>, pid <n> on <host>``, or None if it names no one."""
    record = ProcessRef.from_json(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
    if record is None:
        return None
    process, extra = record
    run = f"run {extra['run_id']}, " if extra.get("run_id") else ""
    return f"{run}{process.describe()}"


@contextmanager
def store_lock(
    path: Path, what: str, timeout: float, log: Callable[[str], None] | None = None, run_id: str | None = None
) -> Iterator[str | None]:
    """Hold an exclusive lock on ``path`` for the ``with`` block, waiting up to ``timeout`` seconds for it.

    Yields who held it last and died holding it (see :func:`_holder`), or None.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        wait = Wait(timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(fd) or "not recorded yet"
                if log is not None and wait.report_due():
                    log(
                        f"waiting for another run ({holder}) that is writing {what}: {wait.waited:.0f} s so far, "
                        f"giving up after {timeout:g} s (lock {path})"
                    )
                if wait.expired():
                    raise ImageSearchError(
                        f"{what} is being written by another run ({holder}) and stayed so for {timeout:g} s "
                        f"(lock {path}): let that run finish or stop it, or raise IMAGE_SEARCH_LOCK_TIMEOUT, "
                        "then run again"
                    ) from None
                time.sleep(_POLL_S)
        left_by = _holder(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, ProcessRef.current().to_json(run_id=run_id).encode(), 0)
        try:
            yield left_by
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def holds_store_locks(stage: str):
    """Decorate an asset's compute function so it runs holding the locks of what it writes.

    The function must take the Dagster ``context`` first and the ``settings`` resource by
    keyword. A partitioned run locks each of its buckets, in order (so two overlapping
    ranges cannot deadlock); an unpartitioned one locks the stage. Locks left by a holder
    that died are taken over with one line per dead holder.
    """

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(context, *args, **kwargs):
            settings = kwargs["settings"]
            root = settings.home / "locks"
            partitioned = context.has_partition_key or context.has_partition_key_range
            targets = (
                [(root / stage / f"{key}.lock", f"{stage} bucket {key}") for key in sorted(context.partition_keys)]
                if partitioned
                else [(root / f"{stage}.lock", stage)]
            )
            with ExitStack() as held:
                left_by = Counter()
                for path, what in targets:
                    dead = held.enter_context(
                        store_lock(path, what, settings.lock_timeout, context.log.info, context.run.run_id)
                    )
                    if dead is not None:
                        left_by[dead] += 1
                for holder, count in left_by.items():
                    context.log.warning(f"took over {count} {stage} lock(s) left by {holder}, which died holding them")
                return fn(context, *args, **kwargs)

        return wrapper

    return decorate
