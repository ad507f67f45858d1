"""``image-search sample`` as a user runs it, in a child process: a release written, bad counts refused in one
line (the generator itself: test_sample)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.pipeline import release_rows


def test_cli_writes_a_release(tmp_path: Path):
    out = tmp_path / "rel"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "image_search.cli",
            "sample",
            str(out),
            "--photos",
            "12",
            "--keywords",
            "100",
            "--conversions",
            "30",
            "--collections",
            "7",
            "--colors",
            "20",
            "--duplicates",
            "2",
            "--seed",
            "5",
            "--release-version",
            "1.3.0",
            "--parts",
            "2",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"photos": 12' in done.stdout and '"release_version": "1.3.0"' in done.stdout
    assert sum(len(release_rows(out / f"keywords.csv00{k}")) - 1 for k in range(2)) == 100
    assert sum(len(release_rows(out / f"collections.csv00{k}")) - 1 for k in range(2)) == 7
    assert len(list((out / "images").glob("*.jpg"))) == 12
    bad = subprocess.run(
        [sys.executable, "-m", "image_search.cli", "sample", str(out), "--photos", "0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--photos" in bad.stderr
