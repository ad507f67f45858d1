"""Scale-out that runs: Dagster on PostgreSQL, a backfill of the vectors cut into runs, its steps on two real Celery workers.

Everything is the deployment path of docs/scaling.md, on the machine's real services
(PostgreSQL, RabbitMQ, Redis; ``.ci/run`` starts them): the instance is
``deploy/postgres/dagster.yaml`` on a database of its own, the code location is
``deploy/celery/workspace.yaml``, a real ``dagster-daemon`` cuts the backfill that
``image-search backfill`` submits into runs of ``IMAGE_SEARCH_BUCKETS_PER_RUN`` buckets and
launches them, and two ``dagster-celery`` workers on a RabbitMQ virtual host of its own run
their steps. Each test creates its database and virtual host under a unique name and drops
them after, so tests of other suites on the same services never meet them. A worker is held
at a known point (``tests/pause.py``) while the test looks or kills it, never on a log line.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from benchmarks import scale_harness as harness
from image_search.sample import write_release
from resources.vectors.vector_store import load_embeddings
from tests.pause import PausePoint, kill_group
from tests.pipeline import photo_ids, settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BUCKETS_PER_RUN = 32
#: Only a guard against a hung test: every wait below is for a condition, never a duration.
GIVE_UP_S = 600
HOST = socket.gethostname()


# -- the services: a database and a virtual host per test -------------------------------


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database for one test's instance, dropped after."""
    with harness.database("image_search_test") as url:
        yield url


@pytest.fixture
def broker_url():
    """A fresh RabbitMQ virtual host for one test's broker, deleted after."""
    with harness.broker("image-search-test") as url:
        yield url


@pytest.fixture
def cluster_env(tmp_path, tiny_models, pg_url, broker_url, monkeypatch) -> dict[str, str]:
    """The environment every process of the deployment shares: the PostgreSQL instance, the broker, the
    settings, one IMAGE_SEARCH_HOME (standing in for the shared filesystem) holding the catalog of a
    generated 12-photo release (ingested in-process: not what these tests are about), the tiny
    models; clip_model at two slots (one encoder per worker "machine")."""
    image_model, text_model = tiny_models
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(ROOT / "deploy" / "postgres" / "dagster.yaml", dagster_home / "dagster.yaml")
    write_release(tmp_path / "release", photos=12, seed=71)
    for name, value in {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "DAGSTER_HOME": dagster_home,
        "DAGSTER_PG_URL": pg_url,
        "DAGSTER_CELERY_BROKER_URL": broker_url,
        "DAGSTER_CELERY_BACKEND_URL": harness.BACKEND_URL,
        "IMAGE_SEARCH_HOME": tmp_path / "home",
        "IMAGE_SEARCH_DATASET": tmp_path / "release",
        "IMAGE_SEARCH_IMAGE_MODEL": image_model,
        "IMAGE_SEARCH_TEXT_MODEL": text_model,
        "IMAGE_SEARCH_BUCKETS_PER_RUN": BUCKETS_PER_RUN,
    }.items():
        monkeypatch.setenv(name, str(value))
    env = dict(os.environ)
    with instance_of(env) as instance:
        instance.event_log_storage.set_concurrency_slots("clip_model", 2)
    from definitions import defs

    with DagsterInstance.ephemeral() as scratch:
        defs.resolve_job_def("ingest_release").execute_in_process(instance=scratch)
    harness.stop_sensors(env)
    return env


def instance_of(env: dict[str, str]) -> DagsterInstance:
    """The deployment's instance (the test's environment holds DAGSTER_PG_URL)."""
    return DagsterInstance.from_config(env["DAGSTER_HOME"])


# -- the processes of the deployment ----------------------------------------------------


def start_backfill(env: dict[str, str], log: Path) -> subprocess.Popen:
    return harness.spawn([str(BIN / "image-search"), "backfill", "--select", "group:vectors", "--wait"], env, log)


@contextmanager
def vectors_backfill_on_two_workers(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[PausePoint, dict]]:
    """Celery workers a and b, a daemon and a backfill of the vectors, worker a held before its first store lock.

    Yields the held pause point and the processes by name with their logs (``backfill``
    among them); kills whatever of them still runs on the way out. The daemon starts once the
    backfill is submitted, so its first look finds it: the backfill daemon looks every 30 s
    (Dagster's ``DEFAULT_DAEMON_INTERVAL_SECONDS``, not configurable), and a backfill submitted
    just after a look would wait for the next.
    """
    with PausePoint("resources.storage.locks:store_lock") as pause:
        processes = {
            "worker a": (harness.start_worker(pause.env(env), "worker-a", tmp_path / "a.log"), tmp_path / "a.log"),
            "worker b": (harness.start_worker(env, "worker-b", tmp_path / "b.log"), tmp_path / "b.log"),
        }
        try:
            processes["backfill"] = (start_backfill(env, tmp_path / "backfill.log"), tmp_path / "backfill.log")
            until(lambda: backfills(env), "the backfill submitted", processes)
            processes["daemon"] = (harness.start_daemon(env, tmp_path / "daemon.log"), tmp_path / "daemon.log")
            pause.wait(processes["worker a"][0], tmp_path / "a.log")
            yield pause, processes
        finally:
            for process, _ in processes.values():
                if process.poll() is None:
                    kill_group(process)


