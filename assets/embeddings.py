"""The ``image_embeddings`` asset: one unit CLIP vector per stored image, bucket by bucket.

Vectors live under ``embeddings/<model key>/<bucket>/part-<n>.parquet`` with columns
``photo_id``, ``vector`` (fixed-size list of float32), ``model_id`` and the stored image's
fingerprint (``image_bytes``, ``image_mtime_ns``). A run encodes only the photos of its
buckets whose image is in the store and that lack a vector for the current model, or whose
image changed since (another fingerprint); a new ``IMAGE_SEARCH_IMAGE_MODEL`` gets its own
folder, so changing the model re-encodes everything. Each chunk of ``CHUNK_ROWS`` vectors
is written under a temporary name and renamed, so a killed run loses at most the chunk it
was encoding and the next run resumes after the last finished one. At the end of a bucket
its chunks are compacted into one holding the latest vector of each stored photo.
"""

import hashlib
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    TableColumn,
    TableSchema,
    asset,
    asset_check,
)

from assets.automation import FOLLOW_CHECKED_PARENTS
from assets.partitions import photo_buckets
from resources.catalog import read_catalog
from resources.config import Settings
from resources.dagster_resources import ClipResource
from resources.errors import ImageSearchError
from resources.image_store import ImageStore
from resources.locks import holds_store_locks

#: Vectors per Parquet chunk: what a crash can lose at most.
CHUNK_ROWS = 1024
#: Seconds between progress lines in the log.
PROGRESS_EVERY_S = 10.0
#: Failed files listed in the metadata (the count covers the rest).
SHOWN_FAILURES = 10
VECTORS_VALID_CHECK = "vectors_valid"
_NORM_TOLERANCE = 1e-3
_PART = re.compile(r"part-(\d{6})\.parquet")


def model_key(model_id: str) -> str:
    """A folder name for ``model_id``: readable, filesystem-safe, and distinct for distinct ids."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id.rstrip("/").rsplit("/", 1)[-1])[-40:].strip("._") or "model"
    return f"{readable}-{hashlib.sha256(model_id.encode('utf-8')).hexdigest()[:10]}"


def chunk_schema(dim: int) -> pa.Schema:
    """Arrow schema of an embedding chunk of ``dim``-dimensional vectors."""
    return pa.schema(
        [
            ("photo_id", pa.string()),
            ("vector", pa.list_(pa.float32(), dim)),
            ("model_id", pa.string()),
            ("image_bytes", pa.int64()),
            ("image_mtime_ns", pa.int64()),
        ]
    )


def _bucket_dir(settings: Settings, model_id: str, bucket: str) -> Path:
    return settings.embeddings_dir / model_key(model_id) / bucket


def _parts(folder: Path) -> list[Path]:
    """The finished chunks of a bucket, oldest first (temporary files never match)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _PART.fullmatch(p.name))


def _write_chunk(folder: Path, table: pa.Table) -> Path:
    """Write ``table`` as the bucket's next chunk: a temporary file, then an atomic rename."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = _parts(folder)
    number = int(_PART.fullmatch(existing[-1].name).group(1)) + 1 if existing else 0
    final = folder / f"part-{number:06d}.parquet"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def _read_bucket(folder: Path, columns: list[str] | None = None) -> pa.Table | None:
    """All chunks of a bucket in write order, or ``None`` when it has none."""
    parts = _parts(folder)
    if not parts:
        return None
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in parts])


def _latest_rows(table: pa.Table) -> np.ndarray:
    """Row numbers of the last occurrence of each photo_id (later chunks supersede earlier ones)."""
    ids = pd.Series(table.column("photo_id").to_pylist())
    return np.flatnonzero(~ids.duplicated(keep="last").to_numpy())


def _vectors(table: pa.Table) -> np.ndarray:
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    return column.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def load_embeddings(
    settings: Settings, model_id: str, photo_ids: list[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """The latest vector of each photo for ``model_id``, every bucket, one row per photo_id.

    ``photo_ids`` restricts the result to those photos (in storage order, not theirs).
    Returns the ids and a ``len(ids) x dim`` float32 matrix of unit rows.
    """
    root = settings.embeddings_dir / model_key(model_id)
    tables = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        table = _read_bucket(folder, ["photo_id", "vector"])
        if table is not None:
            tables.append(table.take(_latest_rows(table)))
    if not tables:
        return [], np.zeros((0, 0), dtype=np.float32)
    table = pa.concat_tables(tables)
    if photo_ids is not None:
        wanted = pa.array(list(photo_ids), pa.string())
        table = table.filter(pc.is_in(table.column("photo_id"), value_set=wanted))
    return table.column("photo_id").to_pylist(), _vectors(table)


def _fingerprint(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _plan_bucket(settings: Settings, store: ImageStore, model_id: str, bucket: str, photo_ids: list[str]):
    """Split a bucket's stored photos into up to date and to encode (path and fingerprint)."""
    stored = {}
    for photo_id in photo_ids:
        path = store.local_path(photo_id)
        if path is not None:
            stored[photo_id] = (path, *_fingerprint(path))
    existing = _read_bucket(_bucket_dir(settings, model_id, bucket), ["photo_id", "image_bytes", "image_mtime_ns"])
    known = {}
    if existing is not None:
        latest = existing.take(_latest_rows(existing)).to_pydict()
        known = dict(zip(latest["photo_id"], zip(latest["image_bytes"], latest["image_mtime_ns"])))
    todo = [(pid, *info) for pid, info in stored.items() if known.get(pid) != (info[1], info[2])]
    return stored, todo


