"""The project's definitions, unchanged, with each step sent to a Celery worker (dagster-celery).

Load it with ``deploy/celery/workspace.yaml``. The executor is configured from
``deploy/celery/run_config.yaml``, the file the workers start with
(``dagster-celery worker start -A dagster_celery.app -y deploy/celery/run_config.yaml``), so
runs launched by a sensor, a schedule or a backfill need no run config and reach the same
broker as the workers. See docs/scaling.md.
"""

from pathlib import Path

import yaml
from dagster import Definitions
from dagster_celery import celery_executor

import definitions  # the installed project's, whatever the working directory

#: The run config that runs and workers share.
RUN_CONFIG = Path(__file__).with_name("run_config.yaml")

executor = celery_executor.configured(yaml.safe_load(RUN_CONFIG.read_text())["execution"]["config"], name="celery")
defs = Definitions.merge(definitions.defs, Definitions(executor=executor))
