"""Ingestion on a disk that fails: a real full disk (a tmpfs mounted by ``mount``) and a folder the run may not
write (the release fetched in a child process without root's override). Everything else: test_ingest."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from assets.raw import unsplash_release
from tests.http_fixtures import ZipServer
from tests.pipeline import ingested_metadata, ingestion_error, materialize_ingestion, zip_release

REPO = Path(__file__).resolve().parents[2]


def _mount_tmpfs(path: Path, size: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"a small disk needs root's mount (mount said: {mounted.stderr.strip()})")


def test_a_full_disk_while_extracting_keeps_the_download_and_says_what_to_do(release: Path, tmp_path: Path):
    """A real full disk: release/ is a tmpfs that holds the zip but not what it extracts to."""
    body = zip_release(release, tmp_path / "release.zip")
    extracted = sum(f.stat().st_size for f in release.rglob("*") if f.is_file())
    home = tmp_path / "home"
    disk = home / "release"
    size = (len(body) // 4096 + 8) * 4096
    assert extracted > size - len(body), "the extracted files must not fit beside the zip"
    _mount_tmpfs(disk, size)
    try:
        with ZipServer(body) as server:
            error = ingestion_error(home, server.url, [unsplash_release])
            assert "the disk is full" in error and "the zip is kept" in error, error
            assert [p.read_bytes() for p in (disk / "downloads").glob("*.zip")] == [body]
            assert not [p for p in disk.iterdir() if p.name not in ("downloads",)], "no half-extracted folder is left"
            subprocess.run(["mount", "-o", f"remount,size={size + 2 * extracted + (1 << 20)}", str(disk)], check=True)
            result = materialize_ingestion(home, server.url)
        assert len(server.requests) == 1, "the kept zip is extracted without downloading it again"
        assert ingested_metadata(result, "photos")["dagster/row_count"] == 30
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_folder_it_may_not_write_keeps_the_download_and_says_what_to_do(release: Path, tmp_path: Path):
    """A real permission error: the release runs without root's right to write anywhere, in a folder it may only read."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("dropping root's override of file permissions needs setpriv (util-linux)")
    body = zip_release(release, tmp_path / "release.zip")
    home = tmp_path / "home"
    downloads = home / "release" / "downloads"
    downloads.mkdir(parents=True)
    (home / "release").chmod(0o555)
    script = (
        "import logging, sys\n"
        "from resources.config import Settings\n"
        "from resources.errors import ImageSearchError\n"
        "from resources.release.source import fetch_release\n"
        "try:\n"
        "    fetch_release(Settings(home=sys.argv[1], dataset=sys.argv[2]), logging.getLogger())\n"
        "except ImageSearchError as exc:\n"
        "    sys.exit(str(exc))\n"
    )
    try:
        with ZipServer(body) as server:
            child = subprocess.run(
                [
                    setpriv,
                    "--bounding-set=-dac_override,-dac_read_search,-fowner",
                    "--",
                    sys.executable,
                    "-c",
                    script,
                    str(home),
                    server.url,
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=120,
            )
    finally:
        (home / "release").chmod(0o755)
    error = child.stderr.strip()
    assert child.returncode == 1 and len(error.splitlines()) == 1, child.stderr
    assert "permission denied: make the folder writable by this user" in error and "the zip is kept" in error
    assert [p.read_bytes() for p in downloads.glob("*.zip")] == [body]
