"""Near-duplicate grouping (resources/vectors/duplicates.py): the blocked grouping against brute force, the table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.sparse.csgraph import connected_components

from resources.vectors import duplicates
from resources.vectors.duplicates import component_roots, group_table, select_vectors
from tests.pipeline import catalog_frame


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labelings split the rows into the same groups."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_blocked_grouping_equals_brute_force_across_tiles_and_merges(monkeypatch):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((300, 16))
    # Planted: exact copies far apart (different tiles), a tight cluster, and a chain whose
    # ends are below the threshold but join through the middle link.
    vectors[250] = vectors[3]
    vectors[40:45] = vectors[40] + 0.02 * rng.standard_normal((5, 16))
    base, step = rng.standard_normal(16), rng.standard_normal(16)
    base, step = base / np.linalg.norm(base), step / np.linalg.norm(step)
    vectors[100], vectors[200], vectors[299] = base, base + 0.35 * step, base + 0.7 * step
    vectors = _unit(vectors)
    assert vectors[100] @ vectors[299] < 0.94 <= min(vectors[100] @ vectors[200], vectors[200] @ vectors[299])

    monkeypatch.setattr(duplicates, "MAX_PENDING_LINKS", 3)
    roots = component_roots(vectors, 0.94, tile=32)
    _, expected = connected_components(vectors @ vectors.T >= 0.94, directed=False)
    assert _same_partition(roots, expected)
    assert roots[250] == roots[3] == 3
    assert roots[100] == roots[200] == roots[299] == 100
    assert len(set(roots[40:45].tolist())) == 1
    # Unrelated random 16-d vectors stay alone.
    assert np.bincount(roots).max() <= 5
    assert (np.bincount(roots, minlength=300)[roots] == 1).sum() == 300 - 2 - 5 - 3


def test_select_vectors_counts_what_it_leaves_out():
    vectors = _unit(np.random.default_rng(0).standard_normal((4, 8)))
    vectors[1] = np.nan
    vectors[2] = 0
    used = select_vectors(["a", "b", "c", "gone"], vectors * 3, ["a", "b", "c"])
    assert used.photo_ids.tolist() == ["a"]
    assert used.skipped_bad_vector == 2
    assert used.skipped_not_in_catalog == 1
    assert np.linalg.norm(used.vectors[0]) == pytest.approx(1.0)


def test_group_table_picks_the_biggest_then_earliest_photo_as_representative():
    rng = np.random.default_rng(1)
    vectors = _unit(rng.standard_normal((6, 32)))
    vectors[1] = vectors[0]
    vectors[2] = _unit(vectors[0:1] + 0.05 * rng.standard_normal((1, 32)))[0]
    vectors[4] = vectors[3]
    ids = ["a", "b", "c", "d", "e", "f"]
    catalog = catalog_frame(ids)
    catalog.loc[catalog.photo_id == "c", "photo_width"] = 4000
    catalog.loc[catalog.photo_id == "e", "photo_submitted_at"] = pd.Timestamp("2015-05-05", tz="UTC")
    used = select_vectors(ids, vectors, ids)
    table = group_table(used, component_roots(used.vectors, 0.94), catalog)

    assert table["photo_id"].tolist() == ["c", "a", "b", "e", "d"]
    assert table["group_id"].tolist() == [1, 1, 1, 2, 2]
    assert table["group_size"].tolist() == [3, 3, 3, 2, 2]
    assert table["representative"].tolist() == ["c", "c", "c", "e", "e"]
    assert table["similarity"].iloc[0] == pytest.approx(1.0)
    assert table.set_index("photo_id").loc["a", "similarity"] == pytest.approx(float(vectors[0] @ vectors[2]), abs=1e-5)
    assert "f" not in set(table["photo_id"])


def test_group_table_with_no_duplicates_is_empty_but_typed():
    vectors = np.eye(3, dtype=np.float32)
    used = select_vectors(["a", "b", "c"], vectors, ["a", "b", "c"])
    table = group_table(used, component_roots(used.vectors, 0.94), catalog_frame(["a", "b", "c"]))
    assert table.empty
    assert list(table.columns) == list(duplicates.GROUP_COLUMNS)
