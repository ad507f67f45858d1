"""The ``image_embeddings`` asset, materialized for real on the sample release with the tiny models."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import AssetSelection, DagsterInstance, materialize

from assets.catalog import photo_catalog
from assets.checks import VECTORS_COVER_IMAGES_CHECK, vectors_cover_images
from assets.embeddings import RUNTIME_GATE_CHECK, VECTORS_VALID_CHECK, image_embeddings, vectors_valid
from assets.images import images
from assets.partitions import photo_bucket
from assets.raw import collections, colors, conversions, keywords, photos, unsplash_release
from image_search.tiny_models import write_tiny_models
from resources.dagster_resources import ClipResource, SettingsResource
from resources.encoder.clip import ClipEncoder
from resources.images.image_store import ImageStore
from resources.vectors.vector_store import VectorStore, chunk_schema, load_embeddings, model_key
from tests.images import cmyk_jpeg, exif_rotated_jpeg, jpeg_bytes, palette_png_transparent, png16, webp_bytes
from tests.pause import PausePoint

ALL_BUCKETS = {"dagster/asset_partition_range_start": "b00", "dagster/asset_partition_range_end": "b63"}
INGESTION = [unsplash_release, photos, keywords, collections, conversions, colors, photo_catalog]
REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]


def _settings(home: Path, models: tuple[Path, Path], **extra) -> SettingsResource:
    return SettingsResource(home=str(home), image_model=str(models[0]), text_model=str(models[1]), **extra)


def run_embeddings(home: Path, models, raise_on_error: bool = True, **extra):
    settings = _settings(home, models, **extra)
    return materialize(
        [image_embeddings, vectors_valid, vectors_cover_images],
        resources={"settings": settings, "clip": ClipResource(settings=settings)},
        instance=DagsterInstance.ephemeral(),
        tags=ALL_BUCKETS,
        raise_on_error=raise_on_error,
    )


def _metadata(result) -> dict:
    event = result.get_asset_materialization_events()[0]
    return {key: getattr(value, "value", value) for key, value in event.materialization.metadata.items()}


def _checks(result) -> dict[str, bool]:
    return {evaluation.check_name: evaluation.passed for evaluation in result.get_asset_check_evaluations()}


def _stored_ids(home: Path) -> list[str]:
    catalog = pd.read_parquet(home / "catalog" / "catalog.parquet", columns=["photo_id"])
    store = ImageStore(home / "images")
    return sorted(pid for pid in catalog["photo_id"] if store.has(pid))


def _stored_rows(home: Path, model_id: str) -> int:
    return sum(
        pq.read_metadata(p).num_rows for p in (home / "embeddings" / model_key(model_id)).glob("*/part-*.parquet")
    )


@pytest.fixture(scope="module")
def ingested_home(sample_release: Path, tiny_models, tmp_path_factory) -> Path:
    """The sample release ingested and its images fetched (file:// URLs) by the real assets, once per module."""
    home = tmp_path_factory.mktemp("pipeline") / "home"
    settings = _settings(home, tiny_models, dataset=str(sample_release))
    materialize(INGESTION, resources={"settings": settings}, instance=DagsterInstance.ephemeral())
    materialize([images], resources={"settings": settings}, instance=DagsterInstance.ephemeral(), tags=ALL_BUCKETS)
    assert _stored_ids(home)
    return home


@pytest.fixture
def home(ingested_home: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(ingested_home, copy, ignore=shutil.ignore_patterns("locks"))
    return copy


def test_every_stored_image_gets_one_unit_vector_and_a_rerun_encodes_nothing(home, tiny_models):
    stored = _stored_ids(home)
    model_id = str(tiny_models[0])

    first = run_embeddings(home, tiny_models)

    meta = _metadata(first)
    assert meta["encoded"] == len(stored) and meta["decode_failures"] == 0
    assert meta["dimension"] == 512 and meta["model"] == model_id
    assert meta["device"] == "cpu" and meta["precision"] in ("fp32", "bf16")
    assert meta["throughput_img_per_s"] > 0
    assert _checks(first) == {VECTORS_VALID_CHECK: True, VECTORS_COVER_IMAGES_CHECK: True, RUNTIME_GATE_CHECK: True}
    settings = _settings(home, tiny_models).get()
    ids, vectors = load_embeddings(settings, model_id)
    assert sorted(ids) == stored and len(set(ids)) == len(ids) == _stored_rows(home, model_id)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    encoder = ClipEncoder(model_id, str(tiny_models[1]), device="cpu", precision=meta["precision"])
    direct = next(encoder.encode_image_files([ImageStore(home / "images").path_for(ids[0])])).vectors[0]
    assert float(direct @ vectors[0]) > 0.999
    subset, subset_vectors = load_embeddings(settings, model_id, photo_ids=ids[:3] + ["not-a-photo"])
    assert sorted(subset) == sorted(ids[:3]) and subset_vectors.shape == (3, 512)

    second = run_embeddings(home, tiny_models)
    assert _metadata(second)["encoded"] == 0 and _metadata(second)["skipped_up_to_date"] == len(stored)
    assert all(_checks(second).values())
    assert _stored_rows(home, model_id) == len(stored)


def test_switching_runtime_re_encodes_nothing_when_the_gate_agrees(home, tiny_models):
    stored = _stored_ids(home)
    first = run_embeddings(home, tiny_models, runtime="torch")
    assert _metadata(first)["encoded"] == len(stored) and _metadata(first)["gate_verdict"].startswith("not run")

    faster = run_embeddings(home, tiny_models, runtime="openvino")
    meta = _metadata(faster)
    assert meta["gate_verdict"] == "passed" and (meta["runtime"], meta["runtime_precision"]) == ("openvino", "int8")
    assert meta["gate_cosine_min"] >= 0.99 and meta["gate_top10_overlap"] >= 0.9 and meta["gate_sample"] >= 2
    assert meta["encoded"] == 0 and meta["reencoded_for_runtime"] == 0 and _checks(faster)[RUNTIME_GATE_CHECK]

    back = run_embeddings(home, tiny_models, runtime="torch")
    assert _metadata(back)["encoded"] == 0


def test_a_broken_quantization_falls_back_to_pytorch_and_says_so(home, tiny_models, monkeypatch):
    """The quantization is broken on purpose (one-bit weights, tests/integration/test_image_runtime.py): the gate must catch it."""
    from tests.pipeline import broken_quantization

    broken_quantization(monkeypatch)
    stored = _stored_ids(home)
    result = run_embeddings(home, tiny_models, runtime="openvino")
    meta = _metadata(result)
    assert meta["gate_verdict"] == "failed: PyTorch encodes" and "disagrees" in meta["gate_reason"]
    assert meta["gate_cosine_min"] < 0.99 and meta["runtime"] == "torch" and meta["encoded"] == len(stored)
    assert _checks(result)[RUNTIME_GATE_CHECK] is False and _checks(result)[VECTORS_VALID_CHECK]
    made_by = VectorStore(home / "embeddings", str(tiny_models[0])).read_bucket(photo_bucket(stored[0]), ["runtime"])
    assert set(made_by.column("runtime").to_pylist()) == {"torch"}


def test_a_changed_image_is_re_encoded_and_a_new_model_re_encodes_everything(home, tiny_models, tmp_path):
    stored = _stored_ids(home)
    run_embeddings(home, tiny_models)
    settings = _settings(home, tiny_models).get()
    before = dict(zip(*load_embeddings(settings, str(tiny_models[0]))))
    changed = stored[0]
    path = ImageStore(home / "images").path_for(changed)
    replacement = path.with_suffix(".new")
    replacement.write_bytes(jpeg_bytes(640, 427, seed=99))
    os.replace(replacement, path)

    again = run_embeddings(home, tiny_models)
    assert _metadata(again)["encoded"] == 1
    after = dict(zip(*load_embeddings(settings, str(tiny_models[0]))))
    assert float(after[changed] @ before[changed]) < 0.9999
    assert all(np.array_equal(after[pid], before[pid]) for pid in stored[1:])

    other_models = write_tiny_models(tmp_path / "other-models")
    switched = run_embeddings(home, other_models)
    assert _metadata(switched)["encoded"] == len(stored)
    assert all(_checks(switched).values())
    assert len(load_embeddings(settings, str(other_models[0]))[0]) == len(stored)
    assert len(load_embeddings(settings, str(tiny_models[0]))[0]) == len(stored)


def test_a_model_changed_in_place_re_encodes_every_vector_its_old_content_made(
    home, tiny_models, tmp_path, monkeypatch
):
    """The same IMAGE_SEARCH_IMAGE_MODEL path with new weights (a fine-tune saved over it): no old vector may stay."""
    import torch
    from transformers import CLIPModel

    import resources.encoder.models as models_module

    model = tmp_path / "clip"
    shutil.copytree(tiny_models[0], model)
    models = (model, tiny_models[1])
    stored = _stored_ids(home)
    assert _metadata(run_embeddings(home, models, runtime="torch"))["encoded"] == len(stored)
    changed = CLIPModel.from_pretrained(model)
    with torch.no_grad():
        changed.visual_projection.weight.mul_(-1.0)
    changed.save_pretrained(model)
    monkeypatch.setattr(models_module, "MODELS", {})
    meta = _metadata(run_embeddings(home, models, runtime="torch"))
    assert meta["encoded"] == len(stored) and meta["reencoded_for_model_change"] == len(stored)
    assert _metadata(run_embeddings(home, models, runtime="torch"))["encoded"] == 0


def test_bad_images_in_the_store_are_counted_and_the_run_goes_on(home, tiny_models):
    """The images asset stores only normalised JPEGs; here files are overwritten in the store
    directly, as a foreign or older writer could leave them."""
    stored = _stored_ids(home)
    store = ImageStore(home / "images")
    awkward = {
        "truncated": jpeg_bytes(640, 427)[:700],
        "cmyk": cmyk_jpeg(),
        "png16": png16(),
        "palette": palette_png_transparent(),
        "rotated": exif_rotated_jpeg(),
        "webp": webp_bytes(),
        "html": b"<html>gone</html>",
    }
    victims = dict(zip(stored, awkward))
    for photo_id, kind in victims.items():
        store.path_for(photo_id).write_bytes(awkward[kind])

    result = run_embeddings(home, tiny_models, raise_on_error=False)

    meta = _metadata(result)
    assert meta["decode_failures"] == 2 and meta["encoded"] == len(stored) - 2
    failed = {pid for pid, kind in victims.items() if kind in ("truncated", "html")}
    assert failed <= {record.data["photo_id"] for record in meta["decode_failure_examples"].records}
    checks = _checks(result)
    assert checks[VECTORS_VALID_CHECK] is True
    assert checks[VECTORS_COVER_IMAGES_CHECK] is False
    ids, _ = load_embeddings(_settings(home, tiny_models).get(), str(tiny_models[0]))
    assert sorted(ids) == sorted(set(stored) - failed)


def test_vectors_valid_takes_the_dimension_from_the_store_and_needs_no_model(home, tiny_models):
    """Run alone, with only the settings resource: the check reads vectors, never the model."""
    run_embeddings(home, tiny_models)
    settings = _settings(home, tiny_models)
    store = VectorStore.for_settings(settings.get())
    bucket = sorted(p.name for p in store.root.iterdir())[0]
    rows = store.read_bucket(bucket, ["photo_id", "image_bytes", "image_mtime_ns"])
    for part in store.bucket_dir(bucket).glob("part-*.parquet"):
        part.unlink()
    foreign = pa.table(
        {
            "photo_id": rows["photo_id"],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(8 * len(rows), np.float32)), 8),
            "model_id": pa.array([store.model_id] * len(rows)),
            "image_bytes": rows["image_bytes"],
            "image_mtime_ns": rows["image_mtime_ns"],
            "runtime": pa.array(["torch"] * len(rows)),
            "precision": pa.array(["fp32"] * len(rows)),
            "model_hash": pa.nulls(len(rows), pa.string()),
        },
        schema=chunk_schema(8),
    )
    os.utime(store.write_chunk(bucket, foreign), ns=(0, 0))

    assert "clip" not in vectors_valid.required_resource_keys
    unloadable = ClipResource(settings=SettingsResource(home=str(home), image_model=str(home / "no-such-model")))
    result = materialize(
        [image_embeddings, vectors_valid],
        selection=AssetSelection.checks(vectors_valid),
        resources={"settings": settings, "clip": unloadable},
        instance=DagsterInstance.ephemeral(),
        tags=ALL_BUCKETS,
        raise_on_error=False,
    )

    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.metadata["dimension"].value == 512
    assert evaluation.metadata["wrong_dimension"].value == len(rows) > 0