def _compact(folder: Path, stored: dict, dim: int) -> int:
    """Rewrite a bucket's chunks as one: the latest vector of each photo still stored. Returns its rows."""
    parts = _parts(folder)
    table = _read_bucket(folder)
    if table is None:
        return 0
    table = table.take(_latest_rows(table))
    keep = pc.is_in(table.column("photo_id"), value_set=pa.array(list(stored), pa.string()))
    table = table.filter(keep).cast(chunk_schema(dim))
    if len(parts) > 1 or len(table) != pq.read_metadata(parts[0]).num_rows:
        _write_chunk(folder, table)
        for part in parts:
            part.unlink()
    return len(table)


def _failures_md(failures: list[tuple[str, str]]) -> str:
    rows = "\n".join(f"| `{pid}` | {reason.replace('|', '/')} |" for pid, reason in failures[:SHOWN_FAILURES])
    more = f"\n\n{len(failures) - SHOWN_FAILURES} more not shown." if len(failures) > SHOWN_FAILURES else ""
    return f"| photo_id | reason |\n|---|---|\n{rows}{more}" if failures else "none"


@asset(
    group_name="vectors",
    kinds={"pytorch", "parquet"},
    partitions_def=photo_buckets,
    backfill_policy=BackfillPolicy.single_run(),
    deps=["photo_catalog", "images"],
    code_version="1",
    pool="clip_model",
    description="One unit CLIP vector per stored image, as Parquet chunks under embeddings/<model key>/<bucket>/.",
    automation_condition=FOLLOW_CHECKED_PARENTS,
)
@holds_store_locks("embeddings")
def image_embeddings(context: AssetExecutionContext, settings: ResourceParam[Settings], clip: ClipResource) -> MaterializeResult:
    """Encode the stored images of each bucket of the run that lack a current vector; resume after a crash."""
    buckets = list(context.partition_keys)
    try:
        catalog = read_catalog(settings, ["photo_id", "bucket"], buckets)
        encoder = clip.get()
    except ImageSearchError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    model_id = encoder.image_model_id
    store = ImageStore(settings.images_dir)

    plans = {}
    for bucket in buckets:
        ids = catalog.loc[catalog["bucket"] == bucket, "photo_id"].tolist()
        plans[bucket] = _plan_bucket(settings, store, model_id, bucket, ids)
    total_stored = sum(len(stored) for stored, _ in plans.values())
    total_todo = sum(len(todo) for _, todo in plans.values())
    context.log.info(
        f"image_embeddings: {total_stored} stored images in {len(buckets)} bucket(s), {total_todo} to encode "
        f"with {model_id} on {encoder.device} in {encoder.precision}"
    )

    try:
        dim = encoder.dim
    except ImageSearchError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    schema = chunk_schema(dim)
    for bucket in buckets:
        folder = _bucket_dir(settings, model_id, bucket)
        for partial in folder.glob(".part-*.tmp") if folder.is_dir() else []:
            partial.unlink(missing_ok=True)

    # One stream over every bucket keeps the model's batches full; rows are buffered per
    # bucket (the stream is ordered by bucket) and flushed as chunks of CHUNK_ROWS.
    todo = [(bucket, *item) for bucket in buckets for item in plans[bucket][1]]
    buffer: list[tuple[str, np.ndarray, int, int]] = []
    buffer_bucket = None

    def flush() -> None:
        if buffer:
            table = pa.table(
                [
                    pa.array([row[0] for row in buffer], pa.string()),
                    pa.FixedSizeListArray.from_arrays(
                        pa.array(np.stack([row[1] for row in buffer]).reshape(-1), pa.float32()), dim
                    ),
                    pa.array([model_id] * len(buffer), pa.string()),
                    pa.array([row[2] for row in buffer], pa.int64()),
                    pa.array([row[3] for row in buffer], pa.int64()),
                ],
                schema=schema,
            )
            _write_chunk(_bucket_dir(settings, model_id, buffer_bucket), table)
            buffer.clear()

    encoded, failures, started, last_log = 0, [], time.monotonic(), time.monotonic()
    for batch in encoder.encode_image_files([item[2] for item in todo]):
        for position, vector in zip(batch.indices, batch.vectors):
            bucket, photo_id, _, size, mtime = todo[position]
            if bucket != buffer_bucket or len(buffer) >= CHUNK_ROWS:
                flush()
                buffer_bucket = bucket
            buffer.append((photo_id, vector, size, mtime))
        failures.extend((todo[position][1], reason) for position, reason in batch.failures)
        encoded += len(batch.indices)
        now = time.monotonic()
        if now - last_log >= PROGRESS_EVERY_S:
            rate = encoded / (now - started)
            eta = (total_todo - encoded - len(failures)) / rate if rate else float("nan")
            context.log.info(
                f"image_embeddings: {encoded}/{total_todo} encoded, {len(failures)} failed, "
                f"{rate:.1f} img/s, ETA {eta:.0f} s"
            )
            last_log = now
    flush()
    vectors_total = sum(_compact(_bucket_dir(settings, model_id, b), plans[b][0], dim) for b in buckets)
    elapsed = time.monotonic() - started
    throughput = encoded / elapsed if encoded and elapsed > 0 else 0.0
    for photo_id, reason in failures[:SHOWN_FAILURES]:
        context.log.warning(f"image_embeddings: could not decode the image of {photo_id}: {reason}")
    context.log.info(
        f"image_embeddings: {encoded} encoded ({throughput:.1f} img/s), {len(failures)} failed, "
        f"{vectors_total} vectors in the run's buckets"
    )
    return MaterializeResult(
        metadata={
            "dagster/row_count": vectors_total,
            "dagster/column_schema": TableSchema(columns=[TableColumn(f.name, str(f.type)) for f in schema]),
            "encoded": encoded,
            "skipped_up_to_date": total_stored - total_todo,
            "decode_failures": len(failures),
            "decode_failure_examples": MetadataValue.md(_failures_md(failures)),
            "dimension": dim,
            "model": model_id,
            "device": encoder.device,
            "precision": encoder.precision,
            "throughput_img_per_s": round(throughput, 1),
            "path": MetadataValue.path(str(settings.embeddings_dir / model_key(model_id))),
        }
    )


