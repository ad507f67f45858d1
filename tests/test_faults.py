"""Faults the platform must survive, each provoked for real: killed processes, a failing image
server, an unreachable search backend, a release that drops and adds photos, and two runs
writing the same bucket at once. Also the refresh over two generated releases, driven by the
project's own sensors and automation conditions."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, build_sensor_context, evaluate_automation_conditions

import sensors
from assets.partitions import photo_bucket
from image_search.sample import write_release
from resources.backends import open_backend
from resources.config import Settings
from resources.dagster_resources import SettingsResource
from resources.errors import ImageSearchError
from resources.image_store import BUCKET_KEYS, ImageStore
from resources.locks import store_lock
from resources.vector_store import load_embeddings
from tests.es_fake import FakeSearchServer
from tests.http_fixtures import FaultServer
from tests.pause import PausePoint, hold_lock, kill_group

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
SEARCH_INDEX = AssetKey("search_index")

def test_a_second_writer_waits_for_the_lock_then_fails_clearly_after_the_timeout(tmp_path):
    lock = tmp_path / "locks" / "images" / "b05.lock"
    holder = hold_lock(lock)
    try:
        with pytest.raises(ImageSearchError, match=r"images bucket b05 is being written by another run .* 0.3 s"):
            with store_lock(lock, "images bucket b05", timeout=0.3):
                pass
        waited, reported, released, acquired = [], threading.Event(), threading.Event(), []

        def log(line: str) -> None:
            waited.append(line)
            reported.set()

        def second_writer() -> None:
            with store_lock(lock, "images bucket b05", timeout=600, log=log):
                acquired.append(released.is_set())

        writer = threading.Thread(target=second_writer)
        writer.start()
        # The guard only stops a hung test: the holder keeps the lock until told, so the writer must wait.
        assert reported.wait(timeout=120), "the second writer did not say it was waiting"
        released.set()
        holder.communicate("go\n", timeout=60)
        writer.join()
        assert holder.returncode == 0
        assert acquired == [True], "it took the lock only once the holder let it go"
        assert len(waited) == 1 and "waiting for another run" in waited[0]
    finally:
        holder.kill()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    lock = tmp_path / "locks" / "search_index.lock"
    holder = hold_lock(lock)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    waited = []
    # A timeout too short to wait out any holder: a stale lock would make this fail.
    with store_lock(lock, "search_index", timeout=0.01, log=waited.append):
        assert waited == []


# -- the pipeline, end to end ------------------------------------------------------------

DOCUMENTS = ("photos", "keywords", "collections", "conversions", "colors")
ALL_BUCKETS = {"dagster/asset_partition_range_start": "b00", "dagster/asset_partition_range_end": "b63"}


def mix_release(out: Path, base: Path, drop: set[str], extra: Path, add: set[str], new_urls: dict[str, str]) -> None:
    """Write a release: ``base`` without the ``drop`` photos, plus the ``add`` photos of ``extra``, with some URLs changed."""
    out.mkdir(parents=True)

    def records(path: Path) -> list[list[str]]:
        # The files are CSV with tab delimiters: quoted values may hold tabs and line breaks.
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.reader(f, delimiter="\t"))

    for name in DOCUMENTS:
        columns, *rows = records(base / f"{name}.tsv000")
        id_column = columns.index("photo_id")
        kept = [row for row in rows if row[id_column] not in drop]
        kept += [row for row in records(extra / f"{name}.tsv000")[1:] if row[id_column] in add]
        if name == "photos":
            url_column = columns.index("photo_image_url")
            for row in kept:
                row[url_column] = new_urls.get(row[id_column], row[url_column])
        with open(out / f"{name}.tsv000", "w", encoding="utf-8", newline="") as f:
            csv.writer(f, delimiter="\t", lineterminator="\n").writerows([columns, *kept])


@pytest.fixture
def pipeline_env(tmp_path, tiny_models, monkeypatch):
    """The environment a user would set: a fresh IMAGE_SEARCH_HOME and the tiny models."""
    image_model, text_model = tiny_models
    home = tmp_path / "home"
    monkeypatch.setenv("IMAGE_SEARCH_HOME", str(home))
    monkeypatch.setenv("IMAGE_SEARCH_IMAGE_MODEL", str(image_model))
    monkeypatch.setenv("IMAGE_SEARCH_TEXT_MODEL", str(text_model))
    monkeypatch.setenv("IMAGE_SEARCH_DOWNLOAD_TIMEOUT", "2")
    return home


def _defs():
    from definitions import defs

    return defs


def run_job(instance, name: str, tags: dict | None = None, raise_on_error: bool = True):
    """Execute one of the project's jobs in-process, as the daemon would launch it."""
    return _defs().resolve_job_def(name).execute_in_process(instance=instance, tags=tags, raise_on_error=raise_on_error)


