"""The project's definitions, unchanged, with each step run in its own Kubernetes Job (dagster-k8s).

Load it with ``deploy/k8s/workspace.yaml`` in the user-code deployment of the dagster Helm
chart; run with ``deploy/k8s/run_config.yaml``.
"""

from dagster import Definitions
from dagster_k8s import k8s_job_executor

import definitions  # the installed project's, whatever the working directory

defs = Definitions.merge(definitions.defs, Definitions(executor=k8s_job_executor))
