"""The CLIP encoder on real files and the tiny local models: awkward images, agreement, errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import resources.encoder.clip as clip_module
from resources.encoder.clip import PREFETCH_BATCHES, ClipEncoder
from resources.encoder.decode import Preprocess, prepare_image
from resources.encoder.devices import cpu_supports_bf16, resolve_device, resolve_precision
from resources.errors import ImageSearchError
from tests.images import (
    animated_gif,
    cmyk_jpeg,
    exif_rotated_jpeg,
    gradient,
    greyscale_jpeg,
    jpeg_bytes,
    palette_png_transparent,
    png16,
    progressive_jpeg,
    rgba_png,
    webp_bytes,
)

DIM = 512

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def encoder(tiny_models):
    clip_dir, text_dir = tiny_models
    return ClipEncoder(str(clip_dir), str(text_dir), device="cpu", precision="fp32", decode_workers=2)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _encode_files(encoder, paths, **kwargs):
    vectors, failures = {}, {}
    for batch in encoder.encode_image_files(paths, **kwargs):
        vectors.update({i: v for i, v in zip(batch.indices, batch.vectors)})
        failures.update(dict(batch.failures))
    return vectors, failures


def test_awkward_files_are_encoded_or_reported_and_never_stop_the_batch(encoder, tmp_path):
    files = {
        "plain.jpg": jpeg_bytes(640, 427),
        "truncated.jpg": jpeg_bytes(640, 427)[:600],
        "html.jpg": b"<html><body>not found</body></html>",
        "cmyk.jpg": cmyk_jpeg(),
        "grey.jpg": greyscale_jpeg(),
        "png16.png": png16(),
        "palette.png": palette_png_transparent(),
        "rgba.png": rgba_png(),
        "rotated.jpg": exif_rotated_jpeg(),
        "animated.gif": animated_gif(),
        "image.webp": webp_bytes(),
        "progressive.jpg": progressive_jpeg(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    paths = [tmp_path / name for name in files] + [tmp_path / "missing.jpg"]

    vectors, failures = _encode_files(encoder, paths, batch_size=4)

    names = [p.name for p in paths]
    assert sorted(names[i] for i in failures) == ["animated.gif", "html.jpg", "missing.jpg", "truncated.jpg"]
    assert "not an image" in failures[names.index("html.jpg")]
    # Only the formats the project promises are decoded (#23): a GIF never reaches Pillow's GIF plugin.
    assert (
        "GIF" in failures[names.index("animated.gif")] and "JPEG, PNG or WebP" in failures[names.index("animated.gif")]
    )
    assert set(vectors) | set(failures) == set(range(len(paths))) and not set(vectors) & set(failures)
    matrix = np.stack(list(vectors.values()))
    assert matrix.shape == (len(paths) - 4, DIM) and matrix.dtype == np.float32
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)


def test_fast_path_agrees_with_sentence_transformers_encode(encoder, tmp_path):
    paths = []
    for seed in range(4):
        path = tmp_path / f"{seed}.jpg"
        path.write_bytes(jpeg_bytes(640, 427, seed=seed))
        paths.append(path)
    vectors, failures = _encode_files(encoder, paths)
    reference = encoder.image_model.encode([Image.open(p) for p in paths], normalize_embeddings=True)
    assert not failures
    assert min(_cos(vectors[i], reference[i]) for i in range(len(paths))) >= 0.99


def test_exif_orientation_is_applied(encoder, tmp_path):
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(exif_rotated_jpeg())
    with Image.open(rotated) as image:
        upright_image = ImageOps.exif_transpose(image)
        raw_image = image.convert("RGB")
    assert upright_image.size == (20, 60)
    upright, raw = tmp_path / "upright.png", tmp_path / "raw.png"
    upright_image.save(upright)
    raw_image.save(raw)
    vectors, _ = _encode_files(encoder, [rotated, upright, raw])
    assert _cos(vectors[0], vectors[1]) > 0.9999
    assert _cos(vectors[0], vectors[1]) > _cos(vectors[0], vectors[2])


def test_sixteen_bit_png_is_scaled_down_not_clipped(encoder, tmp_path):
    wide, narrow = tmp_path / "wide.png", tmp_path / "narrow.png"
    wide.write_bytes(png16())
    with Image.open(wide) as image:
        values = np.asarray(image, dtype=np.float32)
    Image.fromarray(np.clip(values / 257.0, 0, 255).astype(np.uint8), "L").save(narrow)
    vectors, _ = _encode_files(encoder, [wide, narrow])
    assert _cos(vectors[0], vectors[1]) > 0.9999
    prepared = prepare_image(Image.open(wide), Preprocess())
    assert int(prepared.max()) - int(prepared.min()) > 150 and (prepared == 255).mean() < 0.05


def test_transparency_becomes_white_and_animation_its_first_frame(tmp_path):
    palette, gif = tmp_path / "palette.png", tmp_path / "animated.gif"
    palette.write_bytes(palette_png_transparent())
    gif.write_bytes(animated_gif())
    transparent_half = prepare_image(Image.open(palette), Preprocess())[:, :100]
    assert (transparent_half == 255).all()
    first_frame = prepare_image(Image.open(gif), Preprocess()).reshape(-1, 3).mean(axis=0)
    assert first_frame[0] > 250 and first_frame[1] < 5 and first_frame[2] < 5


def test_query_image_and_file_paths_give_the_same_vector(encoder, tmp_path):
    path = tmp_path / "photo.png"
    gradient(300, 200, seed=3).save(path)
    vectors, _ = _encode_files(encoder, [path])
    query = encoder.encode_image(Image.open(path))
    assert query.shape == (DIM,) and _cos(query, vectors[0]) > 0.9999


def test_texts_in_any_language_land_in_the_image_space(encoder):
    queries = ["一只狗在海滩上", "un perro en la playa", "a dog on the beach"]
    vectors = encoder.encode_texts(queries)
    assert vectors.shape == (3, DIM) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(encoder.encode_texts(queries[:1])[0], vectors[0], atol=1e-5)
    assert encoder.encode_texts([]).shape == (0, DIM)


def test_models_load_once_per_process(tiny_models):
    first = ClipEncoder(str(tiny_models[0]), str(tiny_models[1]), device="cpu")
    second = ClipEncoder(str(tiny_models[0]), str(tiny_models[1]), device="cpu")
    assert first.image_model is second.image_model
    assert first.text_model is second.text_model


def test_unreachable_model_names_fail_with_one_line_naming_the_variable(tiny_models, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bad_image = ClipEncoder("no-such-org/no-such-clip", str(tiny_models[1]), device="cpu")
    with pytest.raises(ImageSearchError) as image_error:
        bad_image.dim
    bad_text = ClipEncoder(str(tiny_models[0]), "no-such-org/no-such-text", device="cpu")
    with pytest.raises(ImageSearchError) as text_error:
        bad_text.encode_texts(["hola"])
    for error, variable, name in (
        (image_error, "IMAGE_SEARCH_IMAGE_MODEL", "no-such-clip"),
        (text_error, "IMAGE_SEARCH_TEXT_MODEL", "no-such-text"),
    ):
        message = str(error.value)
        assert variable in message and name in message and "local path" in message and "\n" not in message


def test_device_and_precision_resolution():
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_supports_bf16() else "fp32")
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ImageSearchError, match="IMAGE_SEARCH_PRECISION"):
        resolve_precision("fp16", "cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
        with pytest.raises(ImageSearchError, match="IMAGE_SEARCH_DEVICE"):
            resolve_device("cuda")


def test_bf16_vectors_agree_with_fp32(tiny_models, encoder, tmp_path):
    paths = []
    for seed in range(3):
        paths.append(tmp_path / f"{seed}.jpg")
        paths[-1].write_bytes(jpeg_bytes(640, 427, seed=seed))
    bf16 = ClipEncoder(str(tiny_models[0]), str(tiny_models[1]), device="cpu", precision="bf16")
    low, _ = _encode_files(bf16, paths)
    full, _ = _encode_files(encoder, paths)
    assert min(_cos(low[i], full[i]) for i in range(3)) >= 0.99


def test_decoding_runs_a_bounded_number_of_batches_ahead(encoder, tmp_path, monkeypatch):
    """Counts the decodes handed to the workers by wrapping the real thread pool (it still runs
    them all). The generator submits work only while it runs, so the count read while it is
    suspended at its first batch is final for that moment, whatever the workers have done."""
    source = tmp_path / "photo.jpg"
    source.write_bytes(jpeg_bytes(320, 240))
    paths = [source] * 40
    submitted, lock = [0], threading.Lock()

    class CountingPool(clip_module.ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            with lock:
                submitted[0] += fn is clip_module.load_prepared
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(clip_module, "ThreadPoolExecutor", CountingPool)
    batches = encoder.encode_image_files(paths, batch_size=4)
    first = next(batches)
    assert len(first.indices) == 4
    assert submitted[0] <= (PREFETCH_BATCHES + 1) * 4
    assert sum(len(batch.indices) for batch in batches) == 36 and submitted[0] == 40
