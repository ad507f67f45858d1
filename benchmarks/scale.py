"""``image-search bench scale``: a backfill of the vectors on the scale-out deployment with 1 worker, then 2.

Each round builds the deployment of docs/scaling.md on this machine's services: a fresh
PostgreSQL database (``deploy/postgres/dagster.yaml``), a fresh RabbitMQ virtual host, a
``dagster-daemon`` and N ``dagster-celery`` workers (both queues, concurrency 1), all
dropped after. It ingests a generated release in-process, runs ``image-search backfill
--select group:vectors --wait`` over the 64 buckets and reads the instance's event log to
say where the time went: the run queue, the run worker's start, each step's dispatch
(submitted to the broker -> started on a worker), the steps themselves, and within them the
encoding. The image model is the full-size ViT-B/32 architecture with random weights
(``image_search/tiny_models.py``), so encoding costs what the real model costs.
The services are the ones ``.ci/run`` starts; PostgreSQL is reached as ``postgres`` on
127.0.0.1 and RabbitMQ through ``rabbitmqctl``, as in tests/e2e/test_scaleout.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import scale_harness as harness
from benchmarks.harness import add_json_flag, print_figures

ROOT, BIN = harness.ROOT, harness.BIN
BUCKETS = 64


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "scale", help="a vectors backfill on PostgreSQL + Celery with 1 worker, then 2: wall time and overhead"
    )
    parser.add_argument("--photos", type=int, default=128, help="photos in the generated release (default 128)")
    parser.add_argument(
        "--buckets-per-run", type=int, default=16, help="IMAGE_SEARCH_BUCKETS_PER_RUN (default 16: 4 runs)"
    )
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def _round(workers: int, tmp: Path, release: Path, models: tuple[Path, Path], buckets_per_run: int) -> dict:
    """One backfill with ``workers`` workers on fresh services; its figures."""
    home = tmp / f"round-{workers}"
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "postgres" / "dagster.yaml", dagster_home / "dagster.yaml")
    processes: list[subprocess.Popen] = []
    with harness.database("image_search_bench") as pg_url, harness.broker("image-search-bench") as broker_url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("IMAGE_SEARCH_", "DAGSTER_"))},
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "DAGSTER_HOME": str(dagster_home),
            "DAGSTER_PG_URL": pg_url,
            "DAGSTER_CELERY_BROKER_URL": broker_url,
            "DAGSTER_CELERY_BACKEND_URL": harness.BACKEND_URL,
            "IMAGE_SEARCH_HOME": str(home / "data"),
            "IMAGE_SEARCH_DATASET": str(release),
            "IMAGE_SEARCH_IMAGE_MODEL": str(models[0]),
            "IMAGE_SEARCH_TEXT_MODEL": str(models[1]),
            "IMAGE_SEARCH_BUCKETS_PER_RUN": str(buckets_per_run),
            "IMAGE_SEARCH_DEVICE": "cpu",
        }
        try:
            subprocess.run(
                [str(BIN / "image-search"), "materialize", "--select", "group:ingestion"],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
            )
            harness.stop_sensors(env)
            with _instance(env) as instance:
                instance.event_log_storage.set_concurrency_slots("clip_model", workers)
            processes.append(harness.start_daemon(env, home / "daemon.log"))
            processes.extend(harness.start_worker(env, f"bench-{n}", home / f"worker-{n}.log") for n in range(workers))
            started = time.monotonic()
            backfill = subprocess.run(
                [str(BIN / "image-search"), "backfill", "--select", "group:vectors", "--wait"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
            )
            wall = time.monotonic() - started
            if backfill.returncode != 0:
                raise RuntimeError(
                    f"the backfill with {workers} worker(s) failed:\n{backfill.stdout[-3000:]}{backfill.stderr[-3000:]}"
                )
            with _instance(env) as instance:
                figures = _where_the_time_went(instance)
        finally:
            for process in processes:
                harness.stop(process)
    return {"workers": workers, "wall_s": round(wall, 2), **figures}


def _instance(env: dict[str, str]):
    from dagster import DagsterInstance

    os.environ["DAGSTER_PG_URL"] = env["DAGSTER_PG_URL"]
    return DagsterInstance.from_config(env["DAGSTER_HOME"])


def _where_the_time_went(instance) -> dict:
    """Phase durations from the event log: per run (queue, launch, tail) and per step (dispatch, body, encoding)."""
    from dagster import DagsterEventType

    queue, launch, tail, dispatch, body, encode, steps = [], [], [], [], [], 0.0, 0
    for run in instance.get_runs():
        if "dagster/backfill" not in run.tags:
            continue  # the ingestion before the backfill
        at: dict[DagsterEventType, float] = {}
        submitted: dict[str, float] = {}
        step_start: dict[str, float] = {}
        encoded_steps: set[str] = set()
        last_step_end = None
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            kind, ts = event.event_type, entry.timestamp
            if kind in (
                DagsterEventType.RUN_ENQUEUED,
                DagsterEventType.RUN_STARTING,
                DagsterEventType.RUN_START,
                DagsterEventType.RUN_SUCCESS,
            ):
                at[kind] = ts
            elif (
                kind == DagsterEventType.ENGINE_EVENT
                and entry.step_key
                and entry.message.startswith("Submitting celery task")
            ):
                submitted[entry.step_key] = ts
            elif kind == DagsterEventType.STEP_START:
                step_start[entry.step_key] = ts
                dispatch.append(ts - submitted.get(entry.step_key, ts))
            elif kind == DagsterEventType.STEP_SUCCESS:
                body.append(ts - step_start[entry.step_key])
                last_step_end, steps = ts, steps + 1
            elif kind == DagsterEventType.ASSET_MATERIALIZATION and entry.step_key not in encoded_steps:
                # A step over many buckets records one materialization per bucket, all with its metadata.
                encoded_steps.add(entry.step_key)
                metadata = event.step_materialization_data.materialization.metadata
                encoded, rate = metadata.get("encoded"), metadata.get("throughput_img_per_s")
                if encoded is not None and rate is not None and rate.value:
                    encode += encoded.value / rate.value
        queue.append(at[DagsterEventType.RUN_STARTING] - at[DagsterEventType.RUN_ENQUEUED])
        launch.append(at[DagsterEventType.RUN_START] - at[DagsterEventType.RUN_STARTING])
        tail.append(at[DagsterEventType.RUN_SUCCESS] - last_step_end)
    mean = lambda values: round(statistics.fmean(values), 2) if values else 0.0  # noqa: E731
    return {
        "runs": len(queue),
        "steps": steps,
        "run_queue_s_mean": mean(queue),
        "run_launch_s_mean": mean(launch),
        "run_tail_s_mean": mean(tail),
        "step_dispatch_s_mean": mean(dispatch),
        "step_body_s_mean": mean(body),
        "step_body_s_total": round(sum(body), 2),
        "encoding_s_total": round(encode, 2),
    }


def run(args: argparse.Namespace) -> int:
    """Handler of ``image-search bench scale``."""
    from image_search.sample import write_release
    from image_search.tiny_models import write_tiny_models

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        write_release(tmp / "release", photos=args.photos, seed=5)
        models = write_tiny_models(tmp / "models", full_size=True)
        rounds = [_round(workers, tmp, tmp / "release", models, args.buckets_per_run) for workers in (1, 2)]
    for figures in rounds:
        overhead = figures["wall_s"] - figures["encoding_s_total"] / figures["workers"]
        figures["overhead_per_step_s"] = round(
            figures["step_dispatch_s_mean"]
            + figures["step_body_s_mean"]
            - figures["encoding_s_total"] / max(1, figures["steps"]),
            2,
        )
        figures["overhead_per_partition_s"] = round(overhead / BUCKETS, 3)
        figures["encoding_s_per_partition"] = round(figures["encoding_s_total"] / BUCKETS, 3)
    result = {"photos": args.photos, "buckets_per_run": args.buckets_per_run, "rounds": rounds}
    return print_figures(args, result, _lines)


def _lines(result: dict):
    """The figures of :func:`run` as people read them."""
    rounds = result["rounds"]
    yield f"{result['photos']} photos, {BUCKETS} buckets, {result['buckets_per_run']} buckets per run"
    for r in rounds:
        yield (
            f"{r['workers']} worker(s): wall {r['wall_s']:.1f} s, {r['runs']} runs, {r['steps']} steps; "
            f"encoding {r['encoding_s_total']:.1f} s in all ({r['encoding_s_per_partition']:.3f} s per partition); "
            f"overhead {r['overhead_per_partition_s']:.3f} s per partition"
        )
        yield (
            f"    per run: queue {r['run_queue_s_mean']:.1f} s, launch {r['run_launch_s_mean']:.1f} s, "
            f"after the last step {r['run_tail_s_mean']:.1f} s; per step: dispatch {r['step_dispatch_s_mean']:.1f} s, "
            f"body {r['step_body_s_mean']:.1f} s (encoding excluded: {r['overhead_per_step_s']:.1f} s overhead per step)"
        )
    yield f"speed-up with 2 workers: {rounds[0]['wall_s'] / rounds[1]['wall_s']:.2f}x (2 cores: not the point; the overhead is)"
