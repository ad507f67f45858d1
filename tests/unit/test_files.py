"""resources/storage/files.py: atomic writes of files and folders, and the one sweep of what killed writers left."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from resources.storage.files import Staged, scratch_folder, sweep, write_bytes, write_parquet


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_writes_are_atomic_and_stale_temporaries_are_removed(tmp_path):
    target = tmp_path / "b00" / "x.jpg"
    write_bytes(target, b"first")
    write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["x.jpg"]
    (target.parent / ".x.jpg.abc.tmp").write_bytes(b"half")
    assert sweep(target.parent, exclusive=True) == 1
    assert [p.name for p in target.parent.iterdir()] == ["x.jpg"]


def test_without_the_lock_a_sweep_removes_only_abandoned_temporaries_files_and_folders(tmp_path):
    old_file, young_file = tmp_path / ".a.parquet.1.tmp", tmp_path / ".a.parquet.2.tmp"
    old_folder, young_folder = tmp_path / ".build.1.tmp", tmp_path / ".build.2.tmp"
    for path in (old_file, young_file):
        path.write_bytes(b"half")
    for path in (old_folder, young_folder):
        path.mkdir()
        (path / "vectors.npy").write_bytes(b"\0" * 64)
    kept = [tmp_path / "a.parquet", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for path in kept:
        path.write_bytes(b"kept")
        _age(path, 7200)
    _age(old_file, 7200)
    _age(old_folder, 7200)
    assert sweep(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [young_file, young_folder, *kept])
    assert sweep(tmp_path, exclusive=True) == 2, "with the lock held, no live writer owns the young ones"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)
    assert sweep(tmp_path / "absent") == 0


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "table.parquet"
    write_parquet(target, pa.table({"x": [1, 2]}))
    with pytest.raises(RuntimeError):
        with Staged(target) as path:
            pq.write_table(pa.table({"x": [3]}), path)
            raise RuntimeError("the writer fails after writing")
    assert pq.read_table(target)["x"].to_pylist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_a_folder_replaces_the_old_one_whole_or_not_at_all(tmp_path):
    target = tmp_path / "extracted"
    with Staged(target, folder=True) as folder:
        (folder / "photos.tsv000").write_text("v1")
    with pytest.raises(OSError):
        with Staged(target, folder=True) as folder:
            (folder / "photos.tsv000").write_text("v2, cut short")
            raise OSError(28, "No space left on device")
    assert (target / "photos.tsv000").read_text() == "v1"
    with Staged(target, folder=True) as folder:
        (folder / "keywords.tsv000").write_text("v3")
    assert [p.name for p in target.iterdir()] == ["keywords.tsv000"]
    assert [p.name for p in tmp_path.iterdir()] == ["extracted"]
    with scratch_folder(target) as scratch:
        (scratch / "model.onnx").write_text("moved out by the caller")
        os.replace(scratch / "model.onnx", tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extracted", "model.onnx"]
