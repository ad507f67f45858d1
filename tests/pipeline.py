"""Shared pipeline helpers for the tests: writing releases and catalogs, running the assets and jobs in-process,
reading back what a run wrote, quickening the Dagster daemons.

Tests import them from here, never from another test file. Dagster and the assets are imported inside the
helpers that run them, so the unit tests that import this module load neither.
"""

from __future__ import annotations

import csv
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from image_search.sample import write_release
from resources.config import Settings
from resources.errors import ImageSearchError
from resources.index import open_backend
from resources.index.base import BuildInfo
from resources.index.local import LocalBackend
from resources.release.catalog import index_inputs
from resources.vectors import duplicates
from resources.vectors.vector_store import load_embeddings
from search_app.service import SearchService


def settings(env: dict[str, str] | None = None) -> Settings:
    """The settings a child process started with ``env`` (a test's environment) runs under; without ``env``,
    this process's own (``IMAGE_SEARCH_*`` as the test set them)."""
    if env is None:
        return Settings.from_env()
    keys = ("IMAGE_SEARCH_HOME", "IMAGE_SEARCH_IMAGE_MODEL", "IMAGE_SEARCH_TEXT_MODEL")
    return Settings(home=Path(env[keys[0]]), image_model=env[keys[1]], text_model=env[keys[2]])


def vector_ids(env: dict[str, str] | None = None) -> list[str]:
    """The photo ids of the vectors stored for the image model of ``env`` (or of this process's settings)."""
    ids, _ = load_embeddings(settings(env), settings(env).image_model)
    return list(ids)


def photo_ids(env: dict[str, str]) -> list[str]:
    """The sorted photo ids of the release ``env`` names, read from its photos file."""
    # The file is CSV with a tab delimiter: quoted values may hold tabs and line breaks.
    with open(Path(env["IMAGE_SEARCH_DATASET"]) / "photos.tsv000", encoding="utf-8", newline="") as f:
        header, *rows = csv.reader(f, delimiter="\t")
    column = header.index("photo_id")
    return sorted(row[column] for row in rows)


#: Dagster's own setting for how often the run-retry daemon reads new run failures (default 5 s;
#: dagster/_daemon/auto_run_reexecution/event_log_consumer.py, ``_INTERVAL_SECONDS``).
QUICK_DAEMON_ENV = {"DAGSTER_EVENT_LOG_CONSUMER_DAEMON_INTERVAL_SECONDS": "1"}


def quicken_daemons(dagster_home: Path) -> None:
    """Have run monitoring in the instance profile of ``dagster_home`` look every second (the project's
    profile: every 30 s) and free a finished run's pool slots after 1 s (there: 10 s). The daemons do the
    same things in the same order; the test only waits less for their next look."""
    path = dagster_home / "dagster.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["run_monitoring"].update(poll_interval_seconds=1, free_slots_after_run_end_seconds=1)
    path.write_text(yaml.safe_dump(profile))


def catalog_frame(ids, width=1000, height=800, submitted="2020-01-01") -> pd.DataFrame:
    """A photo catalog of ``ids`` with only the columns near-duplicate grouping reads."""
    return pd.DataFrame(
        {
            "photo_id": list(ids),
            "photo_width": width,
            "photo_height": height,
            "photo_submitted_at": pd.Timestamp(submitted, tz="UTC"),
        }
    )


def copy_home(tmp_path_factory, search_home: Path, name: str, parts: tuple[str, ...]) -> Path:
    """A fresh home holding copies of ``parts`` (e.g. ``tables``, ``catalog``) of the session's read-only ``search_home``."""
    home = tmp_path_factory.mktemp(name)
    for part in parts:
        shutil.copytree(search_home / part, home / part)
    return home


