"""Near-duplicate groups end to end: the asset on a sample release, its check, collapsing in search and the CLI."""

from __future__ import annotations

import pandas as pd
import pytest

from assets.duplicates import near_duplicates, near_duplicates_no_giant_group
from resources.dagster_resources import ClipResource, SettingsResource
from tests.pipeline import catalog_frame, copy_home, write_groups

#: Above the closest pair of distinct pictures the tiny random model produces on the sample
#: release (0.9998), below the 1.0 of byte-identical images.
EXACT_THRESHOLD = "0.99999"


@pytest.fixture(scope="module")
def duplicates_home(tmp_path_factory, search_home, tiny_models, sample_release_info):
    """A copy of the session's ingested home whose store holds byte-identical copies, with real ``image_embeddings``.

    The sample release also plants 3 near-copies (brightened, cropped, re-encoded), but
    the tiny CLIP model has random weights: it maps distinct pictures of similar colour as
    close as those near-copies (cosine up to 0.9998 against 0.991-0.998), so no threshold
    can separate them and the test does not pretend to. What any model must group is an
    identical picture, so the test overwrites stored images with exact copies: photo 1 and
    photo 2 become copies of photo 0, photo 4 a copy of photo 3 (photos that are not
    planted copies or their originals).
    """
    import shutil

    from dagster import DagsterInstance, materialize

    from assets.embeddings import image_embeddings
    from resources.images.image_store import ImageStore

    home = copy_home(tmp_path_factory, search_home, "dup_home", ("tables", "catalog", "images"))
    planted = {pid for pair in sample_release_info["duplicates"] for pid in pair}
    ids = [p for p in sample_release_info["photo_ids"] if p not in planted][:5]
    store = ImageStore(home / "images")
    for source, copy in ((0, 1), (0, 2), (3, 4)):
        shutil.copyfile(store.path_for(ids[source]), store.path_for(ids[copy]))
    clip, text = (str(p) for p in tiny_models)
    resource = SettingsResource(home=str(home), image_model=clip, text_model=text)
    instance = DagsterInstance.ephemeral()
    materialize(
        [image_embeddings],
        resources={"settings": resource, "clip": ClipResource(settings=resource)},
        instance=instance,
        tags={"dagster/asset_partition_range_start": "b00", "dagster/asset_partition_range_end": "b63"},
    )
    return {"home": home, "resource": resource, "instance": instance, "copies": [set(ids[:3]), set(ids[3:5])]}


def _run(env: dict, threshold: str | None):
    from dagster import materialize

    with pytest.MonkeyPatch.context() as mp:
        if threshold is None:
            mp.delenv("IMAGE_SEARCH_DUPLICATE_THRESHOLD", raising=False)
        else:
            mp.setenv("IMAGE_SEARCH_DUPLICATE_THRESHOLD", threshold)
        return materialize(
            [near_duplicates, near_duplicates_no_giant_group],
            resources={"settings": env["resource"]},
            instance=env["instance"],
        )


def test_identical_pictures_are_grouped_and_nothing_else(duplicates_home):
    result = _run(duplicates_home, EXACT_THRESHOLD)
    settings = duplicates_home["resource"].get()
    table = pd.read_parquet(settings.duplicates_path)
    groups = [set(g) for _, g in table.groupby("group_id")["photo_id"]]
    assert sorted(groups, key=len, reverse=True) == duplicates_home["copies"]
    assert table["group_size"].tolist() == [3, 3, 3, 2, 2]
    assert (table["similarity"] > 0.99999).all()
    assert set(table["representative"]) <= set().union(*duplicates_home["copies"])

    meta = result.asset_materializations_for_node("near_duplicates")[0].metadata
    assert meta["groups"].value == 2 and meta["photos_in_groups"].value == 5
    assert meta["dagster/row_count"].value == 5
    assert meta["photos_compared"].value == 48 and meta["largest_group"].value == 3
    assert {(2, 1), (3, 1)} <= {(r.data["size"], r.data["groups"]) for r in meta["group_sizes"].records}
    [check] = result.get_asset_check_evaluations()
    assert check.passed
    assert not list(settings.duplicates_path.parent.glob(".*tmp"))


