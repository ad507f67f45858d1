"""The project's definitions, unchanged, with each step sent to a Celery worker (dagster-celery).

Load it with ``deploy/celery/workspace.yaml``; run with ``deploy/celery/run_config.yaml``;
start workers with ``dagster-celery worker start -y deploy/celery/run_config.yaml``.
"""

from dagster import Definitions
from dagster_celery import celery_executor

import definitions  # the installed project's, whatever the working directory

defs = Definitions.merge(definitions.defs, Definitions(executor=celery_executor))
