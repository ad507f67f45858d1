"""Hash buckets of photo_ids: the partitions of the per-photo stages.

A photo always lands in the same bucket (a stable hash of its id, see
:func:`resources.images.image_store.bucket_of`), so the images and embeddings of one bucket can be
fetched, encoded, retried or backfilled without touching the others, and a refresh re-runs
only the buckets whose photos changed.

How a backfill over many buckets is cut into runs is :data:`BUCKETS_BACKFILL_POLICY`: all
buckets in one run by default (one process, one model load: the right thing on one
machine), or ``IMAGE_SEARCH_BUCKETS_PER_RUN`` buckets per run, so that a backfill becomes
several runs that the run queue hands to several workers at once (docs/scaling.md).
"""

from __future__ import annotations

from dagster import BackfillPolicy, StaticPartitionsDefinition

from resources.config import Settings
from resources.images.image_store import BUCKET_COUNT, BUCKET_KEYS, bucket_of

photo_buckets = StaticPartitionsDefinition(BUCKET_KEYS)


def buckets_backfill_policy(buckets_per_run: int) -> BackfillPolicy:
    """One run for every bucket, or runs of at most ``buckets_per_run`` buckets each."""
    if buckets_per_run >= BUCKET_COUNT:
        return BackfillPolicy.single_run()
    return BackfillPolicy.multi_run(max_partitions_per_run=buckets_per_run)


#: The backfill policy of the per-bucket stages, read once when the definitions load.
BUCKETS_BACKFILL_POLICY = buckets_backfill_policy(Settings.env_value("buckets_per_run"))


def photo_bucket(photo_id: str) -> str:
    """The partition key of ``photo_id``."""
    return bucket_of(photo_id, BUCKET_COUNT)
