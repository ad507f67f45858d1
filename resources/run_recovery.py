"""Dagster runs whose worker died: found, marked failed, and their pool slots freed.

A run killed outright stays "started" and keeps its pool slots, so the next run would wait
for ever. ``image-search materialize`` calls :func:`recover_dead_runs` before it launches
anything, and :class:`LocalRunLauncher` gives run monitoring the same judgement of a worker
(docs/operations.md, "After a crash"). The query side never imports this module.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, DefaultRunLauncher, RunsFilter
from dagster._core.events import JobFailureData, RunFailureReason
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.runs import SqliteRunStorage

from resources.config import Settings
from resources.storage.processes import pid_running

IN_PROGRESS = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def worker_pid(instance: DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The pid of the run's worker and when it reported it (epoch s), from Dagster's own engine events.

    "Started process for run (pid: N)", "Executing steps in process (pid: N)" and the
    multiprocess executor's parent-process event carry it; step subprocesses' events name a
    step and are skipped. The latest wins (a resumed run has a new worker).
    """
    for entry in reversed(instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)):
        data = entry.dagster_event.engine_event_data if entry.dagster_event else None
        pid = data.metadata.get("pid") if data is not None and entry.step_key is None else None
        if pid is not None:
            return int(pid.value), entry.timestamp
    return None


def dead_reason(instance: DagsterInstance, run_id: str) -> str | None:
    """Why the run's worker counts as dead, or None while it runs (or nothing tells)."""
    if isinstance(instance.run_storage, SqliteRunStorage):
        worker = worker_pid(instance, run_id)
        if worker is None or pid_running(*worker):
            return None
        return f"its worker process (pid {worker[0]}) is no longer running"
    latest = instance.get_records_for_run(run_id, ascending=False, limit=1).records
    idle = time.time() - latest[0].timestamp if latest else 0.0
    stale_after = Settings.from_env().stale_run_seconds
    return (
        f"it has logged nothing for {idle:.0f} s (IMAGE_SEARCH_STALE_RUN_SECONDS={stale_after:g})"
        if idle >= stale_after
        else None
    )


def describe_run(run: DagsterRun | None, run_id: str) -> str:
    """``run <id> (<assets>, <partition range>)``: enough to find it in the UI."""
    if run is None:
        return f"run {run_id} (deleted)"
    assets = sorted(key.to_user_string() for key in run.asset_selection or ())
    start, end = run.tags.get("dagster/asset_partition_range_start"), run.tags.get("dagster/asset_partition_range_end")
    parts = [", ".join(assets) or run.job_name] + ([f"{start}...{end}"] if start else [])
    return f"run {run_id} ({'; '.join(parts)})"


def _slots_by_run(instance: DagsterInstance) -> dict[str, list[str]]:
    """The pools whose slots each run holds, one entry per slot."""
    storage = instance.event_log_storage
    held = defaultdict(list)
    for pool in sorted(storage.get_concurrency_keys()):
        for slot in storage.get_concurrency_info(pool).claimed_slots:
            held[slot.run_id].append(pool)
    return held


def _freed(instance: DagsterInstance, run_id: str, pools: list[str]) -> str:
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    return f"freed {len(pools)} pool slot(s) ({', '.join(pools)})" if pools else "it held no pool slot"


def recover_dead_runs(instance: DagsterInstance) -> list[str]:
    """Mark failed every in-progress run whose worker is dead, free the pool slots of every run that
    cannot release them any more, and return one line per run recovered."""
    held = _slots_by_run(instance)
    lines, in_progress = [], set()
    for record in instance.get_run_records(filters=RunsFilter(statuses=IN_PROGRESS)):
        run = record.dagster_run
        in_progress.add(run.run_id)
        reason = dead_reason(instance, run.run_id)
        if reason is None:
            continue
        instance.report_run_failed(
            run,
            f"Marked failed by image-search: {reason}.",
            JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION),
        )
        lines.append(
            f"recovered {describe_run(run, run.run_id)}: {reason}; marked failed, {_freed(instance, run.run_id, held[run.run_id])}"
        )
    for run_id in sorted(instance.event_log_storage.get_concurrency_run_ids() - in_progress):
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            ended = "was deleted" if run is None else f"ended ({run.status.value})"
            lines.append(
                f"recovered {describe_run(run, run_id)}: it {ended} without releasing its pool slots; {_freed(instance, run_id, held[run_id])}"
            )
    return lines


def run_of_worker(instance: DagsterInstance, pid: int, since: float, finished_too: bool = False) -> str | None:
    """The run whose worker is process ``pid`` (started at ``since``, epoch s), if it made one yet.

    Only a run in progress, unless ``finished_too``: then any run created since ``since``.
    """
    created = datetime.fromtimestamp(since, timezone.utc)
    filters = RunsFilter(created_after=created) if finished_too else RunsFilter(statuses=IN_PROGRESS)
    for record in instance.get_run_records(filters=filters):
        worker = worker_pid(instance, record.dagster_run.run_id)
        if worker is not None and worker[0] == pid and worker[1] >= since:
            return record.dagster_run.run_id
    return None


@dataclass(frozen=True)
class PoolWait:
    """A step of a run waiting for a slot of ``pool`` since ``since`` (epoch s), whose slots ``holders`` hold."""

    pool: str
    step_key: str
    since: float
    holders: tuple[str, ...]


def pool_waits(instance: DagsterInstance, run_id: str) -> Iterator[PoolWait]:
    """The steps of ``run_id`` waiting for a pool slot (queued, not yet given one)."""
    storage = instance.event_log_storage
    for pool in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(pool)
        for pending in info.pending_steps:
            if pending.run_id == run_id and pending.assigned_timestamp is None:
                holders = tuple(sorted({slot.run_id for slot in info.claimed_slots if slot.run_id != run_id}))
                yield PoolWait(pool, pending.step_key, pending.enqueued_timestamp.timestamp(), holders)


class LocalRunLauncher(DefaultRunLauncher):
    """Dagster's default launcher (runs in a subprocess of the code server), plus a health check of
    run workers, without which run monitoring cannot notice a dead one (DefaultRunLauncher has none)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        reason = dead_reason(self._instance, run.run_id)
        return (
            CheckRunHealthResult(WorkerStatus.RUNNING)
            if reason is None
            else CheckRunHealthResult(WorkerStatus.FAILED, reason)
        )