def test_random_model_at_the_default_threshold_chains_everything_and_the_check_warns(duplicates_home):
    """At 0.94 the random model links distinct pictures, so one group swallows the release: the check says so."""
    from dagster import AssetCheckSeverity

    result = _run(duplicates_home, None)
    table = pd.read_parquet(duplicates_home["resource"].get().duplicates_path)
    assert table["group_size"].max() > 10
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == AssetCheckSeverity.WARN
    assert "IMAGE_SEARCH_DUPLICATE_THRESHOLD" in check.description


def test_missing_inputs_fail_with_one_line_that_says_what_to_run(tmp_path, tiny_models):
    from dagster import DagsterInstance, materialize

    from resources.errors import ImageSearchError

    resource = SettingsResource(home=str(tmp_path), image_model=str(tiny_models[0]))
    with pytest.raises(ImageSearchError, match="materialize photo_catalog first"):
        materialize([near_duplicates], resources={"settings": resource}, instance=DagsterInstance.ephemeral())
    (tmp_path / "catalog").mkdir()
    catalog_frame(["a"]).to_parquet(tmp_path / "catalog" / "catalog.parquet")
    with pytest.raises(ImageSearchError, match="materialize image_embeddings first"):
        materialize([near_duplicates], resources={"settings": resource}, instance=DagsterInstance.ephemeral())
    assert not (tmp_path / "duplicates").exists()


# -- collapsing in the query service and the CLI ------------------------------------------


@pytest.fixture(scope="module")
def collapse_home(tmp_path_factory, search_home):
    """A copy of the session's published index (no duplicate groups yet); the tests write the groups."""
    return copy_home(tmp_path_factory, search_home, "collapse_home", ("catalog", "index"))


@pytest.fixture(scope="module")
def service(collapse_home):
    from resources.config import Settings
    from search_app.service import SearchService

    return SearchService.from_settings(Settings(home=collapse_home))


def _ids(results) -> list[str]:
    return [r.photo_id for r in results]


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_collapsing_keeps_the_best_of_each_group_and_still_returns_k(service, collapse_home, mode):
    query = "blue circle"
    full = _ids(service.search_text(query, k=30, mode=mode))
    assert len(full) >= 12
    # Group the 2nd with the 4th and 9th, the 3rd with the 5th; the 7th with a photo outside the list.
    outside = next(
        p for p in pd.read_parquet(collapse_home / "catalog" / "catalog.parquet")["photo_id"] if p not in full
    )
    write_groups(collapse_home, [[full[3], full[1], full[8]], [full[2], full[4]], [full[6], outside]])
    hidden = {full[3], full[8], full[4]}
    expected = [p for p in full if p not in hidden][:8]

    collapsed = _ids(service.search_text(query, k=8, mode=mode, collapse_duplicates=True))
    assert collapsed == expected
    assert full[1] in collapsed and full[6] in collapsed
    assert _ids(service.search_text(query, k=8, mode=mode)) == full[:8]


def test_collapsing_more_like_this_and_with_filters(service, collapse_home):
    from resources.index.base import Filters

    seed = pd.read_parquet(collapse_home / "catalog" / "catalog.parquet")["photo_id"][0]
    full = _ids(service.more_like_this(seed, k=20))
    write_groups(collapse_home, [full[0:3], full[5:8]])
    collapsed = _ids(service.more_like_this(seed, k=10, collapse_duplicates=True))
    assert collapsed == [p for p in full if p not in {full[1], full[2], full[6], full[7]}][:10]
    assert collapsed[0] == seed

    only = Filters(orientation="landscape")
    filtered = _ids(service.more_like_this(seed, k=20, filters=only))
    write_groups(collapse_home, [filtered[0:4]])
    results = service.more_like_this(seed, k=5, filters=only, collapse_duplicates=True)
    assert _ids(results) == [filtered[0]] + filtered[4:8]
    assert all(r.orientation == "landscape" for r in results)


def test_no_or_damaged_groups_change_nothing(service, collapse_home, caplog):
    path = collapse_home / "duplicates" / "groups.parquet"
    path.unlink(missing_ok=True)
    full = _ids(service.search_text("red", k=10, mode="keyword"))
    assert _ids(service.search_text("red", k=10, mode="keyword", collapse_duplicates=True)) == full
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"not parquet")
    with caplog.at_level("WARNING"):
        assert _ids(service.search_text("red", k=10, mode="keyword", collapse_duplicates=True)) == full
    assert "ignoring the near-duplicate groups" in caplog.text
