"""``image-search backfill``: a Dagster asset backfill on the instance in DAGSTER_HOME, which its daemon runs.

The same backfill as the Dagster UI's "Materialize selected" over a range of buckets. The
daemon's backfill loop cuts it into runs by the assets' backfill policy
(``IMAGE_SEARCH_BUCKETS_PER_RUN`` buckets per run, see ``assets/partitions.py``), the run
queue launches up to ``max_concurrent_runs`` of them at once, and each run's executor hands
its steps to the workers (Celery with ``deploy/celery/workspace.yaml``). Without ``--wait``
the command prints the backfill's id and returns; with it, it reports every run as it
ends and exits 0 once the backfill succeeded, 1 if it failed.
"""

from __future__ import annotations

import argparse
import os
import time

from resources.errors import ImageSearchError
from resources.images.image_store import BUCKET_KEYS

#: Seconds between two looks at the backfill while waiting.
POLL_S = 2.0
#: Seconds after which a backfill nobody picked up is reported as waiting for a daemon.
NO_DAEMON_S = 60.0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "backfill",
        help="submit an asset backfill to the instance in DAGSTER_HOME; its dagster-daemon runs it",
        description="Submit a backfill of the selected assets over a range of photo buckets to the instance in "
        "DAGSTER_HOME. A running dagster-daemon cuts it into runs of IMAGE_SEARCH_BUCKETS_PER_RUN buckets and "
        "launches them; with the Celery code location their steps run on the Celery workers.",
    )
    parser.add_argument("--select", required=True, help="asset selection, e.g. 'group:vectors'")
    parser.add_argument(
        "--partition-range", default=f"{BUCKET_KEYS[0]}...{BUCKET_KEYS[-1]}", help="e.g. b00...b63 (the default)"
    )
    parser.add_argument("--wait", action="store_true", help="report the backfill's runs until it ends")
    parser.set_defaults(handler=_backfill)


def partition_names(partition_range: str) -> list[str]:
    """The bucket keys from the first to the last of ``first...last``, in order."""
    first, sep, last = partition_range.partition("...")
    if (
        not sep
        or first not in BUCKET_KEYS
        or last not in BUCKET_KEYS
        or BUCKET_KEYS.index(first) > BUCKET_KEYS.index(last)
    ):
        raise ImageSearchError(
            f"--partition-range {partition_range!r} is not a range of buckets: use e.g. "
            f"{BUCKET_KEYS[0]}...{BUCKET_KEYS[-1]}"
        )
    return BUCKET_KEYS[BUCKET_KEYS.index(first) : BUCKET_KEYS.index(last) + 1]


def submit(instance, select: str, names: list[str]) -> str:
    """Add an asset backfill of ``select`` over the buckets ``names`` to ``instance``; return its id."""
    from dagster import AssetSelection
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    from definitions import defs

    graph = defs.resolve_asset_graph()
    keys = sorted(AssetSelection.from_string(select).resolve(graph))
    if not keys:
        raise ImageSearchError(f"--select {select!r} selects no asset: use e.g. 'group:vectors'")
    backfill_id = make_new_backfill_id()
    instance.add_backfill(
        PartitionBackfill.from_asset_partitions(
            backfill_id=backfill_id,
            asset_graph=graph,
            partition_names=names,
            asset_selection=keys,
            backfill_timestamp=time.time(),
            tags={},
            dynamic_partitions_store=instance,
            all_partitions=False,
            title=f"image-search backfill {select} {names[0]}...{names[-1]}",
            description=None,
            run_config=None,
        )
    )
    return backfill_id


def _backfill(args: argparse.Namespace) -> int:
    if not os.environ.get("DAGSTER_HOME"):
        raise ImageSearchError("DAGSTER_HOME is not set: point it at the instance's folder (see docs/scaling.md)")
    from dagster import DagsterInstance

    names = partition_names(args.partition_range)
    with DagsterInstance.get() as instance:
        backfill_id = submit(instance, args.select, names)
        print(f"image-search: backfill {backfill_id} submitted: {args.select} over {len(names)} bucket(s)", flush=True)
        return wait(instance, backfill_id) if args.wait else 0


def wait(instance, backfill_id: str) -> int:
    """Report each run of the backfill as it ends; 0 once the backfill succeeded, 1 if it did not."""
    from dagster import RunsFilter
    from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, BulkActionStatus

    started, reported, warned = time.monotonic(), set(), False
    while True:
        backfill = instance.get_backfill(backfill_id)
        runs = instance.get_runs(filters=RunsFilter.for_backfill(backfill_id))
        for run in runs:
            if run.is_finished and run.run_id not in reported:
                reported.add(run.run_id)
                start = run.tags.get("dagster/asset_partition_range_start", "")
                end = run.tags.get("dagster/asset_partition_range_end", "")
                print(f"image-search: run {run.run_id} ({start}...{end}) {run.status.value.lower()}", flush=True)
        if backfill.status in BULK_ACTION_TERMINAL_STATUSES:
            ok = backfill.status == BulkActionStatus.COMPLETED_SUCCESS
            print(
                f"image-search: backfill {backfill_id} {backfill.status.value.lower()} ({len(runs)} run(s))", flush=True
            )
            return 0 if ok else 1
        if not runs and not warned and time.monotonic() - started > NO_DAEMON_S:
            warned = True
            print(
                f"image-search: backfill {backfill_id} has no run after {NO_DAEMON_S:g} s: is `dagster-daemon run` "
                "running on this instance?",
                flush=True,
            )
        time.sleep(POLL_S)
