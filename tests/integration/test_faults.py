"""Faults the platform must survive, each provoked for real in in-process runs: a failing image server, an
unreachable search backend, a release that drops and adds photos, and two runs writing the same bucket at
once. Also the refresh over two generated releases, driven by the project's own sensors and automation
conditions. Killed processes: test_faults_killed."""

from __future__ import annotations

import csv
import socket
import threading
from pathlib import Path

import numpy as np
import pandas as pd
from dagster import AssetKey, DagsterInstance, build_sensor_context, evaluate_automation_conditions

import sensors
from assets.partitions import photo_bucket
from image_search.sample import write_release
from resources.dagster_resources import SettingsResource
from resources.images.image_store import BUCKET_KEYS, ImageStore
from resources.index import open_backend
from tests.es_fake import FakeSearchServer
from tests.http_fixtures import FaultServer
from tests.pipeline import (
    ALL_BUCKETS,
    catalog_ids,
    check_results,
    indexed,
    project_defs,
    run_job,
    served_release,
    settings,
    vector_ids,
)

SEARCH_INDEX = AssetKey("search_index")


# -- the pipeline, end to end ------------------------------------------------------------

DOCUMENTS = ("photos", "keywords", "collections", "conversions", "colors")


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
        automation = evaluate_automation_conditions(defs=project_defs(), instance=instance)
        assert automation.total_requested == 0
        release = _tick(sensors.release_sensor, instance, None)
        assert len(release.run_requests) == 1
        run_job(instance, "ingest_release", release.run_requests[0].tags)
        catalog = _tick(sensors.catalog_change_sensor, instance, None)
        assert sensors.requested_buckets(catalog.run_requests) == BUCKET_KEYS
        for request in catalog.run_requests:
            run_job(instance, "update_vectors", request.tags)
        automation = evaluate_automation_conditions(defs=project_defs(), instance=instance, cursor=automation.cursor)
        assert automation.get_num_requested(SEARCH_INDEX) == 1
        assert automation.get_num_requested(AssetKey("image_embeddings")) == 0
        run_job(instance, "publish_index")
        automation = evaluate_automation_conditions(defs=project_defs(), instance=instance, cursor=automation.cursor)
        assert automation.total_requested == 0, "the index just built: nothing to follow"
        assert indexed(first["photo_ids"]) == set(first["photo_ids"])
        backend = open_backend(settings())
        _, vector_before = backend.get(updated)

        monkeypatch.setenv("IMAGE_SEARCH_DATASET", str(second_dir))
        release = _tick(sensors.release_sensor, instance, release.cursor)
        assert len(release.run_requests) == 1, release.skip_message
        ingested = run_job(instance, "ingest_release", release.run_requests[0].tags)
        automation = evaluate_automation_conditions(defs=project_defs(), instance=instance, cursor=automation.cursor)
        assert automation.total_requested == 0, "a new catalog alone requests nothing: the catalog sensor decides"
        changes = ingested.asset_materializations_for_node("photo_catalog")[0].metadata
        assert (changes["photos_added"].value, changes["photos_removed"].value, changes["photos_updated"].value) == (
            3,
            3,
            1,
        )

        catalog = _tick(sensors.catalog_change_sensor, instance, catalog.cursor)
        changed = {photo_bucket(p) for p in dropped | added | {updated}}
        assert sorted(sensors.requested_buckets(catalog.run_requests)) == sorted(changed)
        fetched = 0
        for request in catalog.run_requests:
            result = run_job(instance, "update_vectors", request.tags)
            fetched += result.asset_materializations_for_node("images")[0].metadata["fetched"].value
        assert fetched == len(added) + 1, "only the new photos and the changed image are downloaded"

        automation = evaluate_automation_conditions(defs=project_defs(), instance=instance, cursor=automation.cursor)
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
            automation = evaluate_automation_conditions(defs=project_defs(), instance=instance)
            run_job(instance, "ingest_release")
            outage = run_job(instance, "update_vectors", ALL_BUCKETS, raise_on_error=False)
            assert not outage.success
            assert check_results(outage)["failure_share"] is False
            metadata = outage.asset_materializations_for_node("images")[0].metadata
            assert (metadata["stored"].value, metadata["failed"].value) == (len(brief), len(long))
            assert not outage.asset_materializations_for_node("image_embeddings"), "blocked by the failed check"
            automation = evaluate_automation_conditions(
                defs=project_defs(), instance=instance, cursor=automation.cursor
            )
            assert automation.total_requested == 0, "automation does not encode past a failed blocking check either"

            recovered = run_job(instance, "update_vectors", ALL_BUCKETS)
            metadata = recovered.asset_materializations_for_node("images")[0].metadata
            assert (metadata["fetched"].value, metadata["stored"].value, metadata["failed"].value) == (
                len(long),
                len(ids),
                0,
            )
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
        encoded = [
            r.asset_materializations_for_node("image_embeddings")[0].metadata["encoded"].value for r in results.values()
        ]
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
