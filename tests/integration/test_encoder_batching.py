"""The real encoder batches concurrent text and image queries (resources/encoder/clip.py), held at a gate the test opens."""

from __future__ import annotations

import threading

import numpy as np

from resources.encoder.clip import ClipEncoder
from tests.pause import wait_until


def test_the_encoder_batches_concurrent_text_and_image_queries(tiny_models, one_torch_thread):
    """The real encoder: concurrent queries give the vectors they give alone, in fewer model calls."""
    from PIL import Image

    encoder = ClipEncoder(
        str(tiny_models[0]), str(tiny_models[1]), device="cpu", precision="fp32", text_runtime="torch"
    )
    alone = ClipEncoder(
        str(tiny_models[0]),
        str(tiny_models[1]),
        device="cpu",
        precision="fp32",
        text_runtime="torch",
        query_batching=False,
    )
    assert alone.text_batcher is None
    texts = [f"a photo of a dog number {i}" for i in range(6)]
    expected = alone.encode_texts(texts)
    images = [Image.new("RGB", (64 + 8 * i, 48), (40 * i, 90, 200)) for i in range(4)]
    expected_images = [alone.encode_image(image) for image in images]

    gate = threading.Event()
    real_text, real_pixels = encoder.text_batcher._run, encoder.image_batcher._run

    def held_text(items):
        gate.wait(60)
        return real_text(items)

    def held_pixels(items):
        gate.wait(60)
        return real_pixels(items)

    encoder.text_batcher._run, encoder.image_batcher._run = held_text, held_pixels
    got: dict = {}
    workers = [
        threading.Thread(target=lambda i=i: got.__setitem__(("t", i), encoder.encode_texts([texts[i]])))
        for i in range(6)
    ]
    workers += [
        threading.Thread(target=lambda i=i: got.__setitem__(("i", i), encoder.encode_image(images[i])))
        for i in range(4)
    ]
    for worker in workers:
        worker.start()
    wait_until(lambda: encoder.text_batcher.waiting == 5 and encoder.image_batcher.waiting == 3, "queries queued")
    gate.set()
    for worker in workers:
        worker.join(60)
    assert encoder.text_batcher.stats()["model_calls"] == 2
    assert encoder.image_batcher.stats()["model_calls"] == 2
    for i in range(6):
        assert np.allclose(got[("t", i)][0], expected[i], atol=1e-5)
    for i in range(4):
        assert np.allclose(got[("i", i)], expected_images[i], atol=1e-5)
