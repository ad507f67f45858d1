"""The one CLIP encoder: images (pipeline and image queries) and multilingual texts (queries).

Models load lazily, once per process, on the configured device and precision; every vector
is float32 and L2-normalised, so a dot product is a cosine similarity. Batches of image
files are decoded by workers (on the GPU where it can) while the image runtime
(:mod:`resources.encoder.runtime`) runs the model, and a file that cannot be decoded is
reported, never fatal. Queries that arrive together (an HTTP API under load) are encoded
together in one model call (:class:`~resources.encoder.batching.MicroBatcher`). No
Dagster import: the query side uses it.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from resources.config import Settings
from resources.encoder import models
from resources.encoder.batching import MicroBatcher
from resources.encoder.decode import Preprocess, collect_decoded, load_prepared, prepare_image, read_for_gpu
from resources.encoder.devices import resolve_device, resolve_precision, resolve_text_runtime
from resources.encoder.gpu_decode import GpuJpegDecoder
from resources.encoder.models import content_hash, load_model
from resources.encoder.runtime import TorchRuntime
from resources.errors import ImageSearchError

log = logging.getLogger(__name__)

PREFETCH_BATCHES = 3


@dataclass
class EncodedBatch:
    """One batch out of :meth:`ClipEncoder.encode_image_files`.

    ``indices`` are positions in the input sequence; ``vectors[i]`` belongs to
    ``paths[indices[i]]``. ``failures`` lists ``(position, reason)`` for files of this
    batch that could not be decoded.
    """

    indices: list[int]
    vectors: np.ndarray
    failures: list[tuple[int, str]] = field(default_factory=list)


class ClipEncoder:
    """Image and text encoder into one CLIP space; models load on first use, once per process."""

    def __init__(
        self,
        image_model: str,
        text_model: str,
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 0,
        decode_workers: int = 0,
        gpu_decode: bool = True,
        text_runtime: str = "auto",
        onnx_dir: Path | None = None,
        runtime: str = "torch",
        runtimes_dir: Path | None = None,
        query_batching: bool = True,
        query_batch_max: int = 32,
        query_batch_window_s: float = 0.002,
    ):
        self.image_model_id = image_model
        self.text_model_id = text_model
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self._text_runtime_setting = text_runtime
        self.text_runtime = resolve_text_runtime(text_runtime, self.device, self.precision)
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        self.onnx_dir = onnx_dir or cache / "image-search" / "onnx"
        #: IMAGE_SEARCH_RUNTIME; :meth:`select_image_runtime` applies it, PyTorch runs until then.
        self.runtime_setting = runtime
        self.runtimes_dir = runtimes_dir or cache / "image-search" / "image-runtimes"
        self._image_runtime = None
        self._model_hash: str | None = None
        self.batch_size = batch_size or (512 if self.device == "cuda" else 32)
        self.decode_workers = decode_workers or os.cpu_count() or 1
        self.gpu_decode = gpu_decode
        #: Concurrent query texts and query images each share one model call; ``None`` when off.
        self.text_batcher = self.image_batcher = None
        if query_batching:
            self.text_batcher = MicroBatcher(self._encode_texts, query_batch_max, query_batch_window_s)
            self.image_batcher = MicroBatcher(self._encode_pixels, query_batch_max, query_batch_window_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> "ClipEncoder":
        """The encoder the settings describe (models, device, precision, batch size, workers)."""
        return cls(
            settings.image_model,
            settings.text_model,
            device=settings.device,
            precision=settings.precision,
            batch_size=settings.embed_batch_size,
            decode_workers=settings.decode_workers,
            gpu_decode=settings.gpu_decode,
            text_runtime=settings.text_runtime,
            onnx_dir=settings.onnx_dir,
            runtime=settings.runtime,
            runtimes_dir=settings.runtimes_dir,
            query_batching=settings.query_batching,
            query_batch_max=settings.query_batch_max,
            query_batch_window_s=settings.query_batch_window_ms / 1000,
        )

    @property
    def image_model(self):
        """The sentence-transformers image model (loaded on first access)."""
        return load_model(self.image_model_id, "IMAGE_SEARCH_IMAGE_MODEL", self.device)

    @property
    def text_model(self):
        """The sentence-transformers multilingual text model (loaded on first access)."""
        return load_model(self.text_model_id, "IMAGE_SEARCH_TEXT_MODEL", self.device)

    def load_onnx_text_model(self):
        """Export or load the text model on ONNX Runtime (:mod:`resources.encoder.onnx_text`); ``None`` where PyTorch runs it.

        The first call exports the model if needed and drops the PyTorch weights. With
        ``IMAGE_SEARCH_TEXT_RUNTIME=auto`` a model that cannot be exported or does not
        verify switches ``text_runtime`` to ``torch`` with one warning; with ``onnx`` that
        is an error.
        """
        if self.text_runtime != "onnx":
            return None
        from resources.encoder.onnx_text import OnnxTextError, OnnxTextModel

        key = (self.text_model_id, "onnx")
        with models.MODELS_LOCK:
            loaded = models.MODELS.get(key)
        if loaded is None:
            model = self.text_model
            with models.MODELS_LOCK:
                if key not in models.MODELS:
                    try:
                        models.MODELS[key] = OnnxTextModel.load(model, self.onnx_dir)
                        # The session has what it needs; the PyTorch weights (as large again) are
                        # dropped and load again only if something asks for ``text_model``.
                        models.MODELS.pop((self.text_model_id, self.device), None)
                    except OnnxTextError as exc:
                        models.MODELS[key] = exc
                loaded = models.MODELS[key]
            # The PyTorch model holds reference cycles: collect now, or its weights stay
            # resident until some later collection.
            del model
            gc.collect()
        if isinstance(loaded, OnnxTextError):
            if self._text_runtime_setting == "onnx":
                raise ImageSearchError(
                    f"IMAGE_SEARCH_TEXT_RUNTIME=onnx but the text model {self.text_model_id!r} cannot run on "
                    f"ONNX Runtime: {loaded}; set the runtime to torch"
                )
            log.warning("text model %s runs on PyTorch: ONNX Runtime is unusable (%s)", self.text_model_id, loaded)
            self.text_runtime = "torch"
            return None
        return loaded

    @property
    def clip(self):
        """The transformers CLIP model inside the image model (its image tower is what the runtimes run)."""
        module = self.image_model[0]
        clip = getattr(module, "model", None) or getattr(module, "auto_model", None)
        if clip is None or not hasattr(clip, "get_image_features"):
            raise ImageSearchError(
                f"IMAGE_SEARCH_IMAGE_MODEL={self.image_model_id!r} is not a CLIP image model: "
                "use a sentence-transformers CLIP model such as clip-ViT-B-32"
            )
        return clip

    @property
    def preprocess(self) -> Preprocess:
        """Resize, crop and normalisation constants read from the model's own image processor."""
        processor = getattr(self.image_model[0], "processor", None)
        image_processor = getattr(processor, "image_processor", None)
        if image_processor is None:
            return Preprocess()
        size, crop = image_processor.size, image_processor.crop_size
        shortest = (size.get("shortest_edge") if hasattr(size, "get") else getattr(size, "shortest_edge", None)) or 224
        crop_h = (crop.get("height") if hasattr(crop, "get") else getattr(crop, "height", None)) or shortest
        return Preprocess(
            size=int(shortest),
            crop=int(crop_h),
            mean=tuple(float(v) for v in image_processor.image_mean),
            std=tuple(float(v) for v in image_processor.image_std),
        )

    @property
    def dim(self) -> int:
        """Dimension of the image vectors (the CLIP projection)."""
        return int(self.clip.config.projection_dim)

    @property
    def gpu_jpeg_decode(self) -> bool:
        """Whether :meth:`encode_image_files` decodes JPEGs on the GPU (CUDA with torchvision)."""
        return self.gpu_decode and GpuJpegDecoder.create(self.device, Preprocess()) is not None

    def _autocast(self):
        """Autocast for the text model at the encoder's precision (a no-op in fp32)."""
        return TorchRuntime(None, Preprocess(), self.device, self.precision)._autocast()

    @property
    def image_runtime(self):
        """What turns prepared pixels into vectors: PyTorch until :meth:`select_image_runtime` picks another."""
        if self._image_runtime is None:
            self._image_runtime = TorchRuntime(self.clip, self.preprocess, self.device, self.precision)
        return self._image_runtime

    @image_runtime.setter
    def image_runtime(self, runtime) -> None:
        self._image_runtime = runtime

    @property
    def runtime_label(self) -> tuple[str, str]:
        """(runtime, precision) of the image vectors this encoder makes now, as the vector store records them."""
        return self.image_runtime.name, self.image_runtime.precision

    @property
    def model_hash(self) -> str:
        """Content hash of the image tower's weights (computed once): the key of its built runtimes."""
        if self._model_hash is None:
            import transformers

            self._model_hash = content_hash(self.clip, f"transformers {transformers.__version__}|{self.preprocess}")
        return self._model_hash

    def select_image_runtime(self, sample_paths: Sequence[str | Path], held_out: int = 200, calibration: int = 300):
        """Apply IMAGE_SEARCH_RUNTIME: build or load the faster runtime and gate it on ``sample_paths``.

        Returns the gate's :class:`~resources.encoder.gate.GateReport` (``None`` when the
        setting asks for PyTorch); see :mod:`resources.encoder.selection`.
        """
        from resources.encoder.selection import select

        return select(self, [str(p) for p in sample_paths], held_out, calibration)

    def agreeing_runtimes(self) -> set[tuple[str, str]]:
        """The (runtime, precision) pairs besides PyTorch's whose vectors the gate found interchangeable with fp32's."""
        from resources.encoder.selection import agreeing_runtimes

        return agreeing_runtimes(self.runtimes_dir, self.model_hash)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Encode queries in any language with the multilingual text model: ``len(texts) x dim`` unit rows.

        Concurrent calls share one model call when query batching is on.
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.text_batcher is not None:
            return self.text_batcher(texts)
        return self._encode_texts(texts, batch_size)

    def _encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        onnx_model = self.load_onnx_text_model()
        if onnx_model is not None:
            vectors = onnx_model.encode(list(texts), batch_size=batch_size)
        else:
            with self._autocast():
                vectors = self.text_model.encode(
                    list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True
                )
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape[1] != self.dim:
            raise ImageSearchError(
                f"IMAGE_SEARCH_TEXT_MODEL={self.text_model_id!r} gives {vectors.shape[1]}-d vectors but the image "
                f"model gives {self.dim}-d: pick a text model trained for {self.image_model_id}"
            )
        return vectors

    def encode_image(self, image: Image.Image) -> np.ndarray:
        """Encode one query image (an upload, a result's photo): a unit vector of length ``dim``.

        The caller's thread prepares the pixels; concurrent calls share one model call when
        query batching is on.
        """
        pixels = prepare_image(image, self.preprocess)
        if self.image_batcher is not None:
            return self.image_batcher([pixels])[0]
        return self._encode_pixels([pixels])[0]

    def _encode_pixels(self, prepared: list[np.ndarray]) -> np.ndarray:
        return self.image_runtime(np.stack(prepared))

    def _executor(self) -> Executor:
        if self.device == "cuda" and self.decode_workers > 1:
            # Worker processes for the GPU case; forkserver, since forking a process that
            # holds a CUDA context is unsafe.
            return ProcessPoolExecutor(self.decode_workers, mp_context=multiprocessing.get_context("forkserver"))
        return ThreadPoolExecutor(self.decode_workers, thread_name_prefix="decode")

    def encode_image_files(self, paths: Sequence[str | Path], batch_size: int | None = None) -> Iterator[EncodedBatch]:
        """Encode image files in order, one :class:`EncodedBatch` per ``batch_size`` inputs.

        Workers decode and preprocess up to a few batches ahead of the model (bounded
        memory). On CUDA with torchvision, one thread decodes JPEGs on the GPU on its own
        stream, overlapping the model's work on the previous batch. Undecodable files
        appear in ``failures`` and the other files of their batch are still encoded.
        """
        batch_size = batch_size or self.batch_size
        paths = [str(p) for p in paths]
        if not paths:
            return
        pre = self.preprocess
        gpu_decoder = GpuJpegDecoder.create(self.device, pre) if self.gpu_decode else None
        starts = iter(range(0, len(paths), batch_size))
        with (
            self._executor() as pool,
            ThreadPoolExecutor(8, thread_name_prefix="read") as readers,
            ThreadPoolExecutor(1, thread_name_prefix="gpu-decode") as gpu,
        ):

            def submit(start: int):
                positions = list(range(start, min(start + batch_size, len(paths))))
                if gpu_decoder is None:
                    return positions, [pool.submit(load_prepared, paths[i], pre) for i in positions]
                reads = [readers.submit(read_for_gpu, paths[i]) for i in positions]
                return positions, gpu.submit(gpu_decoder.prepare_batch, positions, reads, paths, pool)

            in_flight: deque = deque(submit(s) for s in islice(starts, PREFETCH_BATCHES))
            while in_flight:
                positions, pending = in_flight.popleft()
                if (start := next(starts, None)) is not None:
                    in_flight.append(submit(start))
                ok, pixels, failures = collect_decoded(positions, pending) if gpu_decoder is None else pending.result()
                vectors = self.image_runtime(pixels) if ok else np.zeros((0, self.dim), np.float32)
                yield EncodedBatch(ok, vectors, failures)
