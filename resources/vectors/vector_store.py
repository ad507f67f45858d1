"""The vector store: one unit image vector per photo and model, as Parquet chunks per bucket.

Layout: ``embeddings/<model key>/<bucket>/part-<n>.parquet``, each row a photo_id, its
vector, the model id, the fingerprint of the image it was encoded from, the image
runtime and precision that made the vector (chunks written before those two columns
existed read as PyTorch's, precision unknown), and the content hash of the model's image
tower (null in older chunks): a model changed in place, under the same id, re-encodes. Chunks are
written whole and renamed into place, so a killed writer loses at most the chunk it was
filling; a later chunk supersedes an earlier one's row for the same photo.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from resources.config import Settings
from resources.images.image_store import ImageStore
from resources.storage.files import write_parquet

#: Vectors per Parquet chunk: what a crash can lose at most.
CHUNK_ROWS = 1024
_PART = re.compile(r"part-(\d{6})\.parquet")


def model_key(model_id: str) -> str:
    """A folder name for ``model_id``: readable, filesystem-safe, and distinct for distinct ids."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id.rstrip("/").rsplit("/", 1)[-1])[-40:].strip("._") or "model"
    return f"{readable}-{hashlib.sha256(model_id.encode('utf-8')).hexdigest()[:10]}"


def chunk_schema(dim: int) -> pa.Schema:
    """Arrow schema of a chunk of ``dim``-dimensional vectors."""
    return pa.schema(
        [
            ("photo_id", pa.string()),
            ("vector", pa.list_(pa.float32(), dim)),
            ("model_id", pa.string()),
            ("image_bytes", pa.int64()),
            ("image_mtime_ns", pa.int64()),
            ("runtime", pa.string()),
            ("precision", pa.string()),
            ("model_hash", pa.string()),
        ]
    )


#: What a chunk written before the runtime and precision columns existed says it was made by.
OLD_CHUNK_RUNTIME = ("torch", "")


def runtime_of(runtime: str | None, precision: str | None) -> tuple[str, str]:
    """The (runtime, precision) of a row; an old chunk's missing values read as :data:`OLD_CHUNK_RUNTIME`."""
    return (runtime, precision or "") if runtime else OLD_CHUNK_RUNTIME


def vectors_of(table: pa.Table) -> np.ndarray:
    """The ``vector`` column of a chunk as a ``rows x dim`` float32 matrix."""
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    return column.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def _present(part: Path, columns: list[str] | None) -> list[str] | None:
    """``columns`` less those ``part`` lacks (a chunk from before the runtime columns)."""
    if columns is None:
        return None
    names = set(pq.read_schema(part).names)
    return [name for name in columns if name in names]


