"""A killed run never blocks the next one: dead runs, their pool slots and their locks recovered.

The end-to-end tests drive the command ``make demo`` runs (``image-search materialize`` over
``dagster asset materialize``) on a persistent instance with the project's own
``dagster.yaml`` and ``clip_model`` limited to one slot, each run in its own process group.
A run is SIGKILLed while the test holds it at a known point (``tests/pause.py``), never when
a log line appears.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from benchmarks import scale_harness as harness
from image_search.sample import write_release
from resources.errors import ImageSearchError
from resources.index import open_backend
from resources.run_recovery import IN_PROGRESS
from resources.storage.locks import store_lock
from resources.storage.processes import ProcessRef, pid_running
from tests.pause import PausePoint, hold_lock, kill_group
from tests.pipeline import QUICK_DAEMON_ENV, photo_ids, quicken_daemons, settings, vector_ids

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ALL_BUCKETS = ["--partition-range", "b00...b63"]
RANGE_TAGS = {"dagster/asset_partition_range_start": "b00", "dagster/asset_partition_range_end": "b63"}


# -- processes, waits and locks ---------------------------------------------------------


def test_a_process_counts_as_alive_only_while_its_pid_names_the_same_process():
    assert ProcessRef.current().is_alive() is True
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    ref = ProcessRef(socket.gethostname(), child.pid, psutil.Process(child.pid).create_time())
    assert ref.is_alive() is True
    child.stdin.close()
    child.wait()
    assert ref.is_alive() is False, "exited and reaped"
    started = psutil.Process().create_time()
    assert pid_running(os.getpid(), alive_at=started) is True
    assert pid_running(os.getpid(), alive_at=started - 60) is False, "a pid reused by a process started later"
    assert ProcessRef("another-host", os.getpid(), started).is_alive() is None, "cannot be seen from here"


def test_a_wait_for_a_live_lock_holder_names_it_and_gives_up_with_what_to_do(tmp_path):
    lock = tmp_path / "locks" / "images" / "b05.lock"
    holder = hold_lock(lock, run_id="run-a")
    try:
        said = []
        with pytest.raises(ImageSearchError) as failure:
            with store_lock(lock, "images bucket b05", timeout=0.5, log=said.append):
                pass
        named = f"run run-a, pid {holder.pid} on {socket.gethostname()}"
        assert len(said) == 1 and said[0].startswith(
            f"waiting for another run ({named}) that is writing images bucket b05"
        )
        message = str(failure.value)
        assert named in message and "IMAGE_SEARCH_LOCK_TIMEOUT" in message and "\n" not in message
    finally:
        holder.stdin.close()
        holder.wait()
    with store_lock(lock, "images bucket b05", timeout=5) as left_by:
        assert left_by is None, "a holder that exited cleanly leaves no record"


def test_a_lock_whose_holder_was_killed_is_taken_over_naming_it(tmp_path):
    lock = tmp_path / "locks" / "search_index.lock"
    holder = hold_lock(lock, run_id="run-a")
    holder.kill()
    holder.wait()
    with store_lock(lock, "search_index", timeout=5) as left_by:
        assert left_by == f"run run-a, pid {holder.pid} on {socket.gethostname()}"
    with store_lock(lock, "search_index", timeout=5) as left_by:
        assert left_by is None


# -- the command-line path, end to end --------------------------------------------------


@pytest.fixture
def instance_env(tmp_path, tiny_models, monkeypatch) -> dict[str, str]:
    """What ``make demo`` sets up: a DAGSTER_HOME with the project's dagster.yaml and clip_model at one
    slot, and an IMAGE_SEARCH_HOME holding the catalog of a generated 12-photo release (ingested
    in-process: not what these tests are about), with the tiny models."""
    image_model, text_model = tiny_models
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(ROOT / ".dagster" / "dagster.yaml", dagster_home / "dagster.yaml")
    write_release(tmp_path / "release", photos=12, seed=71)
    for name, value in {
        "DAGSTER_HOME": dagster_home,
        "IMAGE_SEARCH_HOME": tmp_path / "home",
        "IMAGE_SEARCH_DATASET": tmp_path / "release",
        "IMAGE_SEARCH_IMAGE_MODEL": image_model,
        "IMAGE_SEARCH_TEXT_MODEL": text_model,
    }.items():
        monkeypatch.setenv(name, str(value))
    subprocess.run([str(BIN / "dagster"), "instance", "concurrency", "set", "clip_model", "1"], check=True)
    from definitions import defs

    with DagsterInstance.ephemeral() as scratch:
        defs.resolve_job_def("ingest_release").execute_in_process(instance=scratch)
    return dict(os.environ)


def start(env: dict[str, str], log: Path, *args: str, pause: PausePoint | None = None) -> subprocess.Popen:
    """``image-search materialize *args`` as scripts/demo.sh runs it, in its own process group, output in ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(
            [str(BIN / "image-search"), "materialize", *args],
            cwd=ROOT,
            env=pause.env(env) if pause else env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def materialize(env: dict[str, str], log: Path, *args: str) -> str:
    """Run ``image-search materialize *args`` to the end; return its output, failing on a non-zero exit."""
    child = start(env, log, *args)
    assert child.wait() == 0, log.read_text()[-4000:]
    return log.read_text()


def killed_at(target: str, env: dict[str, str], log: Path, *args: str) -> str:
    """Start ``image-search materialize *args``, hold it before ``target``, SIGKILL its process group there.

    Returns the id of the run it left behind.
    """
    with PausePoint(target) as pause:
        child = start(env, log, *args, pause=pause)
        try:
            pause.wait(child, log)
        finally:
            kill_group(child)
    with instance_of(env) as instance:
        (run,) = instance.get_runs(limit=1)
        assert run.status == DagsterRunStatus.STARTED, "the killed run stays started: nothing else tells"
    return run.run_id


def instance_of(env: dict[str, str]) -> DagsterInstance:
    return DagsterInstance.from_config(env["DAGSTER_HOME"])


def slot_holders(env: dict[str, str], pool: str = "clip_model") -> list[str]:
    with instance_of(env) as instance:
        return [slot.run_id for slot in instance.event_log_storage.get_concurrency_info(pool).claimed_slots]


def test_runs_killed_holding_bucket_locks_the_encoder_slot_and_the_index_lock_do_not_block_the_next(
    tmp_path, instance_env
):
    env, photos = instance_env, photo_ids(instance_env)

    # Mid-download, holding the images bucket locks: 3 photos journaled, the 4th not yet.
    downloading = killed_at(
        "resources.images.image_store:ImageStore.append_journal#4",
        env,
        tmp_path / "download.log",
        "--select",
        "group:vectors",
        *ALL_BUCKETS,
    )

    # Mid-encoding, holding the clip_model slot and the embeddings bucket locks: one bucket's vectors written.
    encoding = killed_at(
        "resources.vectors.vector_store:VectorStore.write_chunk#2",
        env,
        tmp_path / "encode.log",
        "--select",
        "group:vectors",
        *ALL_BUCKETS,
    )
    log = (tmp_path / "encode.log").read_text()
    assert f"image-search: recovered run {downloading} (image_embeddings, images; b00...b63): its worker process" in log
    assert f"images lock(s) left by run {downloading}, pid" in log and "which died holding them" in log
    assert slot_holders(env) == [encoding], "the dead run holds the only clip_model slot"
    before = vector_ids(env)
    assert 0 < len(before) < len(photos)

    log = materialize(env, tmp_path / "vectors.log", "--select", "group:vectors", *ALL_BUCKETS)
    assert f"image-search: recovered run {encoding} " in log and "freed 1 pool slot(s) (clip_model)" in log
    assert f"embeddings lock(s) left by run {encoding}, pid" in log
    assert f"{len(photos) - len(before)} encoded" in log, "only the photos without a vector are encoded"
    assert sorted(vector_ids(env)) == photos, "every photo has exactly one vector"
    assert slot_holders(env) == []

    # Mid-publish, holding the index lock: the build is complete, CURRENT not switched yet.
    publishing = killed_at("resources.index.local:_publish", env, tmp_path / "publish.log", "--select", "group:search")
    log = materialize(env, tmp_path / "search.log", "--select", "group:search")
    assert f"image-search: recovered run {publishing} " in log and "it held no pool slot" in log
    assert f"search_index lock(s) left by run {publishing}, pid" in log
    backend = open_backend(settings(env))
    assert backend.count() == len(photos) and all(backend.get(p) is not None for p in photos), "every photo once"

    with instance_of(env) as instance:
        assert all(
            instance.get_run_by_id(r).status == DagsterRunStatus.FAILURE for r in (downloading, encoding, publishing)
        )
        assert instance.get_runs(filters=RunsFilter(statuses=IN_PROGRESS)) == []


def test_a_wait_for_a_slot_held_by_a_live_run_is_reported_and_gives_up_after_the_timeout(tmp_path, instance_env):
    env = instance_env
    with PausePoint("resources.vectors.vector_store:VectorStore.write_chunk#1") as pause:
        holder = start(env, tmp_path / "holder.log", "--select", "group:vectors", *ALL_BUCKETS, pause=pause)
        try:
            pause.wait(holder, tmp_path / "holder.log")
            (holding,) = slot_holders(env)

            waiter = start(
                {**env, "IMAGE_SEARCH_LOCK_TIMEOUT": "3"},
                tmp_path / "waiter.log",
                "--select",
                "group:vectors",
                *ALL_BUCKETS,
            )
            assert waiter.wait() == 2
            lines = (tmp_path / "waiter.log").read_text().splitlines()
            waiting = [line for line in lines if "is waiting for a slot of pool clip_model" in line]
            assert waiting and waiting[0].startswith(
                f"image-search: image_embeddings is waiting for a slot of pool clip_model, held by run {holding} "
            )
            assert "giving up after 3 s" in waiting[0]
            assert (
                lines[-1].startswith(
                    f"image-search: image_embeddings waited 3 s for a slot of pool clip_model, held by run {holding} "
                )
                and "IMAGE_SEARCH_LOCK_TIMEOUT" in lines[-1]
            )
            assert slot_holders(env) == [holding], "the waiter left nothing behind"
            with instance_of(env) as instance:
                (latest,) = instance.get_runs(limit=1)
                assert latest.run_id != holding and latest.status == DagsterRunStatus.FAILURE, "the waiter's run ended"
        finally:
            pause.release()
        assert holder.wait() == 0, (tmp_path / "holder.log").read_text()[-4000:]
    assert slot_holders(env) == []


# -- the deployment path: the daemon ----------------------------------------------------

#: Only a guard against a hung test: every wait below is for a condition, never a duration.
GIVE_UP_S = 600


def until(condition, what: str, process: subprocess.Popen, log: Path):
    """Poll ``condition`` until it returns something true; fail at once if ``process`` ends first."""
    for _ in range(GIVE_UP_S * 2):
        value = condition()
        if value:
            return value
        assert process.poll() is None, (
            f"{process.args[0]} ended (rc {process.returncode}) before {what}\n{log.read_text()[-4000:]}"
        )
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {GIVE_UP_S} s")


def start_daemon(env: dict[str, str], log: Path) -> subprocess.Popen:
    """``dagster-daemon run`` on the project's workspace, in its own process group."""
    with log.open("w") as out:
        return subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_with_the_daemon_a_killed_run_is_failed_by_run_monitoring_its_slot_freed_and_retried(tmp_path, instance_env):
    """A run killed together with its daemon and code server (a lost machine, or ``make demo`` killed
    while serving): once a daemon runs again, run monitoring asks the project's run launcher about the
    worker, fails the run, frees its clip_model slot, and run retries launch it again."""
    env, photos, dagster = instance_env | QUICK_DAEMON_ENV, photo_ids(instance_env), str(BIN / "dagster")
    quicken_daemons(Path(env["DAGSTER_HOME"]))
    # Stopped, as in the UI: on this fresh instance they would launch runs of their own.
    harness.stop_sensors(env, ("release_sensor", "catalog_change_sensor", "automation_sensor"), "workspace.yaml")
    killed = str(uuid.uuid4())
    with PausePoint("resources.vectors.vector_store:VectorStore.write_chunk#2") as pause:
        daemon = start_daemon(pause.env(env), tmp_path / "daemon.log")
        try:
            subprocess.run(
                [
                    dagster,
                    "job",
                    "launch",
                    "-w",
                    "workspace.yaml",
                    "-j",
                    "update_vectors",
                    "--run-id",
                    killed,
                    "--tags",
                    json.dumps(RANGE_TAGS),
                ],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
            )
            pause.wait(daemon, tmp_path / "daemon.log")
            # The retry daemon skips failures older than its first look: let it have looked.
            until(lambda: retry_cursor(env), "the retry daemon's first look", daemon, tmp_path / "daemon.log")
        finally:
            kill_group(daemon)
    assert slot_holders(env) == [killed]
    before = vector_ids(env)

    daemon = start_daemon(env, tmp_path / "daemon-again.log")
    try:
        retry = until(lambda: finished_retry(env, killed), "a finished retry", daemon, tmp_path / "daemon-again.log")
    finally:
        kill_group(daemon)
    with instance_of(env) as instance:
        assert retry.status == DagsterRunStatus.SUCCESS, (tmp_path / "daemon-again.log").read_text()[-4000:]
        assert instance.get_run_by_id(killed).status == DagsterRunStatus.FAILURE
        messages = [entry.message for entry in instance.all_logs(killed)]
        assert any("Detected run worker status FAILED" in m and "is no longer running" in m for m in messages), (
            messages[-5:]
        )
        encoded = [e.message for e in instance.all_logs(retry.run_id) if " encoded (" in e.message]
    assert slot_holders(env) == []
    assert any(f"image_embeddings: {len(photos) - len(before)} encoded" in m for m in encoded), encoded
    assert sorted(vector_ids(env)) == photos


def retry_cursor(env: dict[str, str]) -> bool:
    # Dagster's own key for the cursor of the event-log consumer that launches run retries
    # (dagster/_daemon/auto_run_reexecution/event_log_consumer.py, _create_cursor_key).
    key = f"EVENT_LOG_CONSUMER_CURSOR-{DagsterEventType.RUN_FAILURE.value}"
    with instance_of(env) as instance:
        return key in instance.daemon_cursor_storage.get_cursor_values({key})


def finished_retry(env: dict[str, str], run_id: str):
    with instance_of(env) as instance:
        retries = instance.get_runs(filters=RunsFilter(tags={"dagster/parent_run_id": run_id}))
        return next((run for run in retries if run.is_finished), None)
