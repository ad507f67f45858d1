"""Text queries on ONNX Runtime: the same vectors as PyTorch, a cached export, and a safe fallback."""

from __future__ import annotations

import copy
import logging
import os
import time

import numpy as np
import onnx
import pytest
import torch

import resources.encoder.models as models_module
from resources.config import ConfigError, Settings
from resources.encoder.clip import ClipEncoder
from resources.encoder.devices import resolve_text_runtime
from resources.encoder.onnx_text import OnnxTextError, OnnxTextModel, fingerprint
from resources.errors import ImageSearchError

QUERIES = ["a dog on the beach", "perro", "montañas nevadas al atardecer junto a un lago", "城市夜景", "Кошка"]


@pytest.fixture()
def fresh_models(monkeypatch):
    """An empty per-process model cache, so each test loads (and exports) for itself."""
    monkeypatch.setattr(models_module, "MODELS", {})


def _negated(model):
    """A copy of ``model`` whose output vectors point the other way (its dense projection negated)."""
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed[-1].linear.weight.mul_(-1.0)
    return changed


def _encoder(tiny_models, tmp_path, runtime="auto"):
    return ClipEncoder(
        str(tiny_models[0]),
        str(tiny_models[1]),
        device="cpu",
        precision="fp32",
        text_runtime=runtime,
        onnx_dir=tmp_path,
    )


def test_text_queries_run_on_onnx_runtime_with_pytorchs_vectors(tiny_models, tmp_path, fresh_models):
    encoder = _encoder(tiny_models, tmp_path)
    batched = encoder.encode_texts(QUERIES)
    assert encoder.text_runtime == "onnx"
    # The graph and its weights, each whole: no temporary folder is left behind.
    name = encoder.load_onnx_text_model().path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == [name, f"{name}.data"]
    reference = encoder.text_model.encode(QUERIES, convert_to_numpy=True, normalize_embeddings=True)
    singles = np.concatenate([encoder.encode_texts([q]) for q in QUERIES])
    assert batched.shape == (len(QUERIES), 512) and batched.dtype == np.float32
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    # Padding in a batch of different lengths must not change any vector.
    assert (batched * reference).sum(axis=1).min() >= 0.9999
    assert (singles * reference).sum(axis=1).min() >= 0.9999
    assert encoder.load_onnx_text_model().probe_cosine >= 0.9999


def test_the_pytorch_weights_are_dropped_once_the_session_serves(tiny_models, tmp_path, fresh_models):
    encoder = _encoder(tiny_models, tmp_path)
    model = encoder.text_model
    before = model.encode(QUERIES, convert_to_numpy=True, normalize_embeddings=True)
    encoder.encode_texts(["warm up"])
    assert (str(tiny_models[1]), "cpu") not in models_module.MODELS
    kept = encoder.load_onnx_text_model()._model
    assert {p.device.type for p in kept.parameters()} == {"meta"}
    # The model the caller held still works, and the property loads it again on demand.
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert np.array_equal(model.encode(QUERIES, convert_to_numpy=True, normalize_embeddings=True), before)
    assert encoder.text_model is not model and (str(tiny_models[1]), "cpu") in models_module.MODELS
    assert (encoder.encode_texts(QUERIES) * before).sum(axis=1).min() >= 0.9999


def test_the_export_is_reused_and_redone_for_a_changed_model(tiny_models, tmp_path, fresh_models):
    model = _encoder(tiny_models, tmp_path).text_model
    first = OnnxTextModel.load(model, tmp_path)
    stamp = first.path.stat().st_mtime_ns
    again = OnnxTextModel.load(model, tmp_path)
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp
    changed = _negated(model)
    assert fingerprint(changed) != fingerprint(model)
    other = OnnxTextModel.load(changed, tmp_path)
    assert other.path != first.path
    assert (first.encode(["perro"]) @ other.encode(["perro"]).T)[0, 0] == pytest.approx(-1.0, abs=1e-4)