def settings() -> Settings:
    return Settings.from_env()


def indexed(photo_ids) -> set[str]:
    backend = open_backend(settings())
    return {photo_id for photo_id in photo_ids if backend.get(photo_id) is not None}


def vector_ids() -> list[str]:
    ids, _ = load_embeddings(settings(), settings().image_model)
    return list(ids)


def catalog_ids() -> set[str]:
    return set(pd.read_parquet(settings().catalog_path, columns=["photo_id"])["photo_id"])


def check_results(result) -> dict[str, bool]:
    return {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}


def build_everything(instance) -> None:
    run_job(instance, "ingest_release")
    run_job(instance, "update_vectors", ALL_BUCKETS)
    run_job(instance, "publish_index")


def _tick(sensor, instance, cursor):
    return sensor.evaluate_tick(
        build_sensor_context(instance=instance, cursor=cursor, resources={"settings": SettingsResource()})
    )


def test_a_refresh_over_a_new_release_touches_only_what_changed(tmp_path, pipeline_env, monkeypatch):
    """Two generated releases; the second drops 3 photos, adds 3 and changes one photo's image.

    The refresh runs as the daemon would run it: the release sensor, ``ingest_release``, the
    catalog sensor's bucket runs, then whatever the automation conditions request.
    """
    first_dir, extra_dir, second_dir = tmp_path / "r1", tmp_path / "extra", tmp_path / "r2"
    first = write_release(first_dir, photos=20, seed=21)
    extra = write_release(extra_dir, photos=5, seed=22)
    dropped, added = set(first["photo_ids"][:3]), set(extra["photo_ids"][:3])
    updated = first["photo_ids"][5]
    new_image = (extra_dir / "images" / f"{extra['photo_ids'][4]}.jpg").resolve().as_uri()
    mix_release(second_dir, first_dir, dropped, extra_dir, added, {updated: new_image})

    monkeypatch.setenv("IMAGE_SEARCH_DATASET", str(first_dir))
    with DagsterInstance.ephemeral() as instance:
        # The automation sensor's first tick, on an empty instance, as the daemon would run it.
        automation = evaluate_automation_conditions(defs=_defs(), instance=instance)
        assert automation.total_requested == 0
        release = _tick(sensors.release_sensor, instance, None)
        assert len(release.run_requests) == 1
        run_job(instance, "ingest_release", release.run_requests[0].tags)
        catalog = _tick(sensors.catalog_change_sensor, instance, None)
        assert sensors.requested_buckets(catalog.run_requests) == BUCKET_KEYS
        for request in catalog.run_requests:
            run_job(instance, "update_vectors", request.tags)
        automation = evaluate_automation_conditions(defs=_defs(), instance=instance, cursor=automation.cursor)
        assert automation.get_num_requested(SEARCH_INDEX) == 1
        assert automation.get_num_requested(AssetKey("image_embeddings")) == 0
        run_job(instance, "publish_index")
        automation = evaluate_automation_conditions(defs=_defs(), instance=instance, cursor=automation.cursor)
        assert automation.total_requested == 0, "the index just built: nothing to follow"
        assert indexed(first["photo_ids"]) == set(first["photo_ids"])
        backend = open_backend(settings())
        _, vector_before = backend.get(updated)

        monkeypatch.setenv("IMAGE_SEARCH_DATASET", str(second_dir))
        release = _tick(sensors.release_sensor, instance, release.cursor)
        assert len(release.run_requests) == 1, release.skip_message
        ingested = run_job(instance, "ingest_release", release.run_requests[0].tags)
        automation = evaluate_automation_conditions(defs=_defs(), instance=instance, cursor=automation.cursor)
        assert automation.total_requested == 0, "a new catalog alone requests nothing: the catalog sensor decides"
        changes = ingested.asset_materializations_for_node("photo_catalog")[0].metadata
        assert (changes["photos_added"].value, changes["photos_removed"].value, changes["photos_updated"].value) == (3, 3, 1)

        catalog = _tick(sensors.catalog_change_sensor, instance, catalog.cursor)
        changed = {photo_bucket(p) for p in dropped | added | {updated}}
        assert sorted(sensors.requested_buckets(catalog.run_requests)) == sorted(changed)
        fetched = 0
        for request in catalog.run_requests:
            result = run_job(instance, "update_vectors", request.tags)
            fetched += result.asset_materializations_for_node("images")[0].metadata["fetched"].value
        assert fetched == len(added) + 1, "only the new photos and the changed image are downloaded"

        automation = evaluate_automation_conditions(defs=_defs(), instance=instance, cursor=automation.cursor)
        assert automation.get_num_requested(SEARCH_INDEX) == 1
        assert automation.get_num_requested(AssetKey("images")) == 0
        assert automation.get_num_requested(AssetKey("image_embeddings")) == 0
        published = run_job(instance, "publish_index")
        assert all(check_results(published).values()), check_results(published)

        expected = (set(first["photo_ids"]) - dropped) | added
        assert catalog_ids() == expected
        assert open_backend(settings()).count() == len(expected)
        assert indexed(expected) == expected and indexed(dropped) == set()
        ids = vector_ids()
        assert len(ids) == len(set(ids)) and expected <= set(ids), "every photo has one vector, none twice"
        _, vector_after = open_backend(settings()).get(updated)
        assert float(np.dot(vector_before, vector_after)) < 0.9999, "the changed image was encoded again"

        nothing = _tick(sensors.catalog_change_sensor, instance, catalog.cursor)
        assert nothing.run_requests == []


