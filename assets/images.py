"""The ``images`` asset: every catalog photo fetched into the image store, bucket by bucket.

A run fetches only what is missing or whose URL changed, resumes a killed run from its
journal, and records each failure with its reason; the ``failure_share`` check stops the
downstream steps when too many photos could not be stored.
"""

import base64
import io
import time
from collections import Counter

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Backoff,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    RetryPolicy,
    TableColumn,
    TableSchema,
    asset,
)
from PIL import Image

from assets.partitions import BUCKETS_BACKFILL_POLICY, photo_buckets
from resources.config import Settings
from resources.errors import ImageSearchError
from resources.images.downloader import Downloader, FetchResult, is_transient
from resources.images.image_store import LEDGER_SCHEMA, MANIFEST_SCHEMA, ImageStore
from resources.images.pictures import open_image
from resources.release.catalog import read_catalog
from resources.storage.files import sweep
from resources.storage.locks import holds_store_locks

FAILURE_SHARE_CHECK = "failure_share"
CONTACT_SHEET_SIZE = 4
THUMBNAIL_PX = 56


def _photo_urls(settings: Settings, buckets: list[str]) -> pd.DataFrame:
    """photo_id, url and bucket of the catalog rows in ``buckets``, one row per photo_id."""
    catalog = read_catalog(settings, ["photo_id", "photo_image_url", "bucket"], buckets)
    catalog = catalog.rename(columns={"photo_image_url": "url"})
    catalog["url"] = catalog["url"].fillna("").astype(str).str.strip()
    return catalog


def _plan_fetches(store: ImageStore, rows: pd.DataFrame, bucket: str):
    """Split a bucket's catalog rows into (manifest kept, ledger carried, rows to fetch, stale ids).

    Stale ids are stored photos that left the catalog or whose URL changed: their files
    no longer show the catalog's photo and are deleted before fetching.
    """
    manifest = store.read_manifest(bucket)
    ledger = store.read_ledger(bucket)
    wanted = dict(zip(rows["photo_id"], rows["url"]))
    same_url = manifest["photo_id"].map(wanted) == manifest["url"]
    kept = manifest[same_url]
    stale = set(manifest["photo_id"]) - set(kept["photo_id"])
    permanent = ledger[
        (ledger["photo_id"].map(wanted) == ledger["url"]) & ~ledger["reason"].map(is_transient).astype(bool)
    ]
    done = set(kept["photo_id"]) | set(permanent["photo_id"])
    todo = rows[~rows["photo_id"].isin(done)]
    return kept, permanent, todo, stale


def _contact_sheet(store: ImageStore, photo_ids: list[str]) -> str:
    """A strip of a few stored images as a markdown image (a base64 JPEG of a few KB)."""
    thumbs = []
    for photo_id in photo_ids[:CONTACT_SHEET_SIZE]:
        with open_image(store.path_for(photo_id), draft_to=THUMBNAIL_PX * 2) as image:
            thumbs.append(image.convert("RGB").resize((THUMBNAIL_PX, THUMBNAIL_PX)))
    if not thumbs:
        return "_no images stored_"
    sheet = Image.new("RGB", (THUMBNAIL_PX * len(thumbs), THUMBNAIL_PX), "white")
    for index, thumb in enumerate(thumbs):
        sheet.paste(thumb, (index * THUMBNAIL_PX, 0))
    out = io.BytesIO()
    sheet.save(out, format="JPEG", quality=60)
    encoded = base64.b64encode(out.getvalue()).decode("ascii")
    return f"![{', '.join(photo_ids[:CONTACT_SHEET_SIZE])}](data:image/jpeg;base64,{encoded})"


def _ledger_row(result: FetchResult) -> dict:
    return {
        "photo_id": result.photo_id,
        "url": result.url,
        "reason": result.reason,
        "detail": result.detail,
        "attempts": result.attempts,
        "failed_at": result.finished_at,
    }


def _manifest_row(result: FetchResult) -> dict:
    return {
        "photo_id": result.photo_id,
        "url": result.url,
        "bytes": result.bytes,
        "sha256": result.sha256,
        "width": result.width,
        "height": result.height,
        "stored_at": result.finished_at,
    }


