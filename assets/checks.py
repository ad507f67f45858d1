"""Cross-stage checks: what one stage wrote agrees with what the stages before it wrote.

A fault between stages (a missing vector, an index that dropped or duplicated photos, rows
shuffled against their ids) would otherwise go unseen until a search misses a photo.
"""

import numpy as np
from dagster import AssetCheckExecutionContext, AssetCheckResult, MetadataValue, ResourceParam, asset_check

from assets.embeddings import image_embeddings
from assets.partitions import photo_buckets
from assets.search_index import search_index
from resources.config import Settings
from resources.images.image_store import ImageStore
from resources.index import open_backend
from resources.models.registry import serving_settings
from resources.release.catalog import read_catalog
from resources.vectors.vector_store import VectorStore

VECTORS_COVER_IMAGES_CHECK = "vectors_cover_images"
INDEX_MATCHES_CATALOG_CHECK = "index_matches_catalog"
INDEX_SELF_RETRIEVAL_CHECK = "index_self_retrieval"
#: Photos searched by their own vector in the self-retrieval probe.
PROBE_SIZE = 32
#: Photos looked up one by one in the membership check (the count covers the rest).
MEMBERSHIP_SAMPLE = 256
#: Ids listed in a failed check's description (the counts say how many there are in all).
SHOWN_IDS = 5
#: A hit scoring at least this against the probe is as good as the probe itself (an exact duplicate).
SAME_VECTOR = 0.9999


def _shown(ids) -> str:
    ids = sorted(ids)
    more = f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
    return ", ".join(ids[:SHOWN_IDS]) + more


@asset_check(
    asset=image_embeddings,
    name=VECTORS_COVER_IMAGES_CHECK,
    blocking=True,
    partitions_def=photo_buckets,
    description="Every stored image of a catalog photo in the run's buckets has a vector for the current model.",
)
def vectors_cover_images(context: AssetCheckExecutionContext, settings: ResourceParam[Settings]) -> AssetCheckResult:
    """Compare, bucket by bucket, the image store's manifest with the vectors written."""
    buckets = sorted(set(context.partition_keys))
    catalog = read_catalog(settings, ["photo_id", "bucket"], buckets)
    store = ImageStore(settings.images_dir)
    stored = set().union(*(set(store.read_manifest(bucket)["photo_id"]) for bucket in buckets))
    stored &= set(catalog["photo_id"])
    with_vectors, _ = VectorStore.for_settings(settings).join(catalog, buckets)
    vector_ids = with_vectors["photo_id"].tolist()
    missing = stored - set(vector_ids)
    return AssetCheckResult(
        passed=not missing,
        metadata={
            "buckets": len(buckets),
            "catalog_photos": len(catalog),
            "stored_images": len(stored),
            "vectors": len(vector_ids),
            "stored_without_vector": len(missing),
        },
        description=None
        if not missing
        else (
            f"{len(missing)} stored image(s) have no {settings.image_model} vector ({_shown(missing)}): "
            "re-materialize image_embeddings for these buckets"
        ),
    )


@asset_check(
    asset=search_index,
    name=INDEX_MATCHES_CATALOG_CHECK,
    blocking=True,
    description="The published index holds exactly the catalog's photos that have a vector.",
)
def index_matches_catalog(settings: ResourceParam[Settings]) -> AssetCheckResult:
    """Compare the index's count with catalog ∩ vectors and look a sample up; report every stage's count."""
    settings = serving_settings(settings)
    catalog = read_catalog(settings, ["photo_id", "bucket"])
    with_vectors, _ = VectorStore.for_settings(settings).join(catalog)
    vector_ids = with_vectors["photo_id"].tolist()
    store = ImageStore(settings.images_dir)
    buckets = sorted(set(catalog["bucket"]))
    stored = sum(len(store.read_manifest(bucket)) for bucket in buckets)
    failed = sum(len(store.read_ledger(bucket)) for bucket in buckets)
    backend = open_backend(settings)
    indexed = backend.count()
    sample = np.random.default_rng(0).permutation(vector_ids)[:MEMBERSHIP_SAMPLE]
    absent = [str(photo_id) for photo_id in sample if backend.get(str(photo_id)) is None]
    passed = indexed == len(vector_ids) and not absent
    return AssetCheckResult(
        passed=passed,
        metadata={
            "catalog_photos": len(catalog),
            "stored_images": stored,
            "failed_downloads": failed,
            "vectors": len(vector_ids),
            "indexed": indexed,
            "looked_up": len(sample),
            "missing_from_index": len(absent),
            "backend": MetadataValue.text(backend.engine),
        },
        description=None
        if passed
        else (
            f"the index holds {indexed} photos where catalog ∩ vectors has {len(vector_ids)}"
            + (f"; missing: {_shown(absent)}" if absent else "")
            + ": re-materialize search_index"
        ),
    )


@asset_check(
    asset=search_index,
    name=INDEX_SELF_RETRIEVAL_CHECK,
    blocking=True,
    description=f"Up to {PROBE_SIZE} indexed photos, searched by their own vector, each come back first.",
)
def index_self_retrieval(settings: ResourceParam[Settings]) -> AssetCheckResult:
    """Probe the published index with a fixed sample of its photos' own vectors."""
    settings = serving_settings(settings)
    with_vectors, vectors = VectorStore.for_settings(settings).join(read_catalog(settings, ["photo_id"]))
    photo_ids = with_vectors["photo_id"].tolist()
    if not photo_ids:
        return AssetCheckResult(passed=True, metadata={"probed": 0}, description="nothing indexed to probe")
    rows = np.random.default_rng(0).choice(len(photo_ids), size=min(PROBE_SIZE, len(photo_ids)), replace=False)
    backend = open_backend(settings)
    misses = []
    for row in rows:
        hits = backend.knn(vectors[row], k=1)
        found = bool(hits) and (hits[0].photo_id == photo_ids[row] or hits[0].score >= SAME_VECTOR)
        if not found:
            misses.append(photo_ids[row])
    return AssetCheckResult(
        passed=not misses,
        metadata={"probed": len(rows), "not_first": len(misses)},
        description=None
        if not misses
        else (
            f"{len(misses)} of {len(rows)} photos were not their own best match ({_shown(misses)}): "
            "the index's vectors do not match its ids; rebuild search_index"
        ),
    )