def _write_store(home: Path, count: int) -> list[str]:
    """A catalog of ``count`` photos and their images placed in the store (copies of a few JPEGs)."""
    ids = [f"photo{i:04d}" for i in range(count)]
    path = home / "catalog" / "catalog.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"photo_id": ids, "photo_image_url": [f"file:///nowhere/{i}.jpg" for i in ids]})
    frame["bucket"] = frame["photo_id"].map(photo_bucket)
    frame.to_parquet(path, index=False)
    store = ImageStore(home / "images")
    sources = [jpeg_bytes(320, 240, seed=s) for s in range(8)]
    for i, photo_id in enumerate(ids):
        target = store.path_for(photo_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(sources[i % len(sources)])
    return ids


def test_a_run_killed_mid_way_resumes_with_no_duplicate_and_no_missing_vector(tmp_path, tiny_models):
    home = tmp_path / "home"
    ids = _write_store(home, 160)
    model_id = str(tiny_models[0])
    script = textwrap.dedent(
        f"""
        import torch
        from dagster import AssetSelection, DagsterInstance, materialize
        import assets.embeddings as embeddings
        import resources.vectors.vector_store as vector_store
        from resources.dagster_resources import ClipResource, SettingsResource

        torch.set_num_threads(1)
        vector_store.CHUNK_ROWS = 16
        settings = SettingsResource(home={str(home)!r}, image_model={model_id!r}, text_model={str(tiny_models[1])!r})
        materialize([embeddings.image_embeddings], resources={{"settings": settings, "clip": ClipResource(settings=settings)}},
                    instance=DagsterInstance.ephemeral(), tags={ALL_BUCKETS!r})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMAGE_SEARCH_EMBED_BATCH_SIZE": "8"}
    vectors_dir = home / "embeddings" / model_key(model_id)
    # Held before its third chunk is written, so two are on disk and the run cannot finish first.
    with PausePoint("resources.vectors.vector_store:VectorStore.write_chunk#3") as pause:
        process = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=REPO,
            env=pause.env(env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            pause.wait(process)
            assert len(list(vectors_dir.glob("*/part-*.parquet"))) == 2
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
    written = _stored_rows(home, model_id)
    assert 0 < written < len(ids)

    result = run_embeddings(home, tiny_models)

    meta = _metadata(result)
    assert meta["skipped_up_to_date"] >= written and meta["encoded"] == len(ids) - meta["skipped_up_to_date"]
    assert all(_checks(result).values())
    loaded, vectors = load_embeddings(_settings(home, tiny_models).get(), model_id)
    assert sorted(loaded) == ids and len(set(loaded)) == len(loaded) == _stored_rows(home, model_id)
    assert not list(vectors_dir.glob("*/.*.tmp"))
    assert np.isfinite(vectors).all()
