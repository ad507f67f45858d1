"""The ``image_embeddings`` asset: one unit CLIP vector per stored image, bucket by bucket.

A run encodes only the photos of its buckets whose stored image has no vector for the
current model yet, changed since, or whose vector came from a runtime the agreement gate
did not accept; storage is :mod:`resources.vectors.vector_store`, the runtime and its gate
:mod:`resources.encoder.selection`.
"""

import hashlib
import time

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
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
from assets.metadata import as_table
from assets.partitions import BUCKETS_BACKFILL_POLICY, photo_buckets
from resources.config import Settings
from resources.dagster_resources import ClipResource
from resources.encoder.gate import MIN_COSINE, MIN_TOP10_OVERLAP
from resources.errors import ImageSearchError
from resources.images.image_store import ImageStore
from resources.release.catalog import read_catalog
from resources.storage.files import sweep
from resources.storage.locks import holds_store_locks
from resources.vectors.vector_store import ChunkWriter, VectorStore, chunk_schema, vectors_of

#: Seconds between progress lines in the log.
PROGRESS_EVERY_S = 10.0
#: Failed files listed in the metadata (the count covers the rest).
SHOWN_FAILURES = 10
VECTORS_VALID_CHECK = "vectors_valid"
RUNTIME_GATE_CHECK = "runtime_agreement"
#: dagster-celery's step tag naming the Celery queue (dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG).
CELERY_QUEUE_TAG = "dagster-celery/queue"
#: The Celery queue of the encoding steps, named after their pool.
ENCODER_QUEUE = "clip_model"
_NORM_TOLERANCE = 1e-3


def _encode(encoder, todo: list[tuple], writer: ChunkWriter, log) -> tuple[int, list[tuple[str, str]]]:
    """Encode ``todo`` (bucket, photo_id, path, bytes, mtime) into ``writer``, logging progress.

    One stream over every bucket keeps the model's batches full; the writer cuts it into
    chunks per bucket (the stream is ordered by bucket). Returns the vectors encoded and the
    (photo_id, reason) of the files that failed.
    """
    encoded, failures, started, last_log = 0, [], time.monotonic(), time.monotonic()
    for batch in encoder.encode_image_files([item[2] for item in todo]):
        for position, vector in zip(batch.indices, batch.vectors):
            bucket, photo_id, _, size, mtime = todo[position]
            writer.add(bucket, photo_id, vector, size, mtime)
        failures.extend((todo[position][1], reason) for position, reason in batch.failures)
        encoded += len(batch.indices)
        now = time.monotonic()
        if now - last_log >= PROGRESS_EVERY_S:
            rate = encoded / (now - started)
            eta = (len(todo) - encoded - len(failures)) / rate if rate else float("nan")
            log.info(
                f"image_embeddings: {encoded}/{len(todo)} encoded, {len(failures)} failed, "
                f"{rate:.1f} img/s, ETA {eta:.0f} s"
            )
            last_log = now
    writer.flush()
    return encoded, failures


@asset(
    group_name="vectors",
    kinds={"pytorch", "parquet"},
    partitions_def=photo_buckets,
    backfill_policy=BUCKETS_BACKFILL_POLICY,
    deps=["photo_catalog", "images"],
    code_version="1",
    pool="clip_model",
    # On the Celery executor (deploy/celery) the pool caps encoders across all machines; their
    # own queue, served on each machine by one worker of concurrency 1, caps them per machine.
    op_tags={CELERY_QUEUE_TAG: ENCODER_QUEUE},
    description="One unit CLIP vector per stored image, as Parquet chunks under embeddings/<model key>/<bucket>/.",
    automation_condition=FOLLOW_CHECKED_PARENTS,
    check_specs=[
        AssetCheckSpec(
            RUNTIME_GATE_CHECK,
            asset="image_embeddings",
            partitions_def=photo_buckets,
            description=(
                "The image runtime's vectors agree with PyTorch fp32's on held-out stored photos "
                f"(min cosine >= {MIN_COSINE}, top-10 neighbour overlap >= {MIN_TOP10_OVERLAP}); else PyTorch encodes."
            ),
        )
    ],
)
@holds_store_locks("embeddings")
def image_embeddings(
    context: AssetExecutionContext, settings: ResourceParam[Settings], clip: ClipResource
) -> MaterializeResult:
    """Encode the stored images of each bucket of the run that lack a current vector; resume after a crash."""
    buckets = list(context.partition_keys)
    try:
        catalog = read_catalog(settings, ["photo_id", "bucket"], buckets)
        encoder = clip.get()
    except ImageSearchError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    model_id = encoder.image_model_id
    store = VectorStore(settings.embeddings_dir, model_id)
    images = ImageStore(settings.images_dir)
    report, plans = _plan(settings, encoder, store, images, catalog, buckets)
    total_stored = sum(len(plan.stored) for plan in plans.values())
    total_todo = sum(len(plan.todo) for plan in plans.values())
    context.log.info(
        f"image_embeddings: {total_stored} stored images in {len(buckets)} bucket(s), {total_todo} to encode "
        f"with {model_id} on {encoder.device}, runtime {'/'.join(encoder.runtime_label)}"
    )

    try:
        dim = encoder.dim
    except ImageSearchError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    for bucket in buckets:
        # The bucket locks keep out every other writer: any temporary here is a dead run's.
        sweep(store.bucket_dir(bucket), exclusive=True)

    todo = [(bucket, *item) for bucket in buckets for item in plans[bucket].todo]
    started = time.monotonic()
    encoded, failures = _encode(
        encoder, todo, store.writer(dim, encoder.runtime_label, encoder.model_hash), context.log
    )
    vectors_total = sum(store.compact(bucket, plans[bucket].stored, dim) for bucket in buckets)
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
            "dagster/column_schema": TableSchema(columns=[TableColumn(f.name, str(f.type)) for f in chunk_schema(dim)]),
            "encoded": encoded,
            "skipped_up_to_date": total_stored - total_todo,
            "reencoded_for_runtime": sum(plan.other_runtime for plan in plans.values()),
            "reencoded_for_model_change": sum(plan.other_model for plan in plans.values()),
            "decode_failures": len(failures),
            "decode_failure_examples": as_table(
                pd.DataFrame(failures[:SHOWN_FAILURES], columns=["photo_id", "reason"])
            ),
            "dimension": dim,
            "model": model_id,
            "device": encoder.device,
            "precision": encoder.precision,
            "runtime": encoder.runtime_label[0],
            "runtime_precision": encoder.runtime_label[1],
            **_gate_metadata(report),
            "throughput_img_per_s": round(throughput, 1),
            "path": MetadataValue.path(str(store.root)),
        },
        check_results=[_gate_check(report, encoder.runtime_label)],
    )


