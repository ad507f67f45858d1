"""The cached image runtime attacked as a second writer on a shared IMAGE_SEARCH_HOME would.

Every attack plays on the real files under ``<runtimes>/<model hash>/openvino-int8/``
(model.xml, model.bin, gate.json) with real OpenVINO and NNCF builds of the tiny model.
Stand-ins, where nothing real can run here: a deliberately broken quantization (as in
test_image_runtime.py) stands for a build that disagrees, a ``save_model`` that raises
ENOSPC after half a file stands for a full disk, and a model.bin that is a folder stands
for an unreadable file (these tests run as root, whom a chmod does not stop).
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import resources.encoder.models as models_module
import resources.encoder.selection as selection
from benchmarks.embed import write_bench_images
from resources.encoder.clip import ClipEncoder
from resources.encoder.gate import GateReport
from resources.images.image_store import ImageStore
from resources.vectors.vector_store import VectorStore
from tests.pipeline import broken_quantization, count_builds

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]

HELD_OUT, CALIBRATION = 20, 20


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    return write_bench_images(tmp_path_factory.mktemp("photos"), 40, workers=1)


def _encoder(model: Path, runtimes: Path, runtime: str = "openvino") -> ClipEncoder:
    return ClipEncoder(str(model), str(model), device="cpu", runtime=runtime, runtimes_dir=runtimes, decode_workers=1)


def _select(model: Path, runtimes: Path, photos) -> tuple[ClipEncoder, GateReport]:
    encoder = _encoder(model, runtimes)
    return encoder, encoder.select_image_runtime(photos, HELD_OUT, CALIBRATION)


def _folder(encoder: ClipEncoder) -> Path:
    return encoder.runtimes_dir / encoder.model_hash / "openvino-int8"


def _verdict(encoder: ClipEncoder) -> Path:
    """The one verdict file of the encoder's build (judged on this CPU)."""
    (path,) = _folder(encoder).glob("gate-*.json")
    return path


def _agrees_with_fp32(encoder: ClipEncoder, photos) -> float:
    """The smallest cosine between the encoder's vectors and PyTorch fp32's on a few photos."""
    fp32 = ClipEncoder(encoder.image_model_id, encoder.image_model_id, device="cpu", precision="fp32", runtime="torch")
    a = np.concatenate([b.vectors for b in encoder.encode_image_files(photos[:8])])
    b = np.concatenate([b.vectors for b in fp32.encode_image_files(photos[:8])])
    return float(np.min(np.sum(a * b, axis=1)))


@pytest.fixture(scope="module")
def broken_build(tiny_models, photos, tmp_path_factory) -> Path:
    """A folder holding a complete build of the tiny model that disagrees with fp32 (one-bit weights)."""
    runtimes = tmp_path_factory.mktemp("broken")
    with pytest.MonkeyPatch.context() as patch:
        broken_quantization(patch)
        encoder, report = _select(tiny_models[0], runtimes, photos)
    assert not report.passed
    return _folder(encoder)


@pytest.fixture
def good(tiny_models, photos, tmp_path) -> tuple[ClipEncoder, GateReport]:
    """A fresh runtimes folder with a passing build of the tiny model."""
    encoder, report = _select(tiny_models[0], tmp_path / "runtimes", photos)
    assert report.passed and encoder.runtime_label == ("openvino", "int8")
    return encoder, report


# --- forged or mismatched files: CWE-345 (insufficient verification of data authenticity) ---


def test_a_model_swapped_under_a_passing_verdict_is_not_used(good, broken_build, photos, monkeypatch):
    """A second writer (or a concurrent build) replaces model.xml/.bin after the gate judged the first build.

    The verdict in gate.json is about the files it judged; the swapped files must be
    judged anew, not run under the old verdict (os.replace of each file is atomic, the
    pair is not: Python docs, os.replace).
    """
    encoder, _ = good
    for name in ("model.xml", "model.bin"):
        shutil.copy(broken_build / name, _folder(encoder) / name)
    built = count_builds(monkeypatch)
    again, report = _select(Path(encoder.image_model_id), encoder.runtimes_dir, photos)
    assert len(built) == 1 and report.passed
    assert _agrees_with_fp32(again, photos) >= 0.99