def write_groups(home, groups: list[list[str]]) -> None:
    """Store ``groups`` the way the asset does (first photo the representative)."""
    rows = [
        {"photo_id": pid, "group_id": gid, "group_size": len(g), "representative": g[0], "similarity": 1.0}
        for gid, g in enumerate(groups, start=1)
        for pid in g
    ]
    table = pd.DataFrame(rows).astype({name: kind for name, (kind, _) in duplicates.GROUP_COLUMNS.items()})
    duplicates.write_groups(table, Settings(home=home).duplicates_path, 0.94, "test")


#: The run tags of one run over every bucket (b00...b63), as a backfill of the whole range launches it.
ALL_BUCKETS = {"dagster/asset_partition_range_start": "b00", "dagster/asset_partition_range_end": "b63"}


def write_catalog(home: Path, rows: list[tuple[str, str]]) -> None:
    """A catalog Parquet with the contract's key columns (the rest are not read by ``images``)."""
    from assets.partitions import photo_bucket

    path = home / "catalog" / "catalog.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=["photo_id", "photo_image_url"])
    frame["photo_url"] = "https://unsplash.com/photos/" + frame["photo_id"]
    frame["bucket"] = frame["photo_id"].map(photo_bucket)
    frame.to_parquet(path, index=False)


def run_images(home: Path, tags=ALL_BUCKETS, partition_key=None, raise_on_error=True, instance=None):
    """Materialize ``images`` in-process over ``home``: every bucket, or the one ``partition_key`` names."""
    from dagster import DagsterInstance, materialize

    from assets.images import images
    from resources.dagster_resources import SettingsResource

    return materialize(
        [images],
        resources={"settings": SettingsResource(home=str(home))},
        instance=instance or DagsterInstance.ephemeral(),
        tags=None if partition_key else tags,
        partition_key=partition_key,
        raise_on_error=raise_on_error,
    )


def project_defs():
    """The project's ``Definitions``, imported on first use (loading them loads every asset)."""
    from definitions import defs

    return defs


def run_job(instance, name: str, tags: dict | None = None, raise_on_error: bool = True):
    """Execute one of the project's jobs in-process, as the daemon would launch it."""
    return (
        project_defs()
        .resolve_job_def(name)
        .execute_in_process(instance=instance, tags=tags, raise_on_error=raise_on_error)
    )


def indexed(photo_ids) -> set[str]:
    """Which of ``photo_ids`` the published index of this process's settings holds."""
    backend = open_backend(settings())
    return {photo_id for photo_id in photo_ids if backend.get(photo_id) is not None}


def catalog_ids() -> set[str]:
    """The photo ids of the catalog of this process's settings."""
    return set(pd.read_parquet(settings().catalog_path, columns=["photo_id"])["photo_id"])


def check_results(result) -> dict[str, bool]:
    """Each asset check of a run's ``result``: whether it passed."""
    return {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}


def served_release(out: Path, server, photos: int, seed: int) -> dict:
    """A generated release whose images are served by ``server`` (a FaultServer) under /img/."""
    info = write_release(out, photos=photos, seed=seed, image_base_url=server.url("/img"))
    for photo_id in info["photo_ids"]:
        server.add(f"/img/{photo_id}.jpg", (out / "images" / f"{photo_id}.jpg").read_bytes())
    return info


def release_rows(path: Path) -> list[list[str]]:
    """The records of a document file read with Python's csv module: the official loaders' rules."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t"))


def ingestion_assets() -> list:
    """The ingestion assets and their check, in lineage order."""
    from assets.catalog import photo_catalog, photo_ids_unique
    from assets.raw import collections, colors, conversions, keywords, photos, unsplash_release

    return [unsplash_release, photos, keywords, collections, conversions, colors, photo_catalog, photo_ids_unique]


def materialize_ingestion(home: Path, dataset, selection: list | None = None):
    """Materialize ``selection`` (by default the ingestion) in-process over ``home`` from the release at ``dataset``."""
    from dagster import DagsterInstance, materialize

    from resources.dagster_resources import SettingsResource

    return materialize(
        selection or ingestion_assets(),
        resources={"settings": SettingsResource(home=str(home), dataset=str(dataset))},
        instance=DagsterInstance.ephemeral(),
    )


def ingested_metadata(result, key: str) -> dict:
    """The metadata values the asset ``key`` recorded in a run's ``result``."""
    for event in result.get_asset_materialization_events():
        if event.materialization.asset_key.to_user_string() == key:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise AssertionError(f"{key} was not materialized")


