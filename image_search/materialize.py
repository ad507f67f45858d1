"""``image-search materialize``: ``dagster asset materialize`` that no dead run blocks and that never waits silently.

It recovers dead runs first (``resources/run_recovery.py``), reports and bounds every wait
for a pool slot (Dagster's executors wait inside their own loop, with no hook and no
timeout), and shows the run's own lines while Dagster's output goes to a log file.
``image-search recover`` only recovers.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.storage.locks import Wait

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


def _log_path() -> Path:
    """Where ``image-search materialize`` appends Dagster's own output (every event, traces included)."""
    return Path(os.environ["DAGSTER_HOME"]) / "logs" / "image-search.log"


def _materialize(args: argparse.Namespace) -> int:
    from resources.run_recovery import recover_dead_runs, run_of_worker

    timeout = Settings.from_env().lock_timeout
    command = [
        str(Path(sys.executable).parent / "dagster"),
        "asset",
        "materialize",
        "-m",
        "definitions",
        "--select",
        args.select,
    ]
    if args.partition:
        command += ["--partition", args.partition]
    if args.partition_range:
        command += ["--partition-range", args.partition_range]
    with _instance() as instance:
        _print(recover_dead_runs(instance))
        log = _log_path()
        log.parent.mkdir(parents=True, exist_ok=True)
        report = _RunReport(instance)
        with log.open("a", encoding="utf-8") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S %z')}: {' '.join(command)}\n")
            out.flush()
            started = time.time()
            child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
            try:
                _watch(instance, child, started, timeout, report)
            finally:
                _stop(instance, child)
        report.run_id = report.run_id or run_of_worker(instance, child.pid, started, finished_too=True)
        report.update()
        if child.returncode != 0:
            _print(
                report.failures()
                or [f"dagster asset materialize stopped (exit status {child.returncode}) before it ran anything"]
            )
            _print(
                [
                    f"the full log: {log}"
                    + (f"; every event: the Dagster UI, run {report.run_id}" if report.run_id else "")
                ]
            )
    return child.returncode


class _RunReport:
    """The run's own lines as they land: what its steps log (INFO and above), and each asset materialized.

    Dagster's framework events stay in the log file and the UI; failures are kept for the end.
    """

    def __init__(self, instance):
        self.instance, self.run_id = instance, None
        self._cursor: str | None = None
        self._materialized: set[str] = set()
        self._started: set[str] = set()
        self._failures: list[str] = []

    def update(self) -> None:
        """Print what the run recorded since the last call."""
        if self.run_id is None:
            return
        while True:
            page = self.instance.get_records_for_run(self.run_id, cursor=self._cursor, limit=1000)
            for record in page.records:
                self._show(record.event_log_entry)
            self._cursor = page.cursor
            if not page.has_more:
                return

    def failures(self) -> list[str]:
        """One line per failed step: the step and the error that stopped it, without its trace."""
        return self._failures

    def _show(self, entry) -> None:
        from dagster import DagsterEventType

        if not entry.is_dagster_event:
            # Only what a running step's own code says: the executor's notes on skipped steps stay in the log.
            if entry.level >= logging.INFO and entry.step_key in self._started:
                _print([entry.user_message])
            return
        event = entry.dagster_event
        if event.event_type == DagsterEventType.STEP_START:
            self._started.add(entry.step_key)
        elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            key = event.asset_key.to_user_string()
            if key not in self._materialized:
                self._materialized.add(key)
                _print([f"{key} materialized{_figures(event.materialization.metadata)}"])
        elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION and not event.event_specific_data.passed:
            check = event.event_specific_data
            _print([f"check {check.check_name} on {check.asset_key.to_user_string()} failed"])
        elif event.event_type == DagsterEventType.STEP_FAILURE:
            self._failures.append(f"{entry.step_key} failed: {_root_message(event.step_failure_data.error)}")


#: Metadata shown when an asset lands, in this order, where present.
_FIGURES = ("dagster/row_count", "fetched", "failed", "encoded", "skipped_up_to_date", "groups")


def _figures(metadata) -> str:
    shown = [
        f"{'rows' if name == 'dagster/row_count' else name.replace('_', ' ')} {metadata[name].value}"
        for name in _FIGURES
        if name in metadata
    ]
    return f": {', '.join(shown)}" if shown else ""


def _root_message(error) -> str:
    """The innermost cause's message, without its exception class or trace."""
    if error is None:
        return "no error recorded"
    while error.cause is not None:
        error = error.cause
    message = error.message.strip()
    prefix = f"{error.cls_name}: "
    return message.split(prefix, 1)[1] if prefix in message.split("\n", 1)[0] else message


def _watch(instance, child: subprocess.Popen, started: float, timeout: float, report: _RunReport) -> None:
    """Until ``child`` ends: show its run's lines, report its steps' waits for pool slots, recover dead
    holders, give up after ``timeout``.

    The instance's database may not answer for a while (a restart, a failover, a cut
    connection): that is reported once, and once more when it answers again; the run is
    left alone meanwhile, since only its own steps know whether they can go on.
    """
    waits: dict = {}
    unreachable = _database_errors()
    outage = None
    while True:
        try:
            child.wait(timeout=POLL_S)
            return
        except subprocess.TimeoutExpired:
            pass
        try:
            _look(instance, report, waits, child, started, timeout)
        except unreachable as exc:
            if outage is None:
                outage = time.monotonic()
                _print(
                    [
                        f"the instance's database does not answer ({_first_line(exc)}); the run goes on, looking again every {POLL_S:g} s"
                    ]
                )
            continue
        if outage is not None:
            _print([f"the instance's database answers again after {time.monotonic() - outage:.0f} s"])
            outage = None


def _look(instance, report: _RunReport, waits: dict, child: subprocess.Popen, started: float, timeout: float) -> None:
    """One look at the instance for :func:`_watch`."""
    from resources.run_recovery import pool_waits, recover_dead_runs, run_of_worker

    run_id = report.run_id = report.run_id or run_of_worker(instance, child.pid, started)
    report.update()
    if run_id is None or not any(pool_waits(instance, run_id)):
        return
    _print(recover_dead_runs(instance))
    for blocked in pool_waits(instance, run_id):
        wait = waits.setdefault((blocked.pool, blocked.step_key), Wait(timeout, since=blocked.since, clock=time.time))
        holders = "; ".join(_holder(instance, holder) for holder in blocked.holders) or "no run (being handed over)"
        if wait.report_due():
            _print(
                [
                    f"{blocked.step_key} is waiting for a slot of pool {blocked.pool}, held by {holders}: "
                    f"{wait.waited:.0f} s so far, giving up after {timeout:g} s"
                ]
            )
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
