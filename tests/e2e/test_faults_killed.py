"""Faults provoked by killing a process: a run killed mid-download, mid-encoding and mid-index (the real
``dagster`` CLI as a child), and a lock holder in another process, waited for or killed. The faults a run
survives in-process: test_faults."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from dagster import DagsterInstance

from assets.partitions import photo_bucket
from resources.errors import ImageSearchError
from resources.images.image_store import ImageStore
from resources.index import open_backend
from resources.storage.locks import store_lock
from tests.http_fixtures import FaultServer
from tests.pause import PausePoint, hold_lock, kill_group
from tests.pipeline import ALL_BUCKETS, check_results, run_job, served_release, settings, vector_ids

ROOT = Path(__file__).resolve().parents[2]


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


def _cli(args: list[str], dagster_home: Path, log: Path, pause: PausePoint) -> subprocess.Popen:
    """``dagster asset materialize`` in its own process group, as a user runs it, its log in ``log``.

    Steps run inside that process (the in-process executor), so one SIGKILL stops the run
    as a lost node or an out-of-memory kill would; ``pause`` holds it where the test wants.
    """
    dagster_home.mkdir(exist_ok=True)
    shutil.copy(ROOT / ".dagster" / "dagster.yaml", dagster_home / "dagster.yaml")
    with log.open("w") as out:
        return subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dagster"),
                "asset",
                "materialize",
                "-m",
                "definitions",
                *args,
                "--config-json",
                json.dumps({"execution": {"config": {"in_process": {}}}}),
            ],
            cwd=ROOT,
            env=pause.env({**os.environ, "DAGSTER_HOME": str(dagster_home)}),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_at(target: str, args: list[str], dagster_home: Path, log: Path) -> None:
    """Run the CLI with ``args``, hold it before ``target`` (``module:function#n``), then SIGKILL it there."""
    with PausePoint(target) as pause:
        child = _cli(args, dagster_home, log, pause)
        try:
            pause.wait(child, log)
        finally:
            kill_group(child)


def test_runs_killed_mid_download_mid_encoding_and_mid_index_are_finished_by_the_next(
    tmp_path, pipeline_env, monkeypatch
):
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
            kill_at("resources.images.image_store:ImageStore.append_journal#4", all_buckets, dagster_home, log)
            stored = {
                p
                for b in {photo_bucket(p) for p in photo_ids}
                for p in ImageStore(settings().images_dir).read_manifest(b)["photo_id"]
            }
            assert 3 <= len(stored) < len(photo_ids), "killed mid-download"

            # Before the second bucket's vectors are written: the first bucket's are, the rest are not.
            kill_at("resources.vectors.vector_store:VectorStore.write_chunk#2", all_buckets, dagster_home, log)
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
            kill_at("resources.index.local:_publish", ["--select", "search_index"], dagster_home, log)
            survivor = open_backend(settings())
            assert survivor.info() == before and survivor.count() == len(photo_ids), "the published build keeps serving"
            probe_id = sorted(photo_ids)[0]
            assert survivor.knn(survivor.get(probe_id)[1], k=1)[0].photo_id == probe_id

            rebuilt = run_job(instance, "publish_index")
            assert all(check_results(rebuilt).values()), check_results(rebuilt)
            assert open_backend(settings()).count() == len(photo_ids)