def ingestion_error(home: Path, dataset, selection: list | None = None) -> str:
    """The message of the ImageSearchError a materialization fails with."""
    with pytest.raises(Exception) as failure:
        materialize_ingestion(home, dataset, selection)
    error = getattr(failure.value, "user_exception", None) or failure.value
    assert isinstance(error, ImageSearchError), repr(failure.value)
    message = str(error)
    assert "\n" not in message
    return message


def zip_release(folder: Path, zip_path: Path) -> bytes:
    """Zip the release in ``folder`` to ``zip_path`` as Unsplash publishes it; the zip's bytes."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return zip_path.read_bytes()


def settings_resource(settings: Settings, **extra):
    """The Dagster resource for ``settings``' home and models, with ``extra`` fields."""
    from resources.dagster_resources import SettingsResource

    return SettingsResource(
        home=str(settings.home), image_model=settings.image_model, text_model=settings.text_model, **extra
    )


#: The words of the saved search the saved-search tests follow, and how many answers it keeps.
SAVED_WORDS, SAVED_K = "a red circle", 5


def saved_world(search_home: Path, tmp_path_factory) -> dict:
    """A copy of ``search_home`` whose published index lacks the ``SAVED_K`` photos that best match
    ``SAVED_WORDS`` (``entering``), as if they were not in the release yet; the release and the vectors hold them."""
    home = tmp_path_factory.mktemp("saved") / "home"
    shutil.copytree(search_home, home)
    info = LocalBackend(Settings(home=search_home)).info()
    settings = Settings(home=home, image_model=info.image_model, text_model=info.text_model)
    entering = [
        r.photo_id
        for r in SearchService.from_settings(settings).search_text(SAVED_WORDS, k=SAVED_K, collapse_duplicates=True)
    ]
    documents, vectors = index_inputs(settings)
    keep = ~documents["photo_id"].isin(entering).to_numpy()
    kept = vectors[keep]
    LocalBackend(settings).build(
        documents[keep].reset_index(drop=True), kept, BuildInfo.for_vectors(info.image_model, info.text_model, kept)
    )
    return {"home": home, "settings": settings, "entering": entering}


def indexed_but_entering(world: dict) -> list[str]:
    """The photo ids of ``world``'s published index (the entering photos are not in it)."""
    documents, _ = index_inputs(world["settings"])
    return [pid for pid in documents["photo_id"] if pid not in world["entering"]]


def broken_quantization(monkeypatch) -> None:
    """Make every build of the faster image runtime quantize the tower's weight matrices to one bit (sign times mean magnitude).

    A deliberately broken quantization, for the agreement gate's fallback; torch loads only when it is called.
    """
    import copy

    import torch

    from resources.encoder import runtime as runtime_module

    real = runtime_module.pixel_tower

    def one_bit(clip, pre):
        broken = copy.deepcopy(clip)
        with torch.no_grad():
            for parameter in broken.vision_model.parameters():
                if parameter.dim() == 2:
                    parameter.copy_(parameter.sign() * parameter.abs().mean())
        return real(broken, pre)

    monkeypatch.setattr(runtime_module, "pixel_tower", one_bit)


def count_builds(monkeypatch) -> list[Path]:
    """Record the target of every real build of the faster runtime."""
    from resources.encoder import selection

    built, real = [], selection.build_openvino

    def counting(clip, pre, calibration, target):
        built.append(target)
        return real(clip, pre, calibration, target)

    monkeypatch.setattr(selection, "build_openvino", counting)
    return built
