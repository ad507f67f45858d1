"""Removing what a killed writer left: temporary folders beside the output they were building.

Writers here build into a temporary folder next to their target and rename it (or its
files) into place, so a reader never sees half a result; a process killed midway leaves
that folder behind. The next writer removes it, once it is old enough that no live writer
can still own it.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: A temporary folder untouched this long belongs to a writer that died: builds and exports take minutes at most.
ABANDONED_AFTER_S = 3600


def remove_abandoned(folder: Path, pattern: str, older_than_s: float = ABANDONED_AFTER_S) -> None:
    """Delete the folders matching ``pattern`` in ``folder`` untouched for ``older_than_s`` seconds."""
    cutoff = time.time() - older_than_s
    for path in folder.glob(pattern):
        try:
            if path.is_dir() and path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed %s, left by a writer that did not finish", path)
        except FileNotFoundError:
            continue
