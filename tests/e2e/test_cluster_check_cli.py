"""``image-search cluster check`` as the user runs it: a fresh process, whose exit status and output are checked
and which loads no Dagster (the checks themselves: test_cluster_check)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.es_fake import FakeSearchServer

ROOT = Path(__file__).parents[2]


def test_cluster_check_as_a_command_loads_no_dagster() -> None:
    """What a user runs, in a fresh process: the exit status and output, and no Dagster import."""
    with FakeSearchServer("opensearch-2.11") as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_SEARCH_")}
        env.update(IMAGE_SEARCH_BACKEND="elasticsearch", IMAGE_SEARCH_ES_URL=fake.url)
        script = (
            "import sys; from image_search.cli import main; code = main(['cluster', 'check']);"
            " assert 'dagster' not in sys.modules, 'dagster imported'; sys.exit(code)"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "all checks passed on OpenSearch 2.11.1" in done.stdout
