"""The on-disk image store: where the image of a photo_id lives, safely named.

Layout: ``<images_dir>/<bucket>/<name>.jpg``, every stored file a normalised RGB JPEG.
Names come from the photo_id only when it is a plain token; any other id (``../../x``,
an empty string, a very long one) is stored under a hash of itself, so no id can escape
the store or collide with another.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def safe_name(photo_id: str) -> str:
    """A file name (without extension) for ``photo_id`` that is safe on every filesystem."""
    if _PLAIN_ID.fullmatch(photo_id):
        return photo_id
    return "=" + hashlib.sha256(photo_id.encode("utf-8")).hexdigest()[:40]


def bucket_of(photo_id: str, bucket_count: int) -> str:
    """The bucket key of ``photo_id`` among ``bucket_count``: stable across runs and machines."""
    digest = hashlib.blake2b(photo_id.encode("utf-8"), digest_size=4).digest()
    return f"b{int.from_bytes(digest, 'big') % bucket_count:02d}"


BUCKET_COUNT = 64
BUCKET_KEYS = [f"b{i:02d}" for i in range(BUCKET_COUNT)]


class ImageStore:
    """Maps photo_ids to image files under ``root``; no I/O beyond ``stat`` and ``mkdir``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path_for(self, photo_id: str) -> Path:
        """Where the image of ``photo_id`` is (or will be) stored."""
        return self.root / bucket_of(photo_id, BUCKET_COUNT) / f"{safe_name(photo_id)}.jpg"

    def has(self, photo_id: str) -> bool:
        """Whether a finished image for ``photo_id`` is in the store."""
        return self.path_for(photo_id).is_file()

    def local_path(self, photo_id: str) -> Path | None:
        """The stored image's path, or ``None`` when it was never fetched."""
        path = self.path_for(photo_id)
        return path if path.is_file() else None
