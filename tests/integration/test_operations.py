"""Operations, in-process: the refresh schedule, the release and catalog sensors, automation, scale-out configs.

What runs Dagster's command line as a child: test_operations_cli."""

from __future__ import annotations

import datetime as dt
import os
import runpy
import threading
import uuid
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import yaml
from dagster import (
    AssetMaterialization,
    DagsterInstance,
    Definitions,
    EnvVar,
    ResourceParam,
    asset,
    build_schedule_context,
    build_sensor_context,
    materialize,
    validate_run_config,
)

import jobs
import sensors
from resources.config import ConfigError, Settings
from resources.dagster_resources import SettingsResource
from resources.images.image_store import BUCKET_KEYS, bucket_of

ROOT = Path(__file__).resolve().parents[2]


def _release_context(instance, dataset: str, cursor: str | None = None):
    return build_sensor_context(
        instance=instance, cursor=cursor, resources={"settings": SettingsResource(dataset=dataset)}
    )


# -- schedule ---------------------------------------------------------------------------


def test_refresh_schedule_runs_ingestion_daily_by_default():
    context = build_schedule_context(scheduled_execution_time=dt.datetime(2026, 11, 27, 3, tzinfo=dt.timezone.utc))
    result = jobs.refresh_schedule.evaluate_tick(context)
    assert jobs.refresh_schedule.cron_schedule == "0 3 * * *"
    assert jobs.refresh_schedule.job_name == "ingest_release"
    assert len(result.run_requests) == 1
    assert result.run_requests[0].tags[jobs.TRIGGER_TAG] == "schedule"


def test_refresh_cron_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("IMAGE_SEARCH_REFRESH_CRON", "*/30 * * * *")
    assert Settings.from_env().refresh_cron == "*/30 * * * *"
    assert jobs.build_refresh_schedule(Settings.from_env().refresh_cron).cron_schedule == "*/30 * * * *"
    with pytest.raises(ConfigError, match="IMAGE_SEARCH_REFRESH_CRON='daily at 3'"):
        jobs.build_refresh_schedule("daily at 3")


# -- release sensor ---------------------------------------------------------------------


def test_release_sensor_notices_a_changed_folder(tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    (release / "photos.tsv000").write_text("photo_id\ta\n")
    (release / "keywords.tsv000").write_text("photo_id\tkeyword\n")
    with DagsterInstance.ephemeral() as instance:
        first = sensors.release_sensor.evaluate_tick(_release_context(instance, str(release)))
        assert [r.tags[jobs.TRIGGER_TAG] for r in first.run_requests] == ["new_release"]

        same = sensors.release_sensor.evaluate_tick(_release_context(instance, str(release), first.cursor))
        assert same.run_requests == [] and "unchanged" in same.skip_message

        (release / "photos.tsv000").write_text("photo_id\ta\nnew\tphoto\n")
        changed = sensors.release_sensor.evaluate_tick(_release_context(instance, str(release), same.cursor))
        assert len(changed.run_requests) == 1
        assert changed.cursor != first.cursor
        assert changed.run_requests[0].run_key != first.run_requests[0].run_key


def test_release_sensor_notices_a_replaced_zip_and_takes_a_built_catalog_as_baseline(tmp_path):
    archive = tmp_path / "unsplash-lite.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("photos.tsv000", "photo_id\n1\n")
    with DagsterInstance.ephemeral() as instance:
        instance.report_runless_asset_event(AssetMaterialization("photo_catalog"))
        first = sensors.release_sensor.evaluate_tick(_release_context(instance, str(archive)))
        assert first.run_requests == [] and "first look" in first.skip_message
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("photos.tsv000", "photo_id\n1\n2\n")
        changed = sensors.release_sensor.evaluate_tick(_release_context(instance, str(archive), first.cursor))
        assert len(changed.run_requests) == 1


def test_release_sensor_explains_a_missing_dataset(tmp_path):
    with DagsterInstance.ephemeral() as instance:
        result = sensors.release_sensor.evaluate_tick(_release_context(instance, str(tmp_path / "nope.zip")))
    assert result.run_requests == []
    assert "IMAGE_SEARCH_DATASET=" in result.skip_message and "no such file or folder" in result.skip_message


class _ReleaseServer:
    """A real HTTP server on 127.0.0.1 answering HEAD like a release host (a redirect, then validators)."""

    def __init__(self):
        self.headers = {"ETag": '"v1"', "Last-Modified": "Tue, 01 Sep 2026 00:00:00 GMT", "Content-Length": "1000"}
        self.heads = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):  # noqa: N802 - the base class's naming
                server.heads += 1
                if self.path.startswith("/latest"):
                    self.send_response(302)
                    self.send_header("Location", "/files/lite.zip?signature=" + str(server.heads))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                for name, value in server.headers.items():
                    self.send_header(name, value)
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/latest"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_release_sensor_uses_head_validators_of_a_url():
    with _ReleaseServer() as server, DagsterInstance.ephemeral() as instance:
        first = sensors.release_sensor.evaluate_tick(_release_context(instance, server.url))
        assert len(first.run_requests) == 1
        # The redirect's query (a signature) changes on every request; the fingerprint must not.
        same = sensors.release_sensor.evaluate_tick(_release_context(instance, server.url, first.cursor))
        assert same.run_requests == []
        server.headers["ETag"] = '"v2"'
        changed = sensors.release_sensor.evaluate_tick(_release_context(instance, server.url, same.cursor))
        assert len(changed.run_requests) == 1
        assert server.heads >= 6
        url = server.url
    with DagsterInstance.ephemeral() as instance:
        down = sensors.release_sensor.evaluate_tick(_release_context(instance, url, changed.cursor))
    assert down.run_requests == [] and "HEAD request failed" in down.skip_message
    assert down.cursor in (None, changed.cursor)


