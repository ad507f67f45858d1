"""Hash buckets of photo_ids: the partitions of the per-photo stages.

A photo always lands in the same bucket (a stable hash of its id, see
:func:`resources.image_store.bucket_of`), so the images and embeddings of one bucket can be
fetched, encoded, retried or backfilled without touching the others, and a refresh re-runs
only the buckets whose photos changed.
"""

from __future__ import annotations

from dagster import StaticPartitionsDefinition

from resources.image_store import BUCKET_COUNT, BUCKET_KEYS, bucket_of

photo_buckets = StaticPartitionsDefinition(BUCKET_KEYS)


def photo_bucket(photo_id: str) -> str:
    """The partition key of ``photo_id``."""
    return bucket_of(photo_id, BUCKET_COUNT)
