"""Lock files that keep two runs from writing the same part of the store at once.

Two materializations of the same bucket (a backfill and a sensor's run, or two people in
the UI) would otherwise interleave their writes to one manifest, one vector folder or one
index build. Each writer holds an exclusive ``flock`` on ``<home>/locks/<stage>/<bucket>.lock``
(``<home>/locks/<stage>.lock`` for an unpartitioned stage) while it writes; a second writer
waits for it, logging that it does, and fails with a one-line error after
``IMAGE_SEARCH_LOCK_TIMEOUT`` seconds. The kernel releases the lock when its holder exits,
killed or not, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import functools
import os
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator

from resources.errors import ImageSearchError

_POLL_S = 0.2


@contextmanager
def store_lock(path: Path, what: str, timeout: float, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the ``with`` block, waiting up to ``timeout`` seconds for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ImageSearchError(
                        f"{what} is being written by another run (lock {path}) and stayed so for {timeout:g} s: "
                        "let that run finish or stop it, then run again"
                    ) from None
                if not waiting and log is not None:
                    log(f"waiting for another run that is writing {what} (lock {path})")
                waiting = True
                time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def holds_store_locks(stage: str):
    """Decorate an asset's compute function so it runs holding the locks of what it writes.

    The function must take the Dagster ``context`` first and the ``settings`` resource by
    keyword. A partitioned run locks each of its buckets, in order (so two overlapping
    ranges cannot deadlock); an unpartitioned one locks the stage.
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
                for path, what in targets:
                    held.enter_context(store_lock(path, what, settings.lock_timeout, context.log.info))
                return fn(context, *args, **kwargs)

        return wrapper

    return decorate