def until(condition, what: str, processes: dict[str, tuple[subprocess.Popen, Path]]):
    """Poll ``condition`` until it returns something true; fail at once if one of ``processes`` ends first."""
    for _ in range(GIVE_UP_S * 2):
        value = condition()
        if value:
            return value
        for name, (process, log) in processes.items():
            assert process.poll() is None, (
                f"{name} ended (rc {process.returncode}) before {what}\n{log.read_text()[-4000:]}"
            )
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {GIVE_UP_S} s")


def step_history(env: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(run id, step key, Celery worker, outcome) for every step a worker took, in order; outcome is
    ``success``, ``failure`` or ``running`` (taken, no end recorded by that worker)."""
    history = []
    with instance_of(env) as instance:
        for run in instance.get_runs():
            taken: list[list[str]] = []
            for entry in instance.all_logs(run.run_id):
                event = entry.dagster_event
                if event is None:
                    continue
                if event.event_type == DagsterEventType.ENGINE_EVENT and entry.step_key:
                    worker = event.engine_event_data.metadata.get("Celery worker")
                    if worker is not None:
                        taken.append([run.run_id, entry.step_key, worker.value, "running"])
                elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                    for item in reversed(taken):
                        if item[1] == entry.step_key:
                            item[3] = "success" if event.event_type == DagsterEventType.STEP_SUCCESS else "failure"
                            break
            history.extend(tuple(item) for item in taken)
    return history


def vectors(env: dict[str, str]) -> dict[str, np.ndarray]:
    ids, matrix = load_embeddings(settings(env), env["IMAGE_SEARCH_IMAGE_MODEL"])
    assert len(set(ids)) == len(ids), "a photo has more than one vector"
    return dict(zip(ids, matrix))


def single_process_vectors(env: dict[str, str], home: Path) -> dict[str, np.ndarray]:
    """The vectors of the same release made by one in-process run over every bucket (the default path)."""
    from dagster import materialize

    from assets.embeddings import image_embeddings
    from assets.images import images
    from resources.dagster_resources import ClipResource, SettingsResource

    shutil.copytree(Path(env["IMAGE_SEARCH_HOME"]) / "catalog", home / "catalog")
    resource = SettingsResource(
        home=str(home),
        dataset=env["IMAGE_SEARCH_DATASET"],
        image_model=env["IMAGE_SEARCH_IMAGE_MODEL"],
        text_model=env["IMAGE_SEARCH_TEXT_MODEL"],
    )
    with DagsterInstance.ephemeral() as scratch:
        result = materialize(
            [images, image_embeddings],
            instance=scratch,
            resources={"settings": resource, "clip": ClipResource(settings=resource)},
            tags={"dagster/asset_partition_range_start": "b00", "dagster/asset_partition_range_end": "b63"},
        )
    assert result.success
    return vectors({**env, "IMAGE_SEARCH_HOME": str(home)})


def backfills(env: dict[str, str]) -> list:
    with instance_of(env) as instance:
        return instance.get_backfills()


def backfill_runs(env: dict[str, str]) -> list:
    with instance_of(env) as instance:
        return instance.get_runs()


# -- the tests --------------------------------------------------------------------------


def test_a_backfill_of_the_vectors_runs_its_steps_on_two_celery_workers(tmp_path, cluster_env):
    env, photos = cluster_env, photo_ids(cluster_env)
    # Worker a stops before its first store lock (inside its first step) until the test lets it go:
    # whatever the broker's order, worker b then takes and finishes steps meanwhile.
    with vectors_backfill_on_two_workers(env, tmp_path) as (pause, processes):
        until(
            lambda: any(w == f"worker-b@{HOST}" and outcome == "success" for *_, w, outcome in step_history(env)),
            "a step finished by worker b while worker a holds one",
            processes,
        )
        pause.release()
        assert processes["backfill"][0].wait(timeout=GIVE_UP_S) == 0, (tmp_path / "backfill.log").read_text()[-4000:]
    history = step_history(env)
    workers = {worker for *_, worker, outcome in history if outcome == "success"}
    assert workers == {f"worker-a@{HOST}", f"worker-b@{HOST}"}, history
    runs = backfill_runs(env)
    assert len(runs) >= 64 // BUCKETS_PER_RUN and all(run.status == DagsterRunStatus.SUCCESS for run in runs)
    assert {
        (s, e)
        for s, e in (
            (r.tags.get("dagster/asset_partition_range_start"), r.tags.get("dagster/asset_partition_range_end"))
            for r in runs
        )
    } >= {("b00", "b31"), ("b32", "b63")}

    got = vectors(env)
    assert sorted(got) == photos, "every photo has exactly one vector"
    reference = single_process_vectors(env, tmp_path / "single")
    assert sorted(reference) == photos
    for photo_id in photos:
        np.testing.assert_allclose(got[photo_id], reference[photo_id], atol=1e-5)


def test_a_worker_killed_in_the_middle_of_a_step_hands_it_back_and_the_backfill_finishes(tmp_path, cluster_env):
    env, photos = cluster_env, photo_ids(cluster_env)
    with vectors_backfill_on_two_workers(env, tmp_path) as (_, processes):
        (held,) = [
            (run_id, step) for run_id, step, worker, outcome in step_history(env) if worker == f"worker-a@{HOST}"
        ]
        kill_group(processes.pop("worker a")[0])
        assert processes["backfill"][0].wait(timeout=GIVE_UP_S) == 0, (tmp_path / "backfill.log").read_text()[-4000:]
    history = step_history(env)
    retaken = [(worker, outcome) for run_id, step, worker, outcome in history if (run_id, step) == held]
    assert retaken == [(f"worker-a@{HOST}", "running"), (f"worker-b@{HOST}", "success")], history
    assert all(run.status == DagsterRunStatus.SUCCESS for run in backfill_runs(env))
    assert sorted(vectors(env)) == photos, "every photo vectorised exactly once"


# -- the daemon on the PostgreSQL instance ----------------------------------------------


def sensor_skipped(env: dict[str, str], name: str) -> bool:
    """Whether the sensor ``name`` has ticked at least once and skipped."""
    from dagster._core.scheduler.instigation import TickStatus

    with instance_of(env) as instance:
        for state in instance.all_instigator_state():
            if state.instigator_name == name:
                ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
                return any(tick.status == TickStatus.SKIPPED for tick in ticks)
    return False


def runs_of(env: dict[str, str], trigger: str, finished: bool = False) -> list:
    """Records of the runs that ``trigger`` (``new_release``, ``schedule``) queued; only finished ones if asked."""
    with instance_of(env) as instance:
        return [
            record
            for record in instance.get_run_records()
            if record.dagster_run.tags.get("image_search/trigger") == trigger
            and (record.dagster_run.is_finished or not finished)
        ]


def test_the_daemon_on_postgresql_runs_the_release_sensor_and_the_schedule_one_run_at_a_time(
    tmp_path, tiny_models, pg_url, monkeypatch
):
    """A release folder appears after the sensor has looked and found none: the sensor queues a refresh,
    the run queue launches it; then the schedule (every minute here) queues its own; with
    ``max_concurrent_runs: 1`` in the instance profile no two runs ever overlap.

    The schedule starts stopped and is started (as in the UI) only once the sensor's run is in
    the queue: a scheduled refresh that ingested the new release first would leave the sensor
    nothing new to find, so the test would race the minute boundary. The queue launches runs in
    the order they came, so the scheduled run comes after the sensor's, while the wait for the
    next minute overlaps the sensor's run."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    profile = yaml.safe_load((ROOT / "deploy" / "postgres" / "dagster.yaml").read_text())
    profile["concurrency"]["runs"]["max_concurrent_runs"] = 1
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(profile))
    for name, value in {
        "DAGSTER_HOME": dagster_home,
        "DAGSTER_PG_URL": pg_url,
        "IMAGE_SEARCH_HOME": tmp_path / "home",
        "IMAGE_SEARCH_DATASET": tmp_path / "incoming",
        "IMAGE_SEARCH_IMAGE_MODEL": tiny_models[0],
        "IMAGE_SEARCH_TEXT_MODEL": tiny_models[1],
        "IMAGE_SEARCH_REFRESH_CRON": "* * * * *",
        "IMAGE_SEARCH_RELEASE_POLL_SECONDS": 30,
    }.items():
        monkeypatch.setenv(name, str(value))
    env = dict(os.environ)
    harness.stop_sensors(env, ("catalog_change_sensor", "automation_sensor"), workspace="workspace.yaml")
    harness.switch(env, "schedule", "stop", ("refresh_schedule",), workspace="workspace.yaml")
    log = tmp_path / "daemon.log"
    daemon = harness.start_daemon(env, log, workspace="workspace.yaml")
    processes = {"daemon": (daemon, log)}
    try:
        until(lambda: sensor_skipped(env, "release_sensor"), "a release_sensor tick that found no release", processes)
        write_release(tmp_path / "incoming", photos=12, seed=72)
        until(lambda: runs_of(env, "new_release"), "a run of the release sensor", processes)
        harness.switch(env, "schedule", "start", ("refresh_schedule",), workspace="workspace.yaml")
        (sensed,) = until(lambda: runs_of(env, "new_release", True), "a finished run of the release sensor", processes)
        scheduled = until(lambda: runs_of(env, "schedule", finished=True), "a finished run of the schedule", processes)
    finally:
        kill_group(daemon)
    assert sensed.dagster_run.status == DagsterRunStatus.SUCCESS, log.read_text()[-4000:]
    assert sensed.dagster_run.job_name == "ingest_release"
    assert all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in scheduled), log.read_text()[-4000:]
    with instance_of(env) as instance:
        spans = sorted((r.start_time, r.end_time) for r in instance.get_run_records() if r.start_time is not None)
    assert len(spans) >= 2
    for (_, first_end), (second_start, _) in zip(spans, spans[1:]):
        assert first_end is not None and first_end <= second_start, f"two runs overlapped: {spans}"
    assert (tmp_path / "home" / "catalog" / "catalog.parquet").exists()