def served_release(out: Path, server, photos: int, seed: int) -> dict:
    """A generated release whose images are served by ``server`` (a FaultServer) under /img/."""
    info = write_release(out, photos=photos, seed=seed, image_base_url=server.url("/img"))
    for photo_id in info["photo_ids"]:
        server.add(f"/img/{photo_id}.jpg", (out / "images" / f"{photo_id}.jpg").read_bytes())
    return info


def _cli(args: list[str], dagster_home: Path, log: Path, pause: PausePoint) -> subprocess.Popen:
    """``dagster asset materialize`` in its own process group, as a user runs it, its log in ``log``.

    Steps run inside that process (the in-process executor), so one SIGKILL stops the run
    as a lost node or an out-of-memory kill would; ``pause`` holds it where the test wants.
    """
    dagster_home.mkdir(exist_ok=True)
    shutil.copy(ROOT / ".dagster" / "dagster.yaml", dagster_home / "dagster.yaml")
    with log.open("w") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "definitions", *args,
             "--config-json", json.dumps({"execution": {"config": {"in_process": {}}}})],
            cwd=ROOT, env=pause.env({**os.environ, "DAGSTER_HOME": str(dagster_home)}),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def kill_at(target: str, args: list[str], dagster_home: Path, log: Path) -> None:
    """Run the CLI with ``args``, hold it before ``target`` (``module:function#n``), then SIGKILL it there."""
    with PausePoint(target) as pause:
        child = _cli(args, dagster_home, log, pause)
        try:
            pause.wait(child, log)
        finally:
            kill_group(child)


