"""A model change as a release: check a pair, encode its vectors, build it in the shadow, promote, roll back.

Each registered pair gets its vectors in its own folder (:mod:`resources.vectors.vector_store` keys
folders by image model) and its own shadow index (:func:`resources.index.model_backend`),
while the published index keeps serving. Promotion publishes the candidate's shadow build
under the search alias (local: ``index/CURRENT``) with :meth:`SearchBackend.adopt`, one
atomic step; the build that served is first kept under its own model's shadow index, so a
rollback publishes it again at once and encodes nothing.
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from typing import Any, Callable

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.images.image_store import ImageStore
from resources.index import model_backend, open_backend
from resources.index.base import BuildInfo, BuildProgress, BuildReport, SearchBackend
from resources.models.registry import ModelPair, Registry, pair_settings
from resources.release.catalog import index_inputs, read_catalog
from resources.storage.files import sweep
from resources.storage.locks import store_lock
from resources.vectors.vector_store import VectorStore

Log = Callable[[str], None]


def open_encoder(settings: Settings, pair: ModelPair):
    """The encoder of ``pair`` with the settings' device, precision and batching (models load on first use)."""
    from resources.encoder.clip import ClipEncoder

    return ClipEncoder.from_settings(pair_settings(settings, pair).replace(query_batching=False))


def check_pair(settings: Settings, image_model: str, text_model: str) -> int:
    """The vector size the two models share; a one-line error when one cannot load or the sizes differ.

    Encoding one text loads both models; the encoder refuses a text model whose vectors are
    not the image model's size (they cannot share a space).
    """
    encoder = open_encoder(settings, ModelPair("candidate", image_model, text_model))
    try:
        encoder.encode_texts(["a photo"])
        return encoder.dim
    except ImageSearchError as exc:
        for variable, option in (
            ("IMAGE_SEARCH_IMAGE_MODEL", "--image-model"),
            ("IMAGE_SEARCH_TEXT_MODEL", "--text-model"),
        ):
            exc = ImageSearchError(str(exc).replace(variable, option))
        raise exc from None


def encode_pair(settings: Settings, pair: ModelPair, log: Log = print) -> dict[str, Any]:
    """Encode every stored image lacking a current vector of ``pair``'s image model; returns the figures.

    Holds the ``embeddings`` lock of every bucket (the ones ``image_embeddings`` takes, in the
    same order), since two pairs may share an image model and so a vector folder.
    """
    catalog = read_catalog(settings, ["photo_id", "bucket"])
    buckets = sorted(set(catalog["bucket"]))
    store = VectorStore(settings.embeddings_dir, pair.image_model)
    images = ImageStore(settings.images_dir)
    encoder = open_encoder(settings, pair)
    with ExitStack() as held:
        for bucket in buckets:
            lock = settings.home / "locks" / "embeddings" / f"{bucket}.lock"
            held.enter_context(store_lock(lock, f"embeddings bucket {bucket}", settings.lock_timeout, log))
            sweep(store.bucket_dir(bucket), exclusive=True)
        ids = catalog.groupby("bucket")["photo_id"].agg(list)
        plans = {bucket: store.plan_encoding(bucket, images, ids[bucket]) for bucket in buckets}
        todo = [(bucket, *item) for bucket in buckets for item in plans[bucket].todo]
        dim = encoder.dim
        writer = store.writer(dim, encoder.runtime_label)
        started, encoded, failed = time.monotonic(), 0, 0
        for batch in encoder.encode_image_files([item[2] for item in todo]):
            for position, vector in zip(batch.indices, batch.vectors):
                bucket, photo_id, _, size, mtime = todo[position]
                writer.add(bucket, photo_id, vector, size, mtime)
            encoded, failed = encoded + len(batch.indices), failed + len(batch.failures)
            log(f"{pair.name}: {encoded + failed}/{len(todo)} images encoded with {pair.image_model}")
        writer.flush()
        vectors = sum(store.compact(bucket, plans[bucket].stored, dim) for bucket in buckets)
    seconds = time.monotonic() - started
    return {
        "encoded": encoded,
        "failed": failed,
        "vectors": vectors,
        "dim": dim,
        "images_per_s": round(encoded / seconds, 1) if encoded and seconds > 0 else 0.0,
        "path": str(store.root),
    }


def build_shadow(settings: Settings, pair: ModelPair, progress: BuildProgress | None = None) -> BuildReport:
    """Build ``pair``'s index from the catalog and its vectors into its shadow index; the published one is untouched."""
    documents, vectors = index_inputs(pair_settings(settings, pair))
    if len(documents) == 0:
        raise ImageSearchError(
            f"no catalog photo has a vector of model {pair.name} ({pair.image_model}): encode it first"
        )
    info = BuildInfo.for_vectors(pair.image_model, pair.text_model, vectors)
    return model_backend(settings, pair.name).build(documents, vectors, info, progress)


def publishes(backend: SearchBackend, pair: ModelPair) -> BuildInfo | None:
    """``backend``'s published build info when it is a build of ``pair``'s models, else ``None``."""
    info = backend.info()
    if info is None or (info.image_model, info.text_model) != (pair.image_model, pair.text_model):
        return None
    return info


def evaluation_backend(settings: Settings, pair: ModelPair) -> SearchBackend | None:
    """Where ``pair`` can be searched: its shadow build, else the published index if that is a build of it."""
    for backend in (model_backend(settings, pair.name), open_backend(settings)):
        if publishes(backend, pair) is not None:
            return backend
    return None


def switch(settings: Settings, to: ModelPair) -> tuple[ModelPair, BuildInfo]:
    """Publish ``to``'s shadow build as the search index and record it as serving; returns the pair that served.

    The build that served is first kept under its model's shadow index (when it is a build of
    the serving pair), so it can come back without encoding or building anything. It holds
    the ``search_index`` lock the refresh builds under, so a refresh that read the serving
    pair before the switch cannot publish that pair's build over the promoted one, nor two
    switches record each other's pair as the previous one.
    """
    lock = settings.home / "locks" / "search_index.lock"
    with store_lock(lock, "search_index", settings.lock_timeout, lambda line: print(line, file=sys.stderr)):
        return _switch(settings, to)


def _switch(settings: Settings, to: ModelPair) -> tuple[ModelPair, BuildInfo]:
    """:func:`switch` once the lock is held."""
    registry = Registry(settings)
    serving = registry.serving()
    if to.name == serving.name:
        raise ImageSearchError(f"{to.name!r} answers searches already")
    source = model_backend(settings, to.name)
    if publishes(source, to) is None:
        raise ImageSearchError(
            f"model {to.name!r} has no shadow build: let the refresh build it, or materialize "
            f"model_vectors and model_index for partition {to.name}"
        )
    published = open_backend(settings)
    if publishes(published, serving) is not None:
        model_backend(settings, serving.name).adopt(published)
    info = published.adopt(source)
    registry.set_serving(to.name)
    return serving, info
