"""Writing files and folders atomically, and sweeping away what a killed writer left.

Everything is written as ``.<target name>.<token>.tmp`` beside its target and renamed into
place once complete, so a reader sees the old target or the new one; :func:`sweep` knows that
one name. Only the standard library: ``os.replace`` is the atomic step.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

SUFFIX = ".tmp"
#: A temporary untouched this long belongs to a writer that died: every writer here finishes
#: a file or a folder (an index build, a model export) in minutes at most.
ABANDONED_AFTER_S = 3600


def temporary_name(target: Path) -> Path:
    """A fresh temporary path beside ``target``, in the one form :func:`sweep` recognises."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}{SUFFIX}")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary of this module's form (a hidden name ending in ``.tmp``)."""
    return name.startswith(".") and name.endswith(SUFFIX)


class Staged:
    """A temporary path beside ``target`` that becomes ``target`` on :meth:`commit`.

    As a context manager it yields the path, commits when the block ends cleanly and
    discards when it raises. ``folder=True`` creates the temporary as an empty folder; a
    folder that replaces an existing one moves the old one aside first, so for a moment
    neither is at ``target`` (a crash then leaves both under temporary names).
    """

    def __init__(self, target: Path, *, folder: bool = False):
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = temporary_name(self.target)
        if folder:
            self.path.mkdir()

    def commit(self) -> Path:
        """Move the temporary onto ``target`` and return ``target``."""
        if self.path.is_dir() and self.target.is_dir():
            old = temporary_name(self.target)
            os.rename(self.target, old)
            os.rename(self.path, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.path, self.target)
        return self.target

    def discard(self) -> None:
        """Remove the temporary, whatever was written to it."""
        _remove(self.path)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


@contextmanager
def scratch_folder(beside: Path) -> Iterator[Path]:
    """A temporary folder beside ``beside`` for work whose results the caller renames out of it; removed at the end."""
    staged = Staged(beside, folder=True)
    try:
        yield staged.path
    finally:
        staged.discard()


def write_bytes(target: Path, data: bytes, *, durable: bool = False) -> None:
    """Replace ``target`` with ``data``; ``durable`` also flushes it to disk before the rename."""
    with Staged(target) as path, open(path, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


def write_text(target: Path, text: str, *, durable: bool = False) -> None:
    """Replace ``target`` with ``text`` in UTF-8 (see :func:`write_bytes`)."""
    write_bytes(target, text.encode("utf-8"), durable=durable)


def write_parquet(target: Path, table: pa.Table, **options) -> None:
    """Replace ``target`` with ``table`` as Parquet (``options`` go to ``pyarrow.parquet.write_table``)."""
    with Staged(target) as path:
        pq.write_table(table, path, **options)


def sweep(folder: Path, *, exclusive: bool = False) -> int:
    """Remove the temporaries a killed writer left directly in ``folder``; return how many.

    A temporary that a live writer is still filling must survive, so by default only those
    untouched for :data:`ABANDONED_AFTER_S` go. A caller that holds the lock every writer
    into ``folder`` takes (``resources/storage/locks.py``) passes ``exclusive=True``: no live writer
    can own one then, so all go.
    """
    if not folder.is_dir():
        return 0
    cutoff = time.time() - ABANDONED_AFTER_S
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if not is_temporary(entry.name):
                continue
            try:
                if not exclusive and entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
            except FileNotFoundError:
                continue
            _remove(Path(entry.path))
            removed += 1
    if removed:
        log.info("removed %d temporaries left in %s by writers that did not finish", removed, folder)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
