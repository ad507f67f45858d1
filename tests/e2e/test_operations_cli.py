"""Operations through Dagster's own command line, as a child process: the instance's pools set as
scripts/demo.sh sets them, each workspace validated, and the installed project's definitions loaded from
any directory (the rest of operations, in-process: test_operations)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance

ROOT = Path(__file__).resolve().parents[2]


def test_project_instance_enables_run_retries_monitoring_and_pools(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / ".dagster" / "dagster.yaml", home / "dagster.yaml")
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_retries_enabled and instance.run_retries_max_retries >= 1
        assert instance.run_monitoring_enabled
        assert instance.run_launcher.supports_check_run_worker_health, "else run monitoring cannot see a dead worker"
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        assert instance.get_concurrency_config().pool_config.default_pool_limit >= 2
    # The command scripts/demo.sh runs to pin the encoder's pool, run as it is there.
    [line] = [row for row in (ROOT / "scripts" / "demo.sh").read_text().splitlines() if "concurrency set" in row]
    command = line.replace('"$BIN/dagster"', str(Path(sys.executable).parent / "dagster"))
    subprocess.run(command, shell=True, check=True, env={**os.environ, "DAGSTER_HOME": str(home)}, capture_output=True)
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.event_log_storage.get_concurrency_info("clip_model").limit == 1
        assert instance.event_log_storage.get_concurrency_info("image_downloads").limit == 4


@pytest.mark.parametrize("workspace", ["workspace.yaml", "deploy/k8s/workspace.yaml", "deploy/celery/workspace.yaml"])
def test_dagster_cli_validates_each_workspace(workspace, tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", workspace],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def _validate(env_changes: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_SEARCH_")}
    env.update(DAGSTER_HOME=str(tmp_path), **env_changes)
    return subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_a_bad_unrelated_setting_does_not_stop_the_code_location_from_loading(tmp_path):
    """Only the schedule's cron and the sensor's interval are read when the definitions load."""
    unrelated = _validate({"IMAGE_SEARCH_BACKEND": "solr", "IMAGE_SEARCH_DOWNLOAD_CONCURRENCY": "lots"}, tmp_path)
    assert unrelated.returncode == 0, unrelated.stdout[-2000:] + unrelated.stderr[-2000:]
    interval = _validate({"IMAGE_SEARCH_RELEASE_POLL_SECONDS": "often"}, tmp_path)
    assert interval.returncode != 0
    assert "IMAGE_SEARCH_RELEASE_POLL_SECONDS='often' is not a whole number" in interval.stdout + interval.stderr


def test_the_installed_project_loads_its_definitions_from_any_directory(tmp_path):
    """A wheel of the project holds definitions, jobs and sensors; the deploy files load them from it."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "definitions.py", "jobs.py", "sensors.py"):
        shutil.copy(ROOT / name, source / name)
    for package in ("assets", "resources", "search_app", "image_search"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path / "wheels")],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    site = tmp_path / "site"
    wheel = next((tmp_path / "wheels").glob("*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import runpy, definitions, jobs, sensors, assets\n"
        "print(definitions.__file__, jobs.__file__, sensors.__file__, assets.__file__)\n"
        f"runpy.run_path({str(ROOT / 'deploy' / 'celery' / 'celery_definitions.py')!r})['defs'].resolve_job_def('publish_index')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "DAGSTER_CELERY_BROKER_URL": "pyamqp://guest@127.0.0.1:5672//"}
    loaded = subprocess.run(
        [sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=240
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert all(path.startswith(str(site)) for path in loaded.stdout.split()), loaded.stdout
