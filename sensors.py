"""Sensors that keep the index current without anyone watching.

A new release launches ``ingest_release``; a new catalog launches ``update_vectors`` for
the buckets whose photos changed only; the automation sensor moves the index after them;
a new index, or a new saved search, launches ``refresh_saved_searches`` for each search.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
from dagster import (
    AssetKey,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DagsterInstance,
    DefaultSensorStatus,
    DeleteDynamicPartitionsRequest,
    ResourceParam,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.partitions import photo_bucket
from assets.saved_searches import saved_searches_partitions
from jobs import TRIGGER_TAG, ingest_job, saved_searches_job, vectors_job
from resources import http_client
from resources.config import Settings, mask_url
from resources.errors import ImageSearchError
from resources.images.image_store import BUCKET_KEYS
from resources.release.catalog import read_catalog
from resources.saved.store import SavedStore

CATALOG = AssetKey("photo_catalog")
SEARCH_INDEX = AssetKey("search_index")
RELEASE_TAG = "image_search/release"
# The tags a single-run backfill over a partition range carries (what
# `dagster asset materialize --partition-range` sets).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def _digest(parts: list) -> str:
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()[:16]


def release_fingerprint(dataset: str, timeout: float) -> str:
    """A short digest that changes when the release at ``dataset`` changes.

    A local zip: its size and modification time. A folder: the name, size and modification
    time of every file in it (hidden ones left out). A URL: its validators from a ``HEAD``
    request, the same the release download compares (``resources/http_client.py``).
    Nothing is read or downloaded in full.
    """
    if dataset.startswith(("http://", "https://")):
        return _url_fingerprint(dataset, timeout)
    return _path_fingerprint(Path(dataset).expanduser())


def _path_fingerprint(path: Path) -> str:
    if path.is_file():
        stat = path.stat()
        return _digest([path.name, stat.st_size, stat.st_mtime_ns])
    if path.is_dir():
        entries = []
        for file in sorted(path.rglob("*")):
            relative = file.relative_to(path)
            if file.is_file() and not any(part.startswith(".") for part in relative.parts):
                stat = file.stat()
                entries.append([relative.as_posix(), stat.st_size, stat.st_mtime_ns])
        return _digest(entries)
    raise ImageSearchError(
        f"IMAGE_SEARCH_DATASET={path}: no such file or folder; point it at a release zip, a folder of TSV files or a URL"
    )


def _url_fingerprint(url: str, timeout: float) -> str:
    shown = mask_url(url)
    try:
        validators = http_client.head(url, timeout=timeout)
    except http_client.RequestFailed as exc:
        if exc.status is not None:
            raise ImageSearchError(f"IMAGE_SEARCH_DATASET={shown}: the server answered HTTP {exc.status}") from None
        raise ImageSearchError(
            f"IMAGE_SEARCH_DATASET={shown}: HEAD request failed ({exc}); check the address and the network"
        ) from None
    if not validators.known:
        raise ImageSearchError(
            f"IMAGE_SEARCH_DATASET={shown}: the server sends no ETag, Last-Modified or Content-Length, "
            "so a new release cannot be noticed; rely on the refresh schedule"
        )
    return validators.fingerprint()


def _latest_storage_id(instance: DagsterInstance, key: AssetKey) -> int | None:
    records = instance.fetch_materializations(key, limit=1).records
    return records[0].storage_id if records else None


@sensor(
    job=ingest_job,
    minimum_interval_seconds=Settings.env_value("release_poll_seconds"),
    default_status=DefaultSensorStatus.RUNNING,
    description="Launch ingest_release when the configured dataset release changes.",
)
def release_sensor(context: SensorEvaluationContext, settings: ResourceParam[Settings]):
    """Request an ingestion when the release's fingerprint differs from the last one seen.

    On its very first look, with a catalog already built, the sensor takes the release as the
    one that catalog came from and only remembers it, so turning the daemon on after
    ``make demo`` does not ingest the same release twice.
    """
    try:
        fingerprint = release_fingerprint(settings.dataset, settings.download_timeout)
    except ImageSearchError as exc:
        return SkipReason(str(exc))
    previous = context.cursor
    if fingerprint == previous:
        return SkipReason(f"release {fingerprint} unchanged")
    context.update_cursor(fingerprint)
    if previous is None and _latest_storage_id(context.instance, CATALOG) is not None:
        return SkipReason(f"first look: the catalog is built; release {fingerprint} taken as its source")
    context.log.info(f"release changed ({previous} -> {fingerprint}); requesting ingest_release")
    return RunRequest(
        run_key=f"release-{previous}-{fingerprint}",
        tags={TRIGGER_TAG: "new_release", RELEASE_TAG: fingerprint},
    )


def bucket_digests(catalog: pd.DataFrame) -> dict[str, str]:
    """A digest of each bucket's catalog rows (every column), for the buckets that hold photos.

    Any change to a photo (its image URL, a description, its colours) changes its bucket's
    digest, and so does adding or removing a photo.
    """
    rows = catalog.sort_values("photo_id", kind="stable").reset_index(drop=True)
    buckets = rows["bucket"] if "bucket" in rows else rows["photo_id"].map(photo_bucket)
    row_hashes = pd.util.hash_pandas_object(rows.drop(columns=["bucket"], errors="ignore").astype(str), index=False)
    return {
        str(bucket): hashlib.sha256(group.to_numpy().tobytes()).hexdigest()[:16]
        for bucket, group in row_hashes.groupby(buckets.to_numpy())
    }


def bucket_ranges(buckets: list[str]) -> list[tuple[str, str]]:
    """Contiguous ``(first, last)`` runs of ``buckets`` in partition order."""
    positions = sorted(BUCKET_KEYS.index(b) for b in set(buckets))
    ranges: list[tuple[str, str]] = []
    for position in positions:
        if ranges and BUCKET_KEYS.index(ranges[-1][1]) == position - 1:
            ranges[-1] = (ranges[-1][0], BUCKET_KEYS[position])
        else:
            ranges.append((BUCKET_KEYS[position], BUCKET_KEYS[position]))
    return ranges


def requested_buckets(requests: list[RunRequest]) -> list[str]:
    """The buckets ``requests`` cover, in request order: the inverse of :func:`bucket_ranges` over their range tags."""
    buckets: list[str] = []
    for request in requests:
        first, last = (BUCKET_KEYS.index(request.tags[tag]) for tag in (RANGE_START_TAG, RANGE_END_TAG))
        buckets += BUCKET_KEYS[first : last + 1]
    return buckets


@sensor(
    job=vectors_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="After a new photo_catalog, launch update_vectors for the buckets whose photos changed.",
)
def catalog_change_sensor(context: SensorEvaluationContext, settings: ResourceParam[Settings]):
    """Request ``update_vectors`` runs for the buckets whose catalog rows changed.

    The cursor holds the storage id of the last catalog looked at and each bucket's digest.
    With no digests yet, every bucket is requested, unless the index was built after the
    current catalog (the pipeline is up to date: the digests become the baseline).
    """
    latest = _latest_storage_id(context.instance, CATALOG)
    if latest is None:
        return SkipReason("photo_catalog has not been materialized yet")
    state = json.loads(context.cursor) if context.cursor else {}
    if state.get("catalog") == latest:
        return SkipReason("no new photo_catalog materialization")
    try:
        digests = bucket_digests(read_catalog(settings))
    except ImageSearchError as exc:
        return SkipReason(str(exc))
    previous = state.get("buckets")
    if previous is not None:
        changed = [b for b in BUCKET_KEYS if digests.get(b) != previous.get(b)]
    elif (_latest_storage_id(context.instance, SEARCH_INDEX) or -1) > latest:
        changed = []
    else:
        changed = list(BUCKET_KEYS)
    context.update_cursor(json.dumps({"catalog": latest, "buckets": digests}))
    if not changed:
        return SkipReason("the new catalog changed no bucket")
    context.log.info(f"{len(changed)} changed bucket(s): {', '.join(changed)}")
    return [
        RunRequest(
            run_key=f"catalog-{latest}-{first}-{last}",
            tags={RANGE_START_TAG: first, RANGE_END_TAG: last, TRIGGER_TAG: "catalog_change"},
        )
        for first, last in bucket_ranges(changed)
    ]


@sensor(
    job=saved_searches_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Keep one saved_searches partition per saved search; after each new search_index, refresh them all.",
)
def saved_searches_sensor(context: SensorEvaluationContext, settings: ResourceParam[Settings]):
    """Add and remove partitions as searches are saved and removed; request a run per search after a new index.

    The cursor is the storage id of the last search_index materialization acted on. A
    search saved since the last tick gets its first run at once; nothing runs before an index.
    """
    store = SavedStore(settings.home)
    names = set(store.names())
    existing = set(context.instance.get_dynamic_partitions(saved_searches_partitions.name))
    added, removed = sorted(names - existing), sorted(existing - names)
    latest = _latest_storage_id(context.instance, SEARCH_INDEX)
    index_changed = latest is not None and str(latest) != context.cursor
    targets = sorted(names) if index_changed else (added if latest is not None else [])
    requests = [
        RunRequest(
            partition_key=name,
            run_key=f"saved-{latest}-{name}-{_created(store, name)}",
            tags={TRIGGER_TAG: "new_index" if index_changed else "saved_search_added"},
        )
        for name in targets
    ]
    changes = [saved_searches_partitions.build_add_request(added)] if added else []
    changes += [DeleteDynamicPartitionsRequest(saved_searches_partitions.name, removed)] if removed else []
    if not requests and not changes:
        return SkipReason("no saved search added or removed, no new search_index")
    return SensorResult(
        run_requests=requests, dynamic_partitions_requests=changes, cursor=str(latest) if latest is not None else None
    )


def _created(store: SavedStore, name: str) -> str:
    """When ``name`` was saved, so a search removed and saved again under its name runs again; "" if unreadable."""
    try:
        return store.get(name).created_at
    except ImageSearchError:
        return ""


automation_sensor = AutomationConditionSensorDefinition(
    "automation_sensor",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the assets' automation conditions: vectors follow images, the index follows vectors.",
)