def test_half_a_model_pair_is_rebuilt(good, broken_build, photos, monkeypatch):
    """A writer killed between renaming model.bin and model.xml leaves a new .bin beside the old .xml."""
    encoder, _ = good
    shutil.copy(broken_build / "model.bin", _folder(encoder) / "model.bin")
    built = count_builds(monkeypatch)
    again, report = _select(Path(encoder.image_model_id), encoder.runtimes_dir, photos)
    assert len(built) == 1 and report.passed and _agrees_with_fp32(again, photos) >= 0.99


def test_a_truncated_model_bin_is_rebuilt_not_a_crash(good, photos, monkeypatch):
    encoder, _ = good
    weights = _folder(encoder) / "model.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    built = count_builds(monkeypatch)
    again, report = _select(Path(encoder.image_model_id), encoder.runtimes_dir, photos)
    assert len(built) == 1 and report.passed and again.runtime_label == ("openvino", "int8")


def test_an_unreadable_model_bin_leaves_pytorch_and_says_why_not_a_crash(good, photos):
    """A folder planted as model.bin cannot be read, nor renamed over (rename(2): EISDIR): PyTorch encodes, the reason names it."""
    encoder, _ = good
    weights = _folder(encoder) / "model.bin"
    weights.unlink()
    weights.mkdir()  # reading it raises IsADirectoryError, as an unreadable file raises PermissionError
    again, report = _select(Path(encoder.image_model_id), encoder.runtimes_dir, photos)
    assert not report.passed and "model.bin" in report.reason and again.runtime_label[0] == "torch"
    assert again.agreeing_runtimes() == {("openvino", "int8")}  # the vectors judged before still agree


def test_a_gate_json_copied_from_another_models_folder_is_not_trusted(good, tiny_models, photos, tmp_path, monkeypatch):
    """Another model's passing verdict and build, copied into this model's folder, judge nothing about this model."""
    import torch
    from transformers import CLIPModel

    encoder, _ = good
    other = tmp_path / "other-model"
    shutil.copytree(tiny_models[0], other)
    changed = CLIPModel.from_pretrained(other)
    with torch.no_grad():
        changed.visual_projection.weight.mul_(-1.0)
    changed.save_pretrained(other)
    monkeypatch.setattr(models_module, "MODELS", {})
    victim = _encoder(other, encoder.runtimes_dir)
    shutil.copytree(_folder(encoder), _folder(victim))
    assert victim.agreeing_runtimes() == set()
    built = count_builds(monkeypatch)
    report = victim.select_image_runtime(photos, HELD_OUT, CALIBRATION)
    assert len(built) == 1 and report.passed and report.model_hash == victim.model_hash
    assert _agrees_with_fp32(victim, photos) >= 0.99


def test_a_gate_json_naming_another_runtime_does_not_accept_its_vectors(good):
    """A passing verdict in openvino-int8/ that says it is about onnx/int8 vouches for no onnx vector."""
    encoder, report = good
    forged = dict(json.loads(_verdict(encoder).read_text()), runtime="onnx")
    _verdict(encoder).write_text(json.dumps(forged))
    assert ("onnx", "int8") not in encoder.agreeing_runtimes()


@pytest.mark.parametrize(
    "text",
    ['{"runtime": "openvino", "precision": "int8", "passed": tr', '{"passed": true}', "[]", "null", "", "passed"],
    ids=["truncated", "missing-fields", "list", "null", "empty", "passed-as-a-string"],
)
def test_a_truncated_or_malformed_gate_json_is_judged_again(good, photos, monkeypatch, text):
    encoder, report = good
    verdict = _verdict(encoder)
    if text == "passed":
        text = json.dumps(dict(json.loads(verdict.read_text()), passed="no"))
    verdict.write_text(text)
    built = count_builds(monkeypatch)
    _, report = _select(Path(encoder.image_model_id), encoder.runtimes_dir, photos)
    assert len(built) == 1 and report.passed