# -- catalog change sensor --------------------------------------------------------------


def _catalog(ids: list[str], urls: dict[str, str] | None = None) -> pd.DataFrame:
    urls = urls or {}
    return pd.DataFrame(
        {
            "photo_id": ids,
            "photo_image_url": [urls.get(i, f"https://images.example/{i}.jpg") for i in ids],
            "describe": ["red circle"] * len(ids),
            "colors": [["red", "white"]] * len(ids),
            "bucket": [bucket_of(i, len(BUCKET_KEYS)) for i in ids],
        }
    )


def _publish_catalog(instance, home: Path, catalog: pd.DataFrame) -> None:
    path = Settings(home=home).catalog_path
    path.parent.mkdir(parents=True, exist_ok=True)
    catalog.to_parquet(path)
    instance.report_runless_asset_event(AssetMaterialization("photo_catalog"))


def _catalog_tick(instance, home: Path, cursor: str | None):
    context = build_sensor_context(
        instance=instance, cursor=cursor, resources={"settings": SettingsResource(home=str(home))}
    )
    return sensors.catalog_change_sensor.evaluate_tick(context)


def test_catalog_change_sensor_requests_only_changed_buckets(tmp_path):
    ids = [f"photo{i:03d}" for i in range(200)]
    with DagsterInstance.ephemeral() as instance:
        none_yet = _catalog_tick(instance, tmp_path, None)
        assert none_yet.run_requests == [] and "not been materialized" in none_yet.skip_message

        _publish_catalog(instance, tmp_path, _catalog(ids))
        first = _catalog_tick(instance, tmp_path, None)
        assert sensors.requested_buckets(first.run_requests) == BUCKET_KEYS, "no baseline yet: every bucket"
        assert len(first.run_requests) == 1

        again = _catalog_tick(instance, tmp_path, first.cursor)
        assert again.run_requests == [] and "no new photo_catalog" in again.skip_message

        _publish_catalog(instance, tmp_path, _catalog(ids))
        same = _catalog_tick(instance, tmp_path, again.cursor)
        assert same.run_requests == [] and "changed no bucket" in same.skip_message

        added, removed, updated = "photo999", ids[10], ids[20]
        new_ids = [i for i in ids if i != removed] + [added]
        _publish_catalog(instance, tmp_path, _catalog(new_ids, {updated: "https://images.example/new.jpg"}))
        changed = _catalog_tick(instance, tmp_path, same.cursor)
        expected = sorted({bucket_of(i, len(BUCKET_KEYS)) for i in (added, removed, updated)})
        assert sorted(sensors.requested_buckets(changed.run_requests)) == expected
        assert all(r.tags[jobs.TRIGGER_TAG] == "catalog_change" for r in changed.run_requests)
        assert len({r.run_key for r in changed.run_requests}) == len(changed.run_requests)


def test_catalog_change_sensor_takes_an_index_built_after_the_catalog_as_baseline(tmp_path):
    with DagsterInstance.ephemeral() as instance:
        _publish_catalog(instance, tmp_path, _catalog(["a", "b", "c"]))
        instance.report_runless_asset_event(AssetMaterialization("search_index"))
        result = _catalog_tick(instance, tmp_path, None)
        assert result.run_requests == [] and "changed no bucket" in result.skip_message
        _publish_catalog(instance, tmp_path, _catalog(["a", "b"]))
        result = _catalog_tick(instance, tmp_path, result.cursor)
        assert sensors.requested_buckets(result.run_requests) == [bucket_of("c", len(BUCKET_KEYS))]