@asset_check(
    asset=image_embeddings,
    name=VECTORS_VALID_CHECK,
    blocking=True,
    partitions_def=photo_buckets,
    description="The run's buckets hold one finite unit vector per photo, of the model's dimension and id.",
)
def vectors_valid(context: AssetCheckExecutionContext, settings: ResourceParam[Settings], clip: ClipResource) -> AssetCheckResult:
    """Read back every chunk of the run's buckets and check dimension, norm, NaN, model id and duplicates."""
    encoder = clip.get()
    model_id, dim = encoder.image_model_id, encoder.dim
    rows, duplicates, wrong_dim, not_finite, not_unit, wrong_model = 0, 0, 0, 0, 0, 0
    for bucket in context.partition_keys:
        table = _read_bucket(_bucket_dir(settings, model_id, bucket))
        if table is None:
            continue
        rows += len(table)
        duplicates += len(table) - len(set(table.column("photo_id").to_pylist()))
        wrong_model += len(table) - table.column("model_id").to_pylist().count(model_id)
        if table.schema.field("vector").type.list_size != dim:
            wrong_dim += len(table)
            continue
        vectors = _vectors(table)
        finite = np.isfinite(vectors).all(axis=1)
        not_finite += int((~finite).sum())
        norms = np.linalg.norm(vectors[finite], axis=1)
        not_unit += int((np.abs(norms - 1.0) > _NORM_TOLERANCE).sum())
    problems = {
        "duplicate_photo_ids": duplicates,
        "wrong_dimension": wrong_dim,
        "nan_or_inf": not_finite,
        "not_unit_norm": not_unit,
        "wrong_model_id": wrong_model,
    }
    bad = {name: count for name, count in problems.items() if count}
    return AssetCheckResult(
        passed=not bad,
        metadata={"vectors": rows, "dimension": dim, **problems},
        description=None if not bad else (
            f"invalid vectors for {model_id}: {bad}: delete {settings.embeddings_dir / model_key(model_id)} "
            "for these buckets and re-materialize image_embeddings"
        ),
    )