# --- a killed or failing writer ---


def test_a_build_killed_mid_way_leaves_nothing_that_is_used_and_the_next_run_builds(
    tiny_models, photos, tmp_path, monkeypatch
):
    """What a build killed after the weights' rename leaves: a scratch folder and a lone model.bin, no verdict."""
    encoder = _encoder(tiny_models[0], tmp_path)
    folder = _folder(encoder)
    folder.mkdir(parents=True)
    (folder / ".model.xml.0123456789ab.tmp").mkdir()
    (folder / ".model.xml.0123456789ab.tmp" / "model.xml").write_text("<net")
    (folder / "model.bin").write_bytes(b"\0" * 100)
    built = count_builds(monkeypatch)
    report = encoder.select_image_runtime(photos, HELD_OUT, CALIBRATION)
    assert len(built) == 1 and report.passed and _agrees_with_fp32(encoder, photos) >= 0.99


def test_a_full_disk_during_the_build_leaves_pytorch_and_builds_again_next_time(
    tiny_models, photos, tmp_path, monkeypatch
):
    import openvino as ov

    real = ov.save_model

    def disk_full(model, path, **options):
        Path(path).with_suffix(".bin").write_bytes(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ov, "save_model", disk_full)
    encoder = _encoder(tiny_models[0], tmp_path)
    report = encoder.select_image_runtime(photos, HELD_OUT, CALIBRATION)
    assert not report.passed and "No space left on device" in report.reason
    assert encoder.runtime_label[0] == "torch"
    assert sorted(p.name for p in _folder(encoder).iterdir()) == []
    monkeypatch.setattr(ov, "save_model", real)
    again, report = _select(tiny_models[0], tmp_path, photos)
    assert report.passed and again.runtime_label == ("openvino", "int8")


def test_a_full_disk_when_saving_the_verdict_leaves_pytorch_not_a_crash(tiny_models, photos, tmp_path, monkeypatch):
    import resources.encoder.gate as gate_module

    def disk_full(path, text, **options):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(gate_module, "write_text", disk_full)
    encoder = _encoder(tiny_models[0], tmp_path)
    encoder.select_image_runtime(photos, HELD_OUT, CALIBRATION)
    assert not list(_folder(encoder).glob("gate-*.json")) and encoder.runtime_label == ("openvino", "int8")


# --- symlinks planted in the cache folder: CWE-59 (link following) ---


def test_a_symlinked_model_bin_is_replaced_not_written_through(good, broken_build, photos, tmp_path, monkeypatch):
    """A rebuild renames its files over a planted link (rename(2) replaces the link itself), leaving its target alone."""
    encoder, _ = good
    outside = tmp_path / "outside.bin"
    shutil.copy(broken_build / "model.bin", outside)
    before = outside.read_bytes()
    weights = _folder(encoder) / "model.bin"
    weights.unlink()
    weights.symlink_to(outside)
    (_folder(encoder) / "model.xml").write_bytes((broken_build / "model.xml").read_bytes())
    built = count_builds(monkeypatch)
    again, report = _select(Path(encoder.image_model_id), encoder.runtimes_dir, photos)
    assert len(built) == 1 and report.passed and _agrees_with_fp32(again, photos) >= 0.99
    assert outside.read_bytes() == before and not weights.is_symlink()


@pytest.mark.parametrize("level", ["hash", "runtime"])
def test_a_symlinked_cache_folder_is_refused_not_written_or_swept_through(tiny_models, photos, tmp_path, level):
    """A link planted as ``<hash>/`` or ``openvino-int8/`` would take the build's files and its sweep of old temporaries elsewhere."""
    import os
    import time

    encoder = _encoder(tiny_models[0], tmp_path / "runtimes")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "openvino-int8" if level == "hash" else elsewhere).mkdir(parents=True)
    old_temporary = (elsewhere / "openvino-int8" if level == "hash" else elsewhere) / ".precious.tmp"
    old_temporary.write_text("not the runtime's")
    os.utime(old_temporary, (time.time() - 7200, time.time() - 7200))
    link = _folder(encoder).parent if level == "hash" else _folder(encoder)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere)
    report = encoder.select_image_runtime(photos, HELD_OUT, CALIBRATION)
    assert not report.passed and "symbolic link" in report.reason and encoder.runtime_label[0] == "torch"
    assert old_temporary.exists() and not list(elsewhere.rglob("model.*"))