def test_runs_killed_mid_download_mid_encoding_and_mid_index_are_finished_by_the_next(tmp_path, pipeline_env, monkeypatch):
    """A real ``dagster asset materialize`` process, SIGKILLed in each long stage, then run again."""
    monkeypatch.setenv("IMAGE_SEARCH_DOWNLOAD_CONCURRENCY", "1")
    dagster_home, log = tmp_path / "dagster_home", tmp_path / "run.log"
    all_buckets = ["--select", "group:vectors", "--partition-range", "b00...b63"]
    with FaultServer(latency_ms=150) as server:
        release = served_release(tmp_path / "release", server, photos=12, seed=31)
        monkeypatch.setenv("IMAGE_SEARCH_DATASET", str(tmp_path / "release"))
        photo_ids = set(release["photo_ids"])
        with DagsterInstance.ephemeral() as instance:
            run_job(instance, "ingest_release")

            # Before the 4th downloaded photo is journaled: 3 are stored, the rest are not.
            kill_at("resources.image_store:ImageStore.append_journal#4", all_buckets, dagster_home, log)
            stored = {p for b in {photo_bucket(p) for p in photo_ids} for p in ImageStore(settings().images_dir).read_manifest(b)["photo_id"]}
            assert 3 <= len(stored) < len(photo_ids), "killed mid-download"

            # Before the second bucket's vectors are written: the first bucket's are, the rest are not.
            kill_at("resources.vector_store:VectorStore.write_chunk#2", all_buckets, dagster_home, log)
            assert set(vector_ids()) < photo_ids, "killed mid-encoding"

            finished = run_job(instance, "update_vectors", ALL_BUCKETS)
            assert all(check_results(finished).values()), check_results(finished)
            ids = vector_ids()
            assert sorted(ids) == sorted(photo_ids), "every photo has exactly one vector"
            assert max(server.hits.values()) <= 2, "a photo is fetched again at most once (in flight at the kill)"
            assert not list(settings().home.rglob("*.tmp")) and not list(settings().home.rglob(".part-*"))

            run_job(instance, "publish_index")
            before = open_backend(settings()).info()
            # The new build is complete on disk; killed before CURRENT points at it.
            kill_at("resources.backends.local:_publish", ["--select", "search_index"], dagster_home, log)
            survivor = open_backend(settings())
            assert survivor.info() == before and survivor.count() == len(photo_ids), "the published build keeps serving"
            probe_id = sorted(photo_ids)[0]
            assert survivor.knn(survivor.get(probe_id)[1], k=1)[0].photo_id == probe_id

            rebuilt = run_job(instance, "publish_index")
            assert all(check_results(rebuilt).values()), check_results(rebuilt)
            assert open_backend(settings()).count() == len(photo_ids)


def test_an_image_server_failing_for_a_while_then_recovering(tmp_path, pipeline_env, monkeypatch):
    """Half the photos fail twice (healed by the downloader's retries), half fail past one run's retries.

    The first run stores what it can and its blocking failure-share check keeps the vectors
    from running on a half-fetched store; once the server is back, the next run fetches only
    the missing photos and everything reaches the index.
    """
    with FaultServer() as server:
        release = served_release(tmp_path / "release", server, photos=10, seed=41)
        monkeypatch.setenv("IMAGE_SEARCH_DATASET", str(tmp_path / "release"))
        ids = release["photo_ids"]
        brief, long = ids[:5], ids[5:]
        for photo_id, failures in [(p, 2) for p in brief] + [(p, 6) for p in long]:
            route = server.routes[f"/img/{photo_id}.jpg"]
            route.fail_first = [(503, {"Retry-After": "0"})] * failures
        with DagsterInstance.ephemeral() as instance:
            automation = evaluate_automation_conditions(defs=_defs(), instance=instance)
            run_job(instance, "ingest_release")
            outage = run_job(instance, "update_vectors", ALL_BUCKETS, raise_on_error=False)
            assert not outage.success
            assert check_results(outage)["failure_share"] is False
            metadata = outage.asset_materializations_for_node("images")[0].metadata
            assert (metadata["stored"].value, metadata["failed"].value) == (len(brief), len(long))
            assert not outage.asset_materializations_for_node("image_embeddings"), "blocked by the failed check"
            automation = evaluate_automation_conditions(defs=_defs(), instance=instance, cursor=automation.cursor)
            assert automation.total_requested == 0, "automation does not encode past a failed blocking check either"

            recovered = run_job(instance, "update_vectors", ALL_BUCKETS)
            metadata = recovered.asset_materializations_for_node("images")[0].metadata
            assert (metadata["fetched"].value, metadata["stored"].value, metadata["failed"].value) == (len(long), len(ids), 0)
            assert all(check_results(recovered).values()), check_results(recovered)
            assert all(server.hits[f"/img/{p}.jpg"] == 3 for p in brief)
            assert all(server.hits[f"/img/{p}.jpg"] == 7 for p in long)

            published = run_job(instance, "publish_index")
            assert all(check_results(published).values())
            assert indexed(ids) == set(ids)


def _failure_message(result, node: str) -> str:
    """The message of the error that failed ``node`` (the innermost cause, what the user reads)."""
    failure = result.failure_data_for_node(node)
    assert failure is not None, f"{node} did not fail"
    error = failure.error
    while error.cause is not None:
        error = error.cause
    return f"{error.cls_name}: {error.message}"


