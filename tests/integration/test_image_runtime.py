"""The faster image runtime and its agreement gate, on real models built here and real JPEGs.

OpenVINO and NNCF run for real; the only stand-ins are a deliberately broken quantization
(weights rounded to one bit) to force a disagreement, and a counting wrapper around the
real build to see when it runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import resources.encoder.models as models_module
from benchmarks.embed import write_bench_images
from image_search.tiny_models import write_tiny_models
from resources.encoder.clip import ClipEncoder
from resources.encoder.gate import MIN_COSINE, MIN_TOP10_OVERLAP
from tests.pipeline import broken_quantization, count_builds

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]


def write_2021_layout(source: Path, target: Path) -> Path:
    """The hub's 2021 layout of a sentence-transformers CLIP model, with ``source``'s weights.

    As ``sentence-transformers/clip-ViT-B-32`` was published in 2021: ``modules.json``
    names the subfolder ``0_CLIPModel``, the weights are a pickled state dict in
    ``pytorch_model.bin`` (no safetensors), and the image processor is described in a
    ``preprocessor_config.json`` of the time (a ``CLIPFeatureExtractor``, sizes as plain numbers).
    """
    from transformers import CLIPModel

    inner = target / "0_CLIPModel"
    inner.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, inner / name)
    torch.save(CLIPModel.from_pretrained(source).state_dict(), inner / "pytorch_model.bin")
    processor = {
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "size": 224,
        "resample": 3,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    (inner / "preprocessor_config.json").write_text(json.dumps(processor))
    modules = [{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}]
    (target / "modules.json").write_text(json.dumps(modules))
    return target


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    return write_bench_images(tmp_path_factory.mktemp("photos"), 40, workers=1)


def _encoder(model: Path, runtimes: Path, runtime: str = "openvino") -> ClipEncoder:
    return ClipEncoder(str(model), str(model), device="cpu", runtime=runtime, runtimes_dir=runtimes, decode_workers=1)


def test_full_size_vit_b32_int8_passes_the_gate_and_is_cached(tmp_path_factory, photos, monkeypatch):
    """The issue's gate on the real ViT-B/32 architecture (random weights): int8 by NNCF agrees with fp32."""
    models = tmp_path_factory.mktemp("full")
    write_tiny_models(models, full_size=True)
    runtimes = models / "runtimes"
    encoder = _encoder(models / "clip", runtimes)
    report = encoder.select_image_runtime(photos, held_out=24, calibration=16)
    assert report.passed, report
    assert report.cosine_min >= MIN_COSINE and report.top10_overlap >= MIN_TOP10_OVERLAP and report.sample == 24
    assert encoder.runtime_label == ("openvino", "int8")
    vectors = np.concatenate([batch.vectors for batch in encoder.encode_image_files(photos[:4])])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)

    built = count_builds(monkeypatch)
    again = _encoder(models / "clip", runtimes)
    assert again.select_image_runtime(photos, 24, 16) == report and not built
    assert again.runtime_label == ("openvino", "int8") and ("openvino", "int8") in again.agreeing_runtimes()


def test_a_broken_quantization_fails_the_gate_and_pytorch_encodes(tiny_models, photos, tmp_path, monkeypatch):
    broken_quantization(monkeypatch)
    encoder = _encoder(tiny_models[0], tmp_path)
    report = encoder.select_image_runtime(photos, 20, 20)
    assert not report.passed and "disagrees with PyTorch fp32" in report.reason
    assert encoder.runtime_label == ("torch", encoder.precision)
    assert encoder.agreeing_runtimes() == set()


def test_the_runtime_is_rebuilt_when_the_model_changes(tiny_models, photos, tmp_path, monkeypatch):
    from transformers import CLIPModel

    model = tmp_path / "model"
    shutil.copytree(tiny_models[0], model)
    built = count_builds(monkeypatch)
    first = _encoder(model, tmp_path / "runtimes")
    assert first.select_image_runtime(photos, 20, 20).passed and len(built) == 1
    _encoder(model, tmp_path / "runtimes").select_image_runtime(photos, 20, 20)
    assert len(built) == 1

    changed = CLIPModel.from_pretrained(model)
    with torch.no_grad():
        changed.visual_projection.weight.mul_(1.01)
    changed.save_pretrained(model)
    monkeypatch.setattr(models_module, "MODELS", {})
    second = _encoder(model, tmp_path / "runtimes")
    assert second.select_image_runtime(photos, 20, 20).model_hash != first.model_hash
    assert len(built) == 2 and built[1].parent.parent.name == second.model_hash


def test_a_2021_layout_model_loads_and_shares_the_built_runtime(tiny_models, photos, tmp_path, monkeypatch):
    old = write_2021_layout(tiny_models[0], tmp_path / "clip-2021")
    built = count_builds(monkeypatch)
    today = _encoder(tiny_models[0], tmp_path / "runtimes")
    today.select_image_runtime(photos, 20, 20)
    legacy = _encoder(old, tmp_path / "runtimes")
    assert legacy.model_hash == today.model_hash
    assert legacy.select_image_runtime(photos, 20, 20).passed and len(built) == 1
    assert legacy.runtime_label == ("openvino", "int8")
    a = next(_encoder(tiny_models[0], tmp_path, "torch").encode_image_files(photos[:3])).vectors
    b = next(_encoder(old, tmp_path, "torch").encode_image_files(photos[:3])).vectors
    assert np.allclose(a, b, atol=1e-6)


def test_too_few_photos_leave_pytorch_and_are_judged_again_next_time(tiny_models, photos, tmp_path):
    encoder = _encoder(tiny_models[0], tmp_path)
    report = encoder.select_image_runtime(photos[:2], 20, 20)
    assert not report.passed and "fewer than 2" in report.reason and encoder.runtime_label[0] == "torch"
    assert encoder.select_image_runtime(photos, 20, 20).passed and encoder.runtime_label == ("openvino", "int8")