# -- the instance's database goes away --------------------------------------------------


class DatabaseDown:
    """The test's database refuses new connections and its open ones are cut, as in a restart, for the
    ``with`` block; only this test's database, so other suites on the same server never notice."""

    def __init__(self, pg_url: str):
        self.name = pg_url.rsplit("/", 1)[1]

    def __enter__(self) -> "DatabaseDown":
        harness.pg_admin(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
        harness.pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.name}'")
        return self

    def __exit__(self, *exc) -> None:
        harness.pg_admin(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')


def test_image_search_materialize_rides_out_a_database_outage_and_keeps_what_was_written(
    tmp_path, tiny_models, pg_url, monkeypatch
):
    """The database goes away while a run on the PostgreSQL instance is held mid-encoding (one bucket's
    vectors written): ``image-search materialize`` says so in one line instead of dying (which would
    stop the run), says when it answers again, and the run finishes with every photo encoded once."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(ROOT / "deploy" / "postgres" / "dagster.yaml", dagster_home / "dagster.yaml")
    write_release(tmp_path / "release", photos=12, seed=71)
    for name, value in {
        "DAGSTER_HOME": dagster_home,
        "DAGSTER_PG_URL": pg_url,
        "IMAGE_SEARCH_HOME": tmp_path / "home",
        "IMAGE_SEARCH_DATASET": tmp_path / "release",
        "IMAGE_SEARCH_IMAGE_MODEL": tiny_models[0],
        "IMAGE_SEARCH_TEXT_MODEL": tiny_models[1],
    }.items():
        monkeypatch.setenv(name, str(value))
    env, photos = dict(os.environ), photo_ids(dict(os.environ))
    with instance_of(env) as instance:
        instance.event_log_storage.set_concurrency_slots("clip_model", 1)
    from definitions import defs

    with DagsterInstance.ephemeral() as scratch:
        defs.resolve_job_def("ingest_release").execute_in_process(instance=scratch)

    log = tmp_path / "materialize.log"
    with PausePoint("resources.vectors.vector_store:VectorStore.write_chunk#2") as pause:
        child = harness.spawn(
            [str(BIN / "image-search"), "materialize", "--select", "group:vectors", "--partition-range", "b00...b63"],
            pause.env(env),
            log,
        )
        try:
            pause.wait(child, log)
            before = set(vectors(env))
            with DatabaseDown(pg_url):
                until(
                    lambda: "the instance's database does not answer" in log.read_text(),
                    "the outage reported",
                    {"image-search materialize": (child, log)},
                )
            pause.release()
            assert child.wait(timeout=GIVE_UP_S) == 0, log.read_text()[-4000:]
        finally:
            if child.poll() is None:
                kill_group(child)
    said = [line for line in log.read_text().splitlines() if "the instance's database" in line]
    assert len(said) == 2 and said[1].startswith("image-search: the instance's database answers again after "), said
    assert 0 < len(before) < len(photos)
    assert sorted(vectors(env)) == photos, "every photo encoded once, the vectors written before the outage kept"
