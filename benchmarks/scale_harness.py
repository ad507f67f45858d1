"""The scale-out deployment of docs/scaling.md on this machine's services, for tests/e2e/test_scaleout.py and ``bench scale``.

PostgreSQL on 127.0.0.1:5432 (reached as ``postgres``), RabbitMQ on 127.0.0.1:5672 (user
``guest``, virtual hosts made with ``rabbitmqctl``), Redis on 127.0.0.1:6379: the services
``.ci/run`` starts. Each user gets a database and a virtual host of its own under a unique
name, dropped after, so that suites sharing the services never meet.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BACKEND_URL = "redis://127.0.0.1:6379/0"
CELERY_WORKSPACE = "deploy/celery/workspace.yaml"
SENSORS = ("release_sensor", "catalog_change_sensor", "automation_sensor")


def pg_admin(sql: str) -> None:
    """Run ``sql`` on the server as ``postgres``, outside any transaction."""
    import psycopg2

    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    try:
        admin.cursor().execute(sql)
    finally:
        admin.close()


@contextmanager
def database(prefix: str) -> Iterator[str]:
    """A fresh database for the ``with`` block; yields its DAGSTER_PG_URL. Dropped after, connections and all."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rabbitmqctl(*args: str) -> None:
    subprocess.run([shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl", *args], check=True, capture_output=True)


@contextmanager
def broker(prefix: str) -> Iterator[str]:
    """A fresh RabbitMQ virtual host for the ``with`` block; yields its DAGSTER_CELERY_BROKER_URL. Deleted after, queues and all."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"pyamqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``command`` in the project's folder, in its own process group, output in ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen) -> None:
    """SIGKILL the process group ``process`` leads, if it still runs, and reap it."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def start_worker(env: dict[str, str], name: str, log: Path) -> subprocess.Popen:
    """A worker "machine" as docs/scaling.md starts one, on both queues, one step at a time."""
    return spawn(
        [
            str(BIN / "dagster-celery"),
            "worker",
            "start",
            "-A",
            "dagster_celery.app",
            "-y",
            "deploy/celery/run_config.yaml",
            "-n",
            name,
            "-q",
            "dagster,clip_model",
            "--",
            "--concurrency=1",
        ],
        env,
        log,
    )


def start_daemon(env: dict[str, str], log: Path, workspace: str = CELERY_WORKSPACE) -> subprocess.Popen:
    return spawn([str(BIN / "dagster-daemon"), "run", "-w", workspace], env, log)


def stop_sensors(env: dict[str, str], names: tuple[str, ...] = SENSORS, workspace: str = CELERY_WORKSPACE) -> None:
    """Stop the sensors ``names``, as in the UI (on a fresh instance they would launch runs of their own)."""
    switch(env, "sensor", "stop", names, workspace)


def switch(
    env: dict[str, str], kind: str, action: str, names: tuple[str, ...], workspace: str = CELERY_WORKSPACE
) -> None:
    """``dagster <kind> <action>`` for each of ``names`` (``kind`` sensor or schedule, ``action`` start or stop)."""
    calls = [
        subprocess.Popen(
            [str(BIN / "dagster"), kind, action, "-w", workspace, name],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in names
    ]
    for name, process in zip(names, calls):
        out, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"dagster {kind} {action} {name} failed:\n{out[-3000:]}")