# --- machines with different CPUs sharing one home ---


def test_a_verdict_from_another_cpu_is_judged_again_here(good, photos, monkeypatch):
    """int8 and bf16 kernels differ by ISA (AMX, AVX-512 VNNI, AVX2): a verdict holds for the CPU that judged it."""
    import resources.encoder.devices as devices

    encoder, _ = good
    here = devices.cpu_info()
    other = devices.CpuInfo("another CPU", tuple(f for f in devices.MATRIX_FLAGS if f not in here.flags) or ("avx2",))
    monkeypatch.setattr(devices, "cpu_info", lambda: other)
    judged = []
    real = selection.judge
    monkeypatch.setattr(selection, "judge", lambda *a, **k: judged.append(1) or real(*a, **k))
    _, report = _select(Path(encoder.image_model_id), encoder.runtimes_dir, photos)
    assert report.passed and judged


# --- the vector store: runtimes never mix silently ---


def _store_with(tmp_path, rows: dict[str, tuple[str | None, str | None]]):
    images = ImageStore(tmp_path / "images")
    store = VectorStore(tmp_path / "embeddings", "model")
    for photo_id, runtime in rows.items():
        path = images.path_for(photo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"jpeg")
        writer = store.writer(4, runtime)
        stat = path.stat()
        writer.add("b00", photo_id, np.eye(1, 4, dtype=np.float32)[0], stat.st_size, stat.st_mtime_ns)
        writer.flush()
    return store, images


def test_vectors_of_a_runtime_with_no_passing_verdict_are_re_encoded(tmp_path):
    rows = {
        "a": ("torch", "fp32"),
        "b": ("openvino", "int8"),
        "c": ("openvino", ""),
        "d": ("Torch", "fp32"),
        "e": ("openvino", "INT8"),
    }
    store, images = _store_with(tmp_path, rows)
    accepted = {("openvino", "int8")}
    plan = store.plan_encoding("b00", images, list(rows), accepts=lambda by: by[0] == "torch" or by in accepted)
    assert sorted(item[0] for item in plan.todo) == ["c", "d", "e"] and plan.other_runtime == 3
    plan = store.plan_encoding("b00", images, list(rows), accepts=lambda by: by[0] == "torch")
    assert sorted(item[0] for item in plan.todo) == ["b", "c", "d", "e"]


def test_a_model_changed_in_place_re_encodes_the_old_contents_vectors(tmp_path):
    """Same model id (a path), new weights: vectors the old content made must not mix with the new one's."""
    images = ImageStore(tmp_path / "images")
    store = VectorStore(tmp_path / "embeddings", "/models/clip")
    for photo_id, made_by in {"old": "hash-a", "new": "hash-b", "legacy": None}.items():
        path = images.path_for(photo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"jpeg")
        writer = store.writer(4, ("torch", "fp32"), made_by)
        writer.add("b00", photo_id, np.eye(1, 4, dtype=np.float32)[0], path.stat().st_size, path.stat().st_mtime_ns)
        writer.flush()
    plan = store.plan_encoding("b00", images, ["old", "new", "legacy"], accepts=lambda by: True, model_hash="hash-b")
    assert [item[0] for item in plan.todo] == ["old"] and plan.other_model == 1 and plan.other_runtime == 0
    assert store.compact("b00", plan.stored, 4) == 3
    assert store.plan_encoding("b00", images, ["old", "new", "legacy"], model_hash="hash-b").todo[0][0] == "old"
