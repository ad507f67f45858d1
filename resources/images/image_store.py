"""The on-disk image store: where the image of a photo_id lives, safely named.

``<images_dir>/<bucket>/<name>.jpg``, named from the photo_id only when it is a plain token
(else a hash of it, so no id escapes the store). Beside them, per bucket: the manifest of
what is stored and from which URL, the journal of a run still going, and the ledger of
failures.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa

from resources.storage.files import write_parquet

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
    """Maps photo_ids to image files under ``root`` and keeps each bucket's manifest and ledger."""

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

    def bucket_dir(self, bucket: str) -> Path:
        """The folder holding one bucket's images."""
        return self.root / bucket

    def manifest_path(self, bucket: str) -> Path:
        """The bucket's manifest: which photo_id is stored from which URL, its size and hash."""
        return self.root / "manifest" / f"{bucket}.parquet"

    def journal_path(self, bucket: str) -> Path:
        """Manifest rows appended while a run is fetching, folded into the manifest at its end."""
        return self.root / "manifest" / f"{bucket}.journal.jsonl"

    def ledger_path(self, bucket: str) -> Path:
        """The bucket's failure ledger: every photo that could not be stored, and why."""
        return self.root / "ledger" / f"{bucket}.parquet"

    def read_manifest(self, bucket: str) -> pd.DataFrame:
        """The bucket's manifest, journal rows of an unfinished run included, one row per photo_id.

        Rows whose image file is gone are dropped, so a deleted image is fetched again.
        A torn last journal line (a run killed mid-write) is ignored.
        """
        frames = []
        if self.manifest_path(bucket).is_file():
            frames.append(pd.read_parquet(self.manifest_path(bucket)))
        journal = self.journal_path(bucket)
        if journal.is_file():
            rows = []
            for line in journal.read_text(encoding="utf-8").splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
            if rows:
                journal_frame = pd.DataFrame(rows)
                journal_frame["stored_at"] = pd.to_datetime(journal_frame["stored_at"], utc=True)
                frames.append(journal_frame)
        if not frames:
            return _empty(MANIFEST_SCHEMA)
        manifest = pd.concat(frames, ignore_index=True).drop_duplicates("photo_id", keep="last")
        present = [self.path_for(photo_id).is_file() for photo_id in manifest["photo_id"]]
        return _typed(manifest.loc[present], MANIFEST_SCHEMA)

    def append_journal(self, bucket: str, row: dict) -> None:
        """Record one stored photo at once, so a killed run's work is not fetched again."""
        path = self.journal_path(bucket)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({**row, "stored_at": row["stored_at"].isoformat()}, ensure_ascii=False)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def write_manifest(self, bucket: str, manifest: pd.DataFrame) -> None:
        """Replace the bucket's manifest atomically and drop its journal."""
        write_parquet(self.manifest_path(bucket), _table(manifest, MANIFEST_SCHEMA))
        self.journal_path(bucket).unlink(missing_ok=True)

    def read_ledger(self, bucket: str) -> pd.DataFrame:
        """The bucket's failure ledger (empty when nothing failed)."""
        path = self.ledger_path(bucket)
        return pd.read_parquet(path) if path.is_file() else _empty(LEDGER_SCHEMA)

    def write_ledger(self, bucket: str, ledger: pd.DataFrame) -> None:
        """Replace the bucket's failure ledger atomically."""
        write_parquet(self.ledger_path(bucket), _table(ledger, LEDGER_SCHEMA))


MANIFEST_SCHEMA = pa.schema(
    [
        ("photo_id", pa.string()),
        ("url", pa.string()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("stored_at", pa.timestamp("us", tz="UTC")),
    ]
)
LEDGER_SCHEMA = pa.schema(
    [
        ("photo_id", pa.string()),
        ("url", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("attempts", pa.int32()),
        ("failed_at", pa.timestamp("us", tz="UTC")),
    ]
)


def _empty(schema: pa.Schema) -> pd.DataFrame:
    return schema.empty_table().to_pandas()


def _table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(frame[schema.names].reset_index(drop=True), schema=schema, preserve_index=False)


def _typed(frame: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    return _table(frame, schema).to_pandas()