def _in_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` cast to ``schema``, missing or null runtime columns (old chunks) as :data:`OLD_CHUNK_RUNTIME`, no model hash as null."""
    for name, old in zip(("runtime", "precision"), OLD_CHUNK_RUNTIME):
        present = name in table.column_names
        column = table.column(name).cast(pa.string()) if present else pa.nulls(len(table), pa.string())
        filled = pc.fill_null(column, old)
        if present:
            table = table.set_column(table.column_names.index(name), name, filled)
        else:
            table = table.append_column(name, filled)
    if "model_hash" not in table.column_names:
        table = table.append_column("model_hash", pa.nulls(len(table), pa.string()))
    return table.select(schema.names).cast(schema)


def _latest_rows(table: pa.Table) -> np.ndarray:
    """Row numbers of the last occurrence of each photo_id (later chunks supersede earlier ones)."""
    ids = pd.Series(table.column("photo_id").to_pylist())
    return np.flatnonzero(~ids.duplicated(keep="last").to_numpy())


@dataclass
class EncodingPlan:
    """A bucket's stored images (photo_id -> path, bytes, mtime) and those lacking a current vector.

    ``other_runtime`` counts the photos re-encoded only because the runtime that made
    their vector is not one of those accepted, ``other_model`` those whose vector another
    content of the model (changed in place, same id) made.
    """

    stored: dict[str, tuple[Path, int, int]]
    todo: list[tuple[str, Path, int, int]]
    other_runtime: int = 0
    other_model: int = 0


class VectorStore:
    """The vectors of one image model under ``embeddings_dir``; a new model gets its own folder."""

    def __init__(self, embeddings_dir: Path, model_id: str):
        self.model_id = model_id
        self.root = Path(embeddings_dir) / model_key(model_id)

    @classmethod
    def for_settings(cls, settings: Settings, model_id: str | None = None) -> "VectorStore":
        """The store of ``model_id``, by default the configured image model."""
        return cls(settings.embeddings_dir, model_id or settings.image_model)

    def bucket_dir(self, bucket: str) -> Path:
        """The folder of a bucket's chunks."""
        return self.root / bucket

    def _parts(self, bucket: str) -> list[Path]:
        """The finished chunks of a bucket, oldest first (temporary files never match)."""
        folder = self.bucket_dir(bucket)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if _PART.fullmatch(p.name))

    def _buckets(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def read_bucket(self, bucket: str, columns: list[str] | None = None) -> pa.Table | None:
        """All chunks of a bucket in write order, or ``None`` when it has none."""
        parts = self._parts(bucket)
        if not parts:
            return None
        tables = [pq.read_table(p, columns=_present(p, columns)) for p in parts]
        # Chunks from before the runtime columns lack them: those read as nulls.
        return pa.concat_tables(tables, promote_options="default")

    def write_chunk(self, bucket: str, table: pa.Table) -> Path:
        """Write ``table`` as the bucket's next chunk: a temporary file, then an atomic rename."""
        folder = self.bucket_dir(bucket)
        folder.mkdir(parents=True, exist_ok=True)
        existing = self._parts(bucket)
        number = int(_PART.fullmatch(existing[-1].name).group(1)) + 1 if existing else 0
        final = folder / f"part-{number:06d}.parquet"
        write_parquet(final, table)
        return final

    def plan_encoding(
        self,
        bucket: str,
        images: ImageStore,
        photo_ids: list[str],
        accepts: Callable[[tuple[str, str]], bool] | None = None,
        model_hash: str | None = None,
    ) -> EncodingPlan:
        """Which of ``photo_ids`` have a stored image, and which of those need a (new) vector.

        A photo needs one when the store has no vector for it, the vector was encoded from
        another file (its size or modification time differ), or ``accepts`` refuses the
        (runtime, precision) that made it: vectors the agreement gate found interchangeable
        are kept when the runtime changes (``None`` accepts every runtime). With
        ``model_hash``, a vector recorded as made by another content of the model needs one
        too (chunks without the record are kept).
        """
        stored = {}
        for photo_id in photo_ids:
            path = images.local_path(photo_id)
            if path is not None:
                stat = path.stat()
                stored[photo_id] = (path, stat.st_size, stat.st_mtime_ns)
        existing = self.read_bucket(
            bucket, ["photo_id", "image_bytes", "image_mtime_ns", "runtime", "precision", "model_hash"]
        )
        known, made_by, hashes = {}, {}, {}
        if existing is not None:
            latest = existing.take(_latest_rows(existing)).to_pydict()
            known = dict(zip(latest["photo_id"], zip(latest["image_bytes"], latest["image_mtime_ns"])))
            runtimes = latest.get("runtime") or [None] * len(latest["photo_id"])
            precisions = latest.get("precision") or [None] * len(latest["photo_id"])
            made_by = {pid: runtime_of(r, p) for pid, r, p in zip(latest["photo_id"], runtimes, precisions)}
            hashes = dict(zip(latest["photo_id"], latest.get("model_hash") or [None] * len(latest["photo_id"])))
        fresh = {pid for pid, info in stored.items() if known.get(pid) == (info[1], info[2])}
        stale = {pid for pid in fresh if model_hash and hashes.get(pid) not in (None, model_hash)}
        refused = {pid for pid in fresh - stale if accepts is not None and not accepts(made_by[pid])}
        todo = [(pid, *info) for pid, info in stored.items() if pid not in fresh or pid in refused | stale]
        return EncodingPlan(stored, todo, len(refused), len(stale))

    def writer(
        self, dim: int, runtime: tuple[str, str] = ("torch", ""), model_hash: str | None = None
    ) -> "ChunkWriter":
        """A writer of ``dim``-dimensional vectors made by ``runtime`` (name, precision) from the model content ``model_hash``."""
        return ChunkWriter(self, dim, runtime, model_hash)

    def compact(self, bucket: str, keep: set[str] | dict, dim: int) -> int:
        """Rewrite a bucket's chunks as one: the latest vector of each photo in ``keep``. Returns its rows."""
        parts = self._parts(bucket)
        table = self.read_bucket(bucket)
        if table is None:
            return 0
        table = table.take(_latest_rows(table))
        wanted = pc.is_in(table.column("photo_id"), value_set=pa.array(list(keep), pa.string()))
        table = _in_schema(table.filter(wanted), chunk_schema(dim))
        if len(parts) > 1 or len(table) != pq.read_metadata(parts[0]).num_rows:
            self.write_chunk(bucket, table)
            for part in parts:
                part.unlink()
        return len(table)

    def dimension(self) -> int | None:
        """The dimension of the newest chunk, which the current model wrote; ``None`` with no chunk."""
        parts = [part for bucket in self._buckets() for part in self._parts(bucket)]
        if not parts:
            return None
        newest = max(parts, key=lambda p: p.stat().st_mtime_ns)
        return pq.read_schema(newest).field("vector").type.list_size

    def load(
        self, photo_ids: list[str] | None = None, buckets: list[str] | None = None
    ) -> tuple[list[str], np.ndarray]:
        """The latest vector of each photo, one row per photo_id, in storage order.

        ``photo_ids`` and ``buckets`` restrict the result. Returns the ids and a
        ``len(ids) x dim`` float32 matrix of unit rows.
        """
        tables = []
        for bucket in self._buckets() if buckets is None else sorted(buckets):
            table = self.read_bucket(bucket, ["photo_id", "vector"])
            if table is not None:
                tables.append(table.take(_latest_rows(table)))
        if not tables:
            return [], np.zeros((0, 0), dtype=np.float32)
        table = pa.concat_tables(tables)
        if photo_ids is not None:
            wanted = pa.array(list(photo_ids), pa.string())
            table = table.filter(pc.is_in(table.column("photo_id"), value_set=wanted))
        return table.column("photo_id").to_pylist(), vectors_of(table)

    def join(self, catalog: pd.DataFrame, buckets: list[str] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
        """Catalog ∩ vectors: the rows of ``catalog`` that have a vector, in catalog order, and their vectors row for row."""
        photo_ids, vectors = self.load(buckets=buckets)
        rows = pd.Series(np.arange(len(photo_ids)), index=pd.Index(photo_ids, name="photo_id"))
        rows = rows[~rows.index.duplicated(keep="last")]
        catalog = catalog[catalog["photo_id"].isin(rows.index)].reset_index(drop=True)
        return catalog, np.asarray(vectors, dtype=np.float32)[rows.loc[catalog["photo_id"]].to_numpy()]


class ChunkWriter:
    """Buffers encoded vectors per bucket and writes each bucket's rows as chunks of ``CHUNK_ROWS``."""

    def __init__(
        self, store: VectorStore, dim: int, runtime: tuple[str, str] = ("torch", ""), model_hash: str | None = None
    ):
        self.store = store
        self.schema = chunk_schema(dim)
        self.runtime, self.model_hash = runtime, model_hash
        self._bucket: str | None = None
        self._rows: list[tuple[str, np.ndarray, int, int]] = []

    def add(self, bucket: str, photo_id: str, vector: np.ndarray, image_bytes: int, image_mtime_ns: int) -> None:
        """Buffer one vector; a full buffer, or a row of another bucket, writes the buffer first."""
        if bucket != self._bucket or len(self._rows) >= CHUNK_ROWS:
            self.flush()
            self._bucket = bucket
        self._rows.append((photo_id, vector, image_bytes, image_mtime_ns))

    def flush(self) -> None:
        """Write the buffered rows as a chunk of their bucket."""
        if not self._rows:
            return
        dim = self.schema.field("vector").type.list_size
        rows = self._rows
        table = pa.table(
            [
                pa.array([row[0] for row in rows], pa.string()),
                pa.FixedSizeListArray.from_arrays(
                    pa.array(np.stack([row[1] for row in rows]).reshape(-1), pa.float32()), dim
                ),
                pa.array([self.store.model_id] * len(rows), pa.string()),
                pa.array([row[2] for row in rows], pa.int64()),
                pa.array([row[3] for row in rows], pa.int64()),
                pa.array([self.runtime[0]] * len(rows), pa.string()),
                pa.array([self.runtime[1]] * len(rows), pa.string()),
                pa.array([self.model_hash] * len(rows), pa.string()),
            ],
            schema=self.schema,
        )
        self.store.write_chunk(self._bucket, table)
        self._rows = []


def load_embeddings(
    settings: Settings, model_id: str, photo_ids: list[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """The latest vector of each photo for ``model_id``, every bucket (see :meth:`VectorStore.load`)."""
    return VectorStore.for_settings(settings, model_id).load(photo_ids)