@asset(
    group_name="vectors",
    kinds={"python", "file"},
    partitions_def=photo_buckets,
    backfill_policy=BUCKETS_BACKFILL_POLICY,
    deps=["photo_catalog"],
    retry_policy=RetryPolicy(max_retries=2, delay=10, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS),
    code_version="1",
    pool="image_downloads",
    check_specs=[
        AssetCheckSpec(
            FAILURE_SHARE_CHECK,
            asset="images",
            blocking=True,
            description="At most IMAGE_SEARCH_MAX_DOWNLOAD_FAILURE_SHARE of the catalog's photos failed to download.",
        )
    ],
    description="Every catalog photo as a validated RGB JPEG under images/<bucket>/, failures in images/ledger/.",
)
@holds_store_locks("images")
def images(context: AssetExecutionContext, settings: ResourceParam[Settings]) -> MaterializeResult:
    """Fetch the missing photos of each bucket of the run; record failures; report progress."""
    buckets = list(context.partition_keys)
    try:
        catalog = _photo_urls(settings, buckets)
    except ImageSearchError as exc:
        # A missing catalog or a bad setting will not heal by itself: fail once, clearly.
        raise Failure(description=str(exc), allow_retries=False) from None
    store = ImageStore(settings.images_dir)

    kept, carried, todo, removed = {}, {}, [], 0
    for bucket in buckets:
        # The bucket locks keep out every other writer: any temporary here is a dead run's.
        sweep(store.bucket_dir(bucket), exclusive=True)
        rows = catalog[catalog["bucket"] == bucket]
        kept[bucket], carried[bucket], bucket_todo, stale = _plan_fetches(store, rows, bucket)
        for photo_id in stale:
            store.path_for(photo_id).unlink(missing_ok=True)
        removed += len(stale - set(rows["photo_id"]))
        todo.append(bucket_todo)
    todo_rows = pd.concat(todo, ignore_index=True)
    skipped = sum(len(frame) for frame in kept.values())
    context.log.info(
        f"images: {len(catalog)} photos in {len(buckets)} bucket(s): {skipped} already stored, "
        f"{sum(len(frame) for frame in carried.values())} known permanent failures, {len(todo_rows)} to fetch"
    )

    bucket_of = dict(zip(todo_rows["photo_id"], todo_rows["bucket"]))
    new_rows: dict[str, list[dict]] = {bucket: [] for bucket in buckets}
    new_failures: dict[str, list[dict]] = {bucket: [] for bucket in buckets}
    fetched: list[str] = []
    started = time.monotonic()
    with Downloader.from_settings(settings) as downloader:
        results = downloader.fetch_all(
            zip(todo_rows["photo_id"], todo_rows["url"]),
            total=len(todo_rows),
            progress=lambda progress: context.log.info(f"images: {progress.describe()}"),
        )
        for result in results:
            bucket = bucket_of[result.photo_id]
            if result.ok:
                row = _manifest_row(result)
                store.append_journal(bucket, row)
                new_rows[bucket].append(row)
                fetched.append(result.photo_id)
            else:
                new_failures[bucket].append(_ledger_row(result))
    elapsed = time.monotonic() - started

    failures = []
    for bucket in buckets:
        fresh = pd.DataFrame(new_rows[bucket], columns=MANIFEST_SCHEMA.names)
        store.write_manifest(bucket, pd.concat([kept[bucket], fresh]))
        ledger = pd.concat([carried[bucket], pd.DataFrame(new_failures[bucket], columns=LEDGER_SCHEMA.names)])
        store.write_ledger(bucket, ledger)
        failures.append(ledger)
    ledger_all = pd.concat(failures, ignore_index=True)
    by_reason = dict(Counter(ledger_all["reason"]).most_common())
    stored = skipped + len(fetched)
    share = len(ledger_all) / len(catalog) if len(catalog) else 0.0
    attempted = len(todo_rows)
    throughput = attempted / elapsed if attempted and elapsed > 0 else 0.0
    context.log.info(
        f"images: stored {stored} ({len(fetched)} fetched now, {skipped} already there), "
        f"{len(ledger_all)} failed {by_reason or ''}, {throughput:.1f} photos/s"
    )

    return MaterializeResult(
        metadata={
            "dagster/row_count": stored,
            "dagster/column_schema": TableSchema(
                columns=[TableColumn(field.name, str(field.type)) for field in MANIFEST_SCHEMA]
            ),
            "stored": stored,
            "fetched": len(fetched),
            "skipped_already_stored": skipped,
            "removed_from_catalog": removed,
            "failed": len(ledger_all),
            "failure_share": round(share, 4),
            "failed_by_reason": MetadataValue.json(by_reason),
            "throughput_photos_per_s": round(throughput, 1),
            "ledger": MetadataValue.path(str(store.root / "ledger")),
            "contact_sheet": MetadataValue.md(_contact_sheet(store, fetched or _sample_ids(kept))),
        },
        check_results=[
            AssetCheckResult(
                check_name=FAILURE_SHARE_CHECK,
                passed=share <= settings.max_download_failure_share,
                severity=AssetCheckSeverity.ERROR,
                metadata={
                    "failure_share": round(share, 4),
                    "threshold": settings.max_download_failure_share,
                    "failed": len(ledger_all),
                    "photos": len(catalog),
                },
                description=f"{len(ledger_all)} of {len(catalog)} photos failed ({100 * share:.1f}%)",
            )
        ],
    )


def _sample_ids(kept: dict[str, pd.DataFrame]) -> list[str]:
    """A few stored photo_ids for the contact sheet when this run fetched nothing."""
    ids: list[str] = []
    for frame in kept.values():
        ids.extend(frame["photo_id"].head(CONTACT_SHEET_SIZE - len(ids)))
        if len(ids) >= CONTACT_SHEET_SIZE:
            break
    return ids
