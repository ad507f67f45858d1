"""``image-search materialize``: ``dagster asset materialize`` that no dead run blocks and that never waits silently.

Before it launches anything it recovers the instance's dead runs (``resources/run_recovery.py``),
one line each. While the run goes, a step waiting for a pool slot is reported in one line
naming the run that holds it, repeated as :class:`resources.locks.Wait` directs; after
``IMAGE_SEARCH_LOCK_TIMEOUT`` the run is stopped with a one-line error. A holder that dies
meanwhile is recovered on the spot. ``image-search recover`` only recovers. A supervising
process, because Dagster's executors wait for a pool slot inside their own loop, with no
hook and no timeout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.locks import Wait

#: Seconds between two looks at the instance while the run goes.
POLL_S = 1.0
#: Seconds a stopped run gets to release what it holds before it is killed.
STOP_GRACE_S = 60.0


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "materialize",
        help="materialize assets on the instance in DAGSTER_HOME, after recovering its dead runs",
        description="Run `dagster asset materialize -m definitions` on the instance in DAGSTER_HOME: first mark "
        "failed the runs whose worker died and free their pool slots, then report any wait for a pool slot and "
        "give up after IMAGE_SEARCH_LOCK_TIMEOUT seconds.",
    )
    run.add_argument("--select", required=True, help="asset selection, e.g. 'group:vectors'")
    run.add_argument("--partition", help="one partition key")
    run.add_argument("--partition-range", help="a range of partition keys, e.g. b00...b63")
    run.set_defaults(handler=_materialize)
    recover = sub.add_parser(
        "recover",
        help="mark failed the runs whose worker died and free their pool slots",
        description="Recover the dead runs of the instance in DAGSTER_HOME, one line each; `materialize` does this first.",
    )
    recover.set_defaults(handler=_recover)


def _instance():
    if not os.environ.get("DAGSTER_HOME"):
        raise ImageSearchError("DAGSTER_HOME is not set: point it at the instance's folder (make demo uses ./.dagster)")
    from dagster import DagsterInstance

    return DagsterInstance.get()


def _print(lines: list[str]) -> None:
    for line in lines:
        print(f"image-search: {line}", flush=True)


def _recover(args: argparse.Namespace) -> int:
    from resources.run_recovery import recover_dead_runs

    with _instance() as instance:
        _print(recover_dead_runs(instance) or ["no dead run to recover"])
    return 0


def _materialize(args: argparse.Namespace) -> int:
    from resources.run_recovery import recover_dead_runs

    timeout = Settings.from_env().lock_timeout
    command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "definitions", "--select", args.select]
    if args.partition:
        command += ["--partition", args.partition]
    if args.partition_range:
        command += ["--partition-range", args.partition_range]
    with _instance() as instance:
        _print(recover_dead_runs(instance))
        started = time.time()
        child = subprocess.Popen(command)
        try:
            _watch(instance, child, started, timeout)
        finally:
            _stop(instance, child)
    return child.returncode


def _watch(instance, child: subprocess.Popen, started: float, timeout: float) -> None:
    """Until ``child`` ends: report its steps' waits for pool slots, recover dead holders, give up after ``timeout``.

    The instance's database may not answer for a while (a restart, a failover, a cut
    connection): that is reported once, and once more when it answers again; the run is
    left alone meanwhile, since only its own steps know whether they can go on.
    """
    state = {"run_id": None, "waits": {}}
    unreachable = _database_errors()
    outage = None
    while True:
        try:
            child.wait(timeout=POLL_S)
            return
        except subprocess.TimeoutExpired:
            pass
        try:
            _look(instance, state, child, started, timeout)
        except unreachable as exc:
            if outage is None:
                outage = time.monotonic()
                _print([f"the instance's database does not answer ({_first_line(exc)}); the run goes on, looking again every {POLL_S:g} s"])
            continue
        if outage is not None:
            _print([f"the instance's database answers again after {time.monotonic() - outage:.0f} s"])
            outage = None


def _look(instance, state: dict, child: subprocess.Popen, started: float, timeout: float) -> None:
    """One look at the instance for :func:`_watch`."""
    from resources.run_recovery import pool_waits, recover_dead_runs, run_of_worker

    state["run_id"] = state["run_id"] or run_of_worker(instance, child.pid, started)
    run_id, waits = state["run_id"], state["waits"]
    if run_id is None or not any(pool_waits(instance, run_id)):
        return
    _print(recover_dead_runs(instance))
    for blocked in pool_waits(instance, run_id):
        wait = waits.setdefault((blocked.pool, blocked.step_key), Wait(timeout, since=blocked.since, clock=time.time))
        holders = "; ".join(_holder(instance, holder) for holder in blocked.holders) or "no run (being handed over)"
        if wait.report_due():
            _print([
                f"{blocked.step_key} is waiting for a slot of pool {blocked.pool}, held by {holders}: "
                f"{wait.waited:.0f} s so far, giving up after {timeout:g} s"
            ])
        if wait.expired():
            raise ImageSearchError(
                f"{blocked.step_key} waited {timeout:g} s for a slot of pool {blocked.pool}, held by {holders}: "
                "let that run finish or stop it (in the Dagster UI, or kill its worker), or raise "
                "IMAGE_SEARCH_LOCK_TIMEOUT, then run again"
            )


def _database_errors() -> tuple[type[BaseException], ...]:
    """What the instance's storage raises when its database does not answer."""
    import sqlalchemy.exc

    errors: list[type[BaseException]] = [sqlalchemy.exc.SQLAlchemyError]
    try:
        from dagster_postgres.utils import DagsterPostgresException
    except ImportError:  # dagster-postgres (the `scale` extra) is not installed: the instance is not on PostgreSQL
        return tuple(errors)
    return (*errors, DagsterPostgresException)


def _first_line(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


def _holder(instance, run_id: str) -> str:
    from resources.run_recovery import describe_run, worker_pid

    worker = worker_pid(instance, run_id)
    pid = f", worker pid {worker[0]}" if worker else ""
    return f"{describe_run(instance.get_run_by_id(run_id), run_id)}{pid}"


def _stop(instance, child: subprocess.Popen) -> None:
    """Stop ``child`` if it still runs (Dagster then fails the run and frees its slots); kill it if it lingers."""
    from resources.run_recovery import recover_dead_runs

    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        _print(recover_dead_runs(instance))
