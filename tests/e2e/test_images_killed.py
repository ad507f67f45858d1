"""The images asset killed mid-run in a child process: the next run resumes without fetching stored photos again
(the asset in-process: test_images)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from assets.partitions import photo_bucket
from resources.images.image_store import ImageStore
from tests.http_fixtures import FaultServer
from tests.images import jpeg_bytes
from tests.pipeline import run_images, write_catalog

REPO = Path(__file__).resolve().parents[2]


_KILLED_RUN = textwrap.dedent(
    """
    import sys
    from dagster import DagsterInstance, materialize
    from assets.images import images
    from resources.dagster_resources import SettingsResource
    materialize([images], resources={"settings": SettingsResource(home=sys.argv[1])},
                instance=DagsterInstance.ephemeral(),
                tags={"dagster/asset_partition_range_start": "b00", "dagster/asset_partition_range_end": "b63"})
    """
)


def test_a_killed_run_resumes_without_fetching_stored_photos_again(tmp_path):
    count, served = 160, 30
    with FaultServer() as server:
        body = jpeg_bytes(64, 48)
        rows = [(f"k{i:03d}", server.add(f"/k/{i}.jpg", body)) for i in range(count)]
        write_catalog(tmp_path, rows)
        # The server answers 30 requests and holds the rest: the run cannot finish before the kill.
        server.hold(after=served)
        # A timeout longer than the test: the held requests wait for the kill, never time out and retry.
        env = {
            **os.environ,
            "IMAGE_SEARCH_DOWNLOAD_CONCURRENCY": "4",
            "IMAGE_SEARCH_DOWNLOAD_TIMEOUT": "3600",
            "PYTHONPATH": str(REPO),
        }
        child = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(tmp_path)], cwd=REPO, env=env)
        journals = tmp_path / "images" / "manifest"
        try:
            server.wait_held(4)
            # Each answered photo is journaled as it lands; the wait is for that, the guard only for a hung test.
            for _ in range(1200):
                if _journal_lines(journals) >= served:
                    break
                assert child.poll() is None, "the run ended before it could be killed"
                time.sleep(0.05)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            # The requests held at the kill are closed unanswered and never counted.
            server.release(drop=True)

        store = ImageStore(tmp_path / "images")
        journaled = {p for b in {photo_bucket(p) for p, _ in rows} for p in store.read_manifest(b)["photo_id"]}
        assert 30 <= len(journaled) < count
        hits_at_kill = sum(server.hits.values())

        result = run_images(tmp_path)

        metadata = result.asset_materializations_for_node("images")[0].metadata
        assert metadata["stored"].value == count and metadata["failed"].value == 0
        assert metadata["skipped_already_stored"].value >= len(journaled)
        assert all(server.hits[f"/k/{int(p[1:])}.jpg"] == 1 for p in journaled)
        # Photos in flight at the kill may have been fetched twice; no more than that.
        assert sum(server.hits.values()) - hits_at_kill <= count - len(journaled)
        assert sum(server.hits.values()) <= count + 8
        assert not list(journals.glob("*.jsonl"))
        assert not list((tmp_path / "images").rglob("*.tmp"))
        stored = {path.stem for path in (tmp_path / "images").glob("b*/*.jpg")}
        assert stored == {p for p, _ in rows}


def _journal_lines(folder: Path) -> int:
    return sum(len(path.read_bytes().splitlines()) for path in folder.glob("*.jsonl")) if folder.is_dir() else 0