def test_bucket_ranges_group_neighbours():
    assert sensors.bucket_ranges(["b05", "b03", "b04", "b10", "b63"]) == [
        ("b03", "b05"),
        ("b10", "b10"),
        ("b63", "b63"),
    ]
    assert sensors.bucket_ranges([]) == []


# -- scale-out --------------------------------------------------------------------------


def _load_deploy_defs(name: str):
    namespace = runpy.run_path(str(ROOT / "deploy" / name / f"{name}_definitions.py"))
    return namespace["defs"]


def test_the_k8s_definitions_validate_with_their_run_config():
    defs = _load_deploy_defs("k8s")
    Definitions.validate_loadable(defs)
    run_config = yaml.safe_load((ROOT / "deploy" / "k8s" / "run_config.yaml").read_text())
    for job_name in ("ingest_release", "update_vectors", "publish_index"):
        job = defs.resolve_job_def(job_name)
        assert job.executor_def.name == "k8s"
        assert "k8s" in validate_run_config(job, run_config)["execution"]
    assert defs.resolve_job_def("update_vectors").partitions_def is not None


def test_celery_runs_need_no_run_config_and_reach_the_broker_the_workers_start_with(monkeypatch):
    """A run launched by a sensor, a schedule or a backfill carries no run config, so the runs' executor
    must be configured from the file the workers start with (read here by dagster-celery's own worker
    CLI code): the same broker, backend and Celery settings, taken from the same variables."""
    from dagster_celery.cli import get_validated_config

    monkeypatch.setenv("DAGSTER_CELERY_BROKER_URL", f"pyamqp://guest@127.0.0.1:5672/{uuid.uuid4().hex}")
    monkeypatch.setenv("DAGSTER_CELERY_BACKEND_URL", "redis://127.0.0.1:6379/7")
    defs = _load_deploy_defs("celery")
    Definitions.validate_loadable(defs)
    workers = get_validated_config(str(ROOT / "deploy" / "celery" / "run_config.yaml"))
    for job_name in ("ingest_release", "update_vectors", "publish_index"):
        job = defs.resolve_job_def(job_name)
        assert job.executor_def.name == "celery"
        validate_run_config(job, {})
        runs = job.executor_def.config_schema.resolve_config({})
        assert runs.success and runs.value["config"] == workers, job_name
    assert workers["broker"] == os.environ["DAGSTER_CELERY_BROKER_URL"]
    assert workers["config_source"]["task_acks_late"], "a worker that dies must hand its step back"


def test_credentials_are_env_vars_resolved_when_a_run_starts(monkeypatch):
    """The definitions hold the variable's name, never its value; the run reads the value at launch."""
    monkeypatch.setenv("IMAGE_SEARCH_ES_PASSWORD", "at-load")
    monkeypatch.delenv("IMAGE_SEARCH_ES_API_KEY", raising=False)
    resource = SettingsResource.with_credentials_from_env()
    assert resource.es_password == EnvVar("IMAGE_SEARCH_ES_PASSWORD") and resource.es_api_key is None
    assert "at-load" not in repr(resource)
    seen = []

    @asset
    def probe(settings: ResourceParam[Settings]) -> None:
        seen.append(settings.es_password)

    monkeypatch.setenv("IMAGE_SEARCH_ES_PASSWORD", "at-launch")
    assert materialize([probe], resources={"settings": resource}).success
    assert seen == ["at-launch"]


def test_definitions_wire_pools_retries_automation_and_default_running_operations():
    from dagster import AssetKey, DefaultScheduleStatus, DefaultSensorStatus

    from definitions import defs

    graph = defs.resolve_asset_graph()
    embeddings = graph.get(AssetKey("image_embeddings"))
    assert embeddings.pools == {"clip_model"}
    images_node = defs.resolve_job_def("update_vectors").graph.node_named("images")
    assert images_node.definition.retry_policy is not None and images_node.definition.retry_policy.max_retries >= 1
    for key in ("image_embeddings", "search_index", "near_duplicates"):
        assert graph.get(AssetKey(key)).automation_condition is not None, key
    assert graph.get(AssetKey("images")).automation_condition is None, (
        "images run for changed buckets only (the sensor)"
    )
    assert defs.resolve_schedule_def("refresh_schedule").default_status == DefaultScheduleStatus.RUNNING
    for name in ("release_sensor", "catalog_change_sensor", "automation_sensor"):
        assert defs.resolve_sensor_def(name).default_status == DefaultSensorStatus.RUNNING
