"""Near-duplicate grouping: photos whose image vectors are nearly the same picture.

Grouping bursts, crops and re-uploads lets a search show one result per group. Pairs come
from an exact, tiled matrix product (memory bounded by one tile), groups are connected
components, and only photos in a group of two or more are stored. The ``near_duplicates``
asset (``assets/duplicates.py``) runs this over the stored image vectors.
"""

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from resources.storage.files import sweep, write_parquet

#: Rows (and columns) of one similarity tile: 2048 x 2048 float32 is 16 MiB.
TILE = 2048
#: Links buffered before they are merged into the components.
MAX_PENDING_LINKS = 2_000_000

#: Column -> (type, meaning) of the stored table.
GROUP_COLUMNS = {
    "photo_id": ("string", "the photo"),
    "group_id": ("int64", "the group, numbered from 1 by falling size"),
    "group_size": ("int64", "photos in the group"),
    "representative": ("string", "the group's photo with the most pixels, then the earliest submitted"),
    "similarity": ("float32", "cosine similarity of the photo's vector to the representative's"),
}


@dataclass
class VectorsUsed:
    """The vectors grouping runs over, and what was left out and why."""

    photo_ids: np.ndarray
    vectors: np.ndarray
    skipped_not_in_catalog: int
    skipped_bad_vector: int


def select_vectors(photo_ids, vectors: np.ndarray, catalog_ids) -> VectorsUsed:
    """Keep the vectors of catalog photos that are finite and non-zero, renormalised to unit length.

    Vectors of photos no longer in the catalog (a newer release dropped them) and broken
    vectors (NaN, zero) are counted, not grouped.
    """
    photo_ids = np.asarray(photo_ids, dtype=object)
    vectors = np.asarray(vectors, dtype=np.float32)
    in_catalog = pd.Index(catalog_ids).get_indexer(photo_ids) >= 0
    norms = np.linalg.norm(vectors, axis=1) if len(vectors) else np.zeros(0, dtype=np.float32)
    good = np.isfinite(norms) & (norms > 0)
    keep = in_catalog & good
    unit = vectors[keep] / norms[keep, None]
    return VectorsUsed(
        photo_ids=photo_ids[keep],
        vectors=np.ascontiguousarray(unit, dtype=np.float32),
        skipped_not_in_catalog=int((~in_catalog).sum()),
        skipped_bad_vector=int((in_catalog & ~good).sum()),
    )


def _merge(roots: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Merge the components of each link ``a[i]``-``b[i]`` into ``roots`` in place.

    ``roots[i]`` is the smallest index of ``i``'s component. Only the components the links
    touch are rebuilt, as one small graph, so a merge costs the links plus one pass over ``roots``.
    """
    touched, inverse = np.unique(np.concatenate([roots[a], roots[b]]), return_inverse=True)
    half = len(a)
    graph = coo_matrix(
        (np.ones(half, dtype=np.int8), (inverse[:half], inverse[half:])), shape=(len(touched), len(touched))
    )
    _, component = connected_components(graph, directed=False)
    new_root = np.full(component.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(new_root, component, touched)
    remap = np.arange(len(roots), dtype=np.int64)
    remap[touched] = new_root[component]
    roots[:] = remap[roots]


def component_roots(vectors: np.ndarray, threshold: float, tile: int = TILE, log=None) -> np.ndarray:
    """For unit vectors, the smallest index of each row's component of links with cosine >= ``threshold``.

    Every pair is compared exactly once, tile by tile (upper triangle only), so the answer
    is exact and memory is bounded by one ``tile`` x ``tile`` block plus buffered links.
    """
    n = len(vectors)
    roots = np.arange(n, dtype=np.int64)
    pending_a: list[np.ndarray] = []
    pending_b: list[np.ndarray] = []
    pending = 0
    bands = (n + tile - 1) // tile
    started = time.monotonic()
    for band, i0 in enumerate(range(0, n, tile)):
        rows = vectors[i0 : i0 + tile]
        for j0 in range(i0, n, tile):
            sims = rows @ vectors[j0 : j0 + tile].T
            r, c = np.nonzero(sims >= threshold)
            if j0 == i0:
                upper = r < c
                r, c = r[upper], c[upper]
            if len(r):
                pending_a.append(r + i0)
                pending_b.append(c + j0)
                pending += len(r)
            if pending >= MAX_PENDING_LINKS:
                _merge(roots, np.concatenate(pending_a), np.concatenate(pending_b))
                pending_a, pending_b, pending = [], [], 0
        if log is not None:
            log(f"near_duplicates: compared band {band + 1}/{bands} ({time.monotonic() - started:.1f} s)")
    if pending:
        _merge(roots, np.concatenate(pending_a), np.concatenate(pending_b))
    return roots


def group_table(used: VectorsUsed, roots: np.ndarray, catalog: pd.DataFrame) -> pd.DataFrame:
    """One row per photo in a group of two or more (see :data:`GROUP_COLUMNS`), ordered by group."""
    sizes = np.bincount(roots, minlength=len(roots))
    members = np.flatnonzero(sizes[roots] >= 2)
    if len(members) == 0:
        return pd.DataFrame({name: pd.Series(dtype=kind) for name, (kind, _) in GROUP_COLUMNS.items()})
    info = catalog.set_index("photo_id").reindex(used.photo_ids[members])
    pixels = pd.to_numeric(info["photo_width"], errors="coerce").fillna(0).to_numpy(dtype=np.float64) * pd.to_numeric(
        info["photo_height"], errors="coerce"
    ).fillna(0).to_numpy(dtype=np.float64)
    submitted = pd.to_datetime(info["photo_submitted_at"], utc=True, errors="coerce")
    frame = pd.DataFrame(
        {
            "row": members,
            "photo_id": used.photo_ids[members].astype(str),
            "root": roots[members],
            "group_size": sizes[roots[members]],
            "pixels": pixels,
            "submitted": submitted.to_numpy(),
        }
    )
    ranked = frame.sort_values(["root", "pixels", "submitted", "photo_id"], ascending=[True, False, True, True])
    leaders = ranked.drop_duplicates("root").set_index("root")
    frame["representative"] = leaders["photo_id"].reindex(frame["root"]).to_numpy()
    leader_rows = leaders["row"].reindex(frame["root"]).to_numpy()
    frame["similarity"] = np.einsum("ij,ij->i", used.vectors[frame["row"].to_numpy()], used.vectors[leader_rows]).clip(
        -1, 1
    )
    order = leaders.reset_index().sort_values(["group_size", "photo_id"], ascending=[False, True])
    group_ids = pd.Series(np.arange(1, len(order) + 1), index=order["root"].to_numpy())
    frame["group_id"] = group_ids.reindex(frame["root"]).to_numpy()
    frame["is_rep"] = frame["photo_id"] == frame["representative"]
    frame = frame.sort_values(["group_id", "is_rep", "photo_id"], ascending=[True, False, True])
    types = {name: kind for name, (kind, _) in GROUP_COLUMNS.items()}
    return frame[list(GROUP_COLUMNS)].astype(types).reset_index(drop=True)


def write_groups(table: pd.DataFrame, path: Path, threshold: float, image_model: str) -> None:
    """Write the groups to ``path`` atomically, with the threshold and model in the file's metadata."""
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata(
        {
            **(arrow.schema.metadata or {}),
            b"image_search.threshold": str(threshold).encode(),
            b"image_search.image_model": image_model.encode(),
            b"image_search.built_at": dt.datetime.now(dt.timezone.utc).isoformat().encode(),
        }
    )
    sweep(path.parent)
    write_parquet(path, arrow)
