"""Two builders of the image runtime at once on one shared folder, one of them a real second process.

The second process is held by ``tests/pause.py`` right after its build is renamed into
place and before the gate judges it; meanwhile this process builds a disagreeing runtime
(the one-bit quantization of test_image_runtime.py, standing for any other build) into the
same folder. os.replace makes each file's switch atomic, not the pair's, nor the pair's
with the verdict written later (Python docs, os.replace; POSIX rename(2)).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from benchmarks.embed import write_bench_images
from resources.encoder.clip import ClipEncoder
from tests.pause import PausePoint
from tests.pipeline import broken_quantization, count_builds

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]

REPO = Path(__file__).resolve().parents[2]
BUILD = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    torch.set_num_threads(1)
    from resources.encoder.clip import ClipEncoder
    model, runtimes, *photos = sys.argv[1:]
    encoder = ClipEncoder(model, model, device="cpu", runtime="openvino", runtimes_dir=Path(runtimes), decode_workers=1)
    report = encoder.select_image_runtime(photos, 20, 20)
    print(report.passed, encoder.runtime_label, flush=True)
    """
)


def _encoder(model: Path, runtimes: Path) -> ClipEncoder:
    return ClipEncoder(
        str(model), str(model), device="cpu", runtime="openvino", runtimes_dir=runtimes, decode_workers=1
    )


def test_a_verdict_written_after_another_build_replaced_the_files_is_not_trusted(tiny_models, tmp_path, monkeypatch):
    photos = [str(p) for p in write_bench_images(tmp_path / "photos", 40, workers=1)]
    runtimes = tmp_path / "runtimes"
    with PausePoint("resources.encoder.selection:judge_here") as pause:
        first = subprocess.Popen(
            [sys.executable, "-c", BUILD, str(tiny_models[0]), str(runtimes), *photos],
            cwd=REPO,
            env=pause.env({**os.environ, "PYTHONPATH": str(REPO)}),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            pause.wait(first)
            with monkeypatch.context() as patch:
                broken_quantization(patch)
                assert not _encoder(tiny_models[0], runtimes).select_image_runtime(photos, 20, 20).passed
            pause.release()
            out, _ = first.communicate(timeout=300)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
                first.wait()
    # The first builder judged its own build in memory: it passed, and encoded with it.
    # Nothing else on its stdout, which belongs to a command's own output (bench embed --json): NNCF logs to stderr.
    assert out.strip().splitlines() == ["True ('openvino', 'int8')"], out[-2000:]
    # On disk lie the second build's files under the first one's passing verdict: never used as they are.
    built = count_builds(monkeypatch)
    third = _encoder(tiny_models[0], runtimes)
    assert third.select_image_runtime(photos, 20, 20).passed and len(built) == 1
    fp32 = ClipEncoder(str(tiny_models[0]), str(tiny_models[0]), device="cpu", precision="fp32", runtime="torch")
    a = np.concatenate([b.vectors for b in third.encode_image_files(photos[:8])])
    b = np.concatenate([b.vectors for b in fp32.encode_image_files(photos[:8])])
    assert float(np.min(np.sum(a * b, axis=1))) >= 0.99
