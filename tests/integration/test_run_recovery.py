"""resources/run_recovery.py on a shared instance: a run counts as dead once its events stop (a real in-process
materialization on Dagster's in-memory instance). Killed runs and their locks: test_recovery."""

from __future__ import annotations

from dagster import DagsterInstance, asset
from dagster import materialize as materialize_in_process

from resources.run_recovery import dead_reason


def test_on_a_shared_instance_a_run_counts_as_dead_once_it_has_logged_nothing_for_too_long(monkeypatch):
    """Where the instance's storage is not this machine's SQLite (here Dagster's in-memory one, standing
    in for a Postgres instance shared by several machines), no pid is checked: the run's events are its heartbeat."""

    @asset
    def one() -> None:
        pass

    with DagsterInstance.ephemeral() as instance:
        run_id = materialize_in_process([one], instance=instance).run_id
        monkeypatch.setenv("IMAGE_SEARCH_STALE_RUN_SECONDS", "3600")
        assert dead_reason(instance, run_id) is None
        monkeypatch.setenv("IMAGE_SEARCH_STALE_RUN_SECONDS", "0")
        assert dead_reason(instance, run_id).startswith("it has logged nothing for ")