def test_an_export_removes_folders_abandoned_by_killed_exports_only(tiny_models, tmp_path, fresh_models):
    abandoned, in_progress = tmp_path / ".model.onnx.killed.tmp", tmp_path / ".model.onnx.running.tmp"
    for folder in (abandoned, in_progress):
        folder.mkdir()
        (folder / "partial.onnx.data").write_bytes(b"\0" * 1024)
    two_hours_ago = time.time() - 7200
    os.utime(abandoned, (two_hours_ago, two_hours_ago))
    OnnxTextModel.load(_encoder(tiny_models, tmp_path).text_model, tmp_path)
    assert not abandoned.exists() and (in_progress / "partial.onnx.data").is_file()


def test_a_cached_export_of_another_model_is_refused(tiny_models, tmp_path, fresh_models):
    model = _encoder(tiny_models, tmp_path).text_model
    changed = _negated(model)
    wrong = OnnxTextModel.load(changed, tmp_path).path
    wrong.rename(tmp_path / f"{fingerprint(model)}.onnx")
    with pytest.raises(OnnxTextError, match="disagrees with PyTorch"):
        OnnxTextModel.load(model, tmp_path)


def _foreign_graph(path):
    """A valid ONNX file of an unrelated graph: ``y = Identity(x)``."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "foreign", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(path))


@pytest.mark.parametrize("damage", ["garbage", "foreign graph", "weights file lost", "weights file cut short"])
def test_an_unusable_export_falls_back_to_pytorch_unless_onnx_was_asked_for(
    tiny_models, tmp_path, fresh_models, caplog, damage
):
    model = _encoder(tiny_models, tmp_path).text_model
    cached = tmp_path / f"{fingerprint(model)}.onnx"
    weights = tmp_path / f"{cached.name}.data"
    if damage == "garbage":
        cached.write_bytes(b"this is not an ONNX model")
    elif damage == "foreign graph":
        _foreign_graph(cached)
    else:
        OnnxTextModel.load(model, tmp_path)
        if damage == "weights file lost":
            weights.unlink()
        else:
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="resources.encoder.clip"):
        encoder = _encoder(tiny_models, tmp_path)
        vectors = encoder.encode_texts(QUERIES[:2])
    assert encoder.text_runtime == "torch" and vectors.shape == (2, 512)
    assert any("runs on PyTorch" in r.getMessage() and str(tiny_models[1]) in r.getMessage() for r in caplog.records)
    strict = _encoder(tiny_models, tmp_path, runtime="onnx")
    with pytest.raises(ImageSearchError) as error:
        strict.encode_texts(["perro"])
    assert "IMAGE_SEARCH_TEXT_RUNTIME=onnx" in str(error.value) and "\n" not in str(error.value)


def test_pytorch_runtime_on_request(tiny_models, tmp_path, fresh_models):
    encoder = _encoder(tiny_models, tmp_path, runtime="torch")
    assert encoder.encode_texts(["perro"]).shape == (1, 512)
    assert encoder.text_runtime == "torch" and not list(tmp_path.glob("*.onnx"))


def test_text_runtime_resolution_and_setting():
    assert resolve_text_runtime("auto", "cpu", "fp32") == "onnx"
    assert resolve_text_runtime("auto", "cpu", "bf16") == "torch"
    assert resolve_text_runtime("auto", "cuda", "fp16") == "torch"
    assert resolve_text_runtime("torch", "cpu", "fp32") == "torch"
    with pytest.raises(ImageSearchError, match="IMAGE_SEARCH_TEXT_RUNTIME=onnx runs float32 on the CPU"):
        resolve_text_runtime("onnx", "cpu", "bf16")
    with pytest.raises(ConfigError, match="IMAGE_SEARCH_TEXT_RUNTIME='tensorrt'"):
        Settings(text_runtime="tensorrt").validate()