def _plan(settings: Settings, encoder, store: VectorStore, images: ImageStore, catalog: pd.DataFrame, buckets: list):
    """Pick the image runtime (the gate's report, if one ran) and plan each bucket: what lacks an accepted vector."""
    try:
        report = encoder.select_image_runtime(
            _runtime_sample(settings, images), settings.runtime_gate_images, settings.runtime_calibration_images
        )
        accepted = encoder.agreeing_runtimes()
    except ImageSearchError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    plans = {
        bucket: store.plan_encoding(
            bucket,
            images,
            catalog.loc[catalog["bucket"] == bucket, "photo_id"].tolist(),
            accepts=lambda made_by: made_by[0] == "torch" or made_by in accepted,
            model_hash=encoder.model_hash,
        )
        for bucket in buckets
    }
    return report, plans


def _runtime_sample(settings: Settings, images: ImageStore) -> list[str]:
    """Stored photos of the whole catalog to calibrate and gate a faster runtime on, in a fixed pseudo-random order.

    Enough for both the held-out sample and the calibration set; the same photos on every
    run, so a rebuild after a model change sees the same sample.
    """
    wanted = settings.runtime_gate_images + settings.runtime_calibration_images
    ids = sorted(read_catalog(settings, ["photo_id"])["photo_id"], key=lambda i: hashlib.sha256(i.encode()).digest())
    paths = []
    for photo_id in ids:
        if (path := images.local_path(photo_id)) is not None:
            paths.append(str(path))
            if len(paths) == wanted:
                break
    return paths


def _gate_metadata(report) -> dict:
    """The gate's figures and verdict as metadata (PyTorch asked for: no gate)."""
    if report is None:
        return {"gate_verdict": "not run: IMAGE_SEARCH_RUNTIME=torch"}
    return {
        "gate_runtime": f"{report.runtime}/{report.precision}",
        "gate_verdict": "passed" if report.passed else "failed: PyTorch encodes",
        "gate_reason": report.reason,
        "gate_sample": report.sample,
        "gate_cosine_min": report.cosine_min,
        "gate_cosine_mean": report.cosine_mean,
        "gate_top10_overlap": report.top10_overlap,
        "gate_model_hash": report.model_hash,
    }


def _gate_check(report, runtime_label: tuple[str, str]) -> AssetCheckResult:
    """The ``runtime_agreement`` check: passed unless a faster runtime failed the gate (PyTorch then encoded)."""
    return AssetCheckResult(
        check_name=RUNTIME_GATE_CHECK,
        passed=report is None or report.passed,
        severity=AssetCheckSeverity.WARN,
        metadata={"runtime": "/".join(runtime_label), **_gate_metadata(report)},
        description=None if report is None or report.passed else f"{report.runtime}/{report.precision} {report.reason}",
    )


@asset_check(
    asset=image_embeddings,
    name=VECTORS_VALID_CHECK,
    blocking=True,
    partitions_def=photo_buckets,
    description="The run's buckets hold one finite unit vector per photo, of the model's dimension and id.",
)
def vectors_valid(context: AssetCheckExecutionContext, settings: ResourceParam[Settings]) -> AssetCheckResult:
    """Read back every chunk of the run's buckets and check dimension, norm, NaN, model id and duplicates.

    The expected dimension is the newest chunk's (written by the current model), so the
    check reads vectors only and never loads the model.
    """
    store = VectorStore.for_settings(settings)
    model_id, dim = store.model_id, store.dimension()
    rows, duplicates, wrong_dim, not_finite, not_unit, wrong_model = 0, 0, 0, 0, 0, 0
    for bucket in context.partition_keys:
        table = store.read_bucket(bucket)
        if table is None:
            continue
        rows += len(table)
        duplicates += len(table) - len(set(table.column("photo_id").to_pylist()))
        wrong_model += len(table) - table.column("model_id").to_pylist().count(model_id)
        if table.schema.field("vector").type.list_size != dim:
            wrong_dim += len(table)
            continue
        vectors = vectors_of(table)
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
        metadata={"vectors": rows, "dimension": dim or 0, **problems},
        description=None
        if not bad
        else (
            f"invalid vectors for {model_id}: {bad}: delete {store.root} "
            "for these buckets and re-materialize image_embeddings"
        ),
    )