def test_an_unreachable_search_backend_fails_the_build_clearly_and_the_published_index_keeps_serving(
    tmp_path, pipeline_env, monkeypatch
):
    """Elasticsearch (the wire-level fake of tests/es_fake.py, a real HTTP server): first
    nothing listening at the address, then a cluster that drops the connection mid-bulk."""
    release = write_release(tmp_path / "release", photos=8, seed=51)
    ids = set(release["photo_ids"])
    monkeypatch.setenv("IMAGE_SEARCH_DATASET", str(tmp_path / "release"))
    monkeypatch.setenv("IMAGE_SEARCH_BACKEND", "elasticsearch")
    with FakeSearchServer("opensearch-2.11") as cluster, DagsterInstance.ephemeral() as instance:
        monkeypatch.setenv("IMAGE_SEARCH_ES_URL", cluster.url)
        build_everything(instance)
        published = open_backend(settings()).info()
        assert open_backend(settings()).count() == len(ids)

        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            nowhere = f"http://127.0.0.1:{unused.getsockname()[1]}"
        monkeypatch.setenv("IMAGE_SEARCH_ES_URL", nowhere)
        result = run_job(instance, "publish_index", raise_on_error=False)
        message = _failure_message(result, "search_index")
        assert nowhere in message and "\n" not in message.strip(), message

        monkeypatch.setenv("IMAGE_SEARCH_ES_URL", cluster.url)
        cluster.drop_bulk = True
        result = run_job(instance, "publish_index", raise_on_error=False)
        message = _failure_message(result, "search_index")
        assert cluster.url in message or "bulk" in message.lower(), message

        serving = open_backend(settings())
        assert serving.info() == published and serving.count() == len(ids)
        probe = sorted(ids)[0]
        assert serving.knn(serving.get(probe)[1], k=1)[0].photo_id == probe

        cluster.drop_bulk = False
        rebuilt = run_job(instance, "publish_index")
        assert all(check_results(rebuilt).values()), check_results(rebuilt)
        assert open_backend(settings()).info() != published and open_backend(settings()).count() == len(ids)


def test_two_materializations_of_the_same_buckets_at_once_do_not_corrupt_the_store(tmp_path, pipeline_env, monkeypatch):
    """Two runs of ``update_vectors`` over the same buckets, started together (two threads,
    two instances, as two launches would be): the second waits on the bucket locks, then finds
    the work done; nothing is fetched or encoded twice."""
    with FaultServer(latency_ms=100) as server:
        release = served_release(tmp_path / "release", server, photos=8, seed=61)
        monkeypatch.setenv("IMAGE_SEARCH_DATASET", str(tmp_path / "release"))
        ids = release["photo_ids"]
        with DagsterInstance.ephemeral() as instance:
            run_job(instance, "ingest_release")
        results, instances = {}, {name: DagsterInstance.ephemeral() for name in ("first", "second")}

        def launch(name: str) -> None:
            results[name] = run_job(instances[name], "update_vectors", ALL_BUCKETS)

        threads = [threading.Thread(target=launch, args=(name,)) for name in instances]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert set(results) == {"first", "second"} and all(r.success for r in results.values())

        fetched = [r.asset_materializations_for_node("images")[0].metadata["fetched"].value for r in results.values()]
        encoded = [r.asset_materializations_for_node("image_embeddings")[0].metadata["encoded"].value for r in results.values()]
        assert sorted(fetched) == [0, len(ids)] and sorted(encoded) == [0, len(ids)]
        assert all(server.hits[f"/img/{p}.jpg"] == 1 for p in ids)
        waited = [
            entry.user_message
            for name, result in results.items()
            for entry in instances[name].all_logs(result.run_id)
            if "waiting for another run" in (entry.user_message or "")
        ]
        assert waited, "one run waited on the other's locks"
        assert sorted(vector_ids()) == sorted(ids)
        store = ImageStore(settings().images_dir)
        manifest = pd.concat([store.read_manifest(b) for b in {photo_bucket(p) for p in ids}])
        assert sorted(manifest["photo_id"]) == sorted(ids)
        for instance in instances.values():
            instance.dispose()
