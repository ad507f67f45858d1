"""resources/storage/files.py under a kill: a writer killed in a child process before its rename (the writes: test_files)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from resources.storage.files import is_temporary, sweep, write_text
from tests.pause import PausePoint, kill_group

REPO = Path(__file__).resolve().parents[2]


def test_a_writer_killed_before_its_rename_leaves_the_old_file_and_a_temporary_the_sweep_knows(tmp_path):
    target = tmp_path / "CURRENT"
    write_text(target, "old\n")
    script = f"from pathlib import Path; from resources.storage.files import write_text; write_text(Path({str(target)!r}), 'new\\n', durable=True)"
    with PausePoint("resources.storage.files:Staged.commit") as pause:
        child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=pause.env(), start_new_session=True)
        try:
            pause.wait(child)
        finally:
            kill_group(child)
    left = [p for p in tmp_path.iterdir() if p != target]
    assert target.read_text() == "old\n"
    assert len(left) == 1 and is_temporary(left[0].name) and left[0].read_text() == "new\n"
    assert sweep(tmp_path, exclusive=True) == 1 and [p.name for p in tmp_path.iterdir()] == ["CURRENT"]
