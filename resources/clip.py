"""The one CLIP encoder: images (pipeline and image queries) and multilingual texts (queries).

Models load lazily, once per process, on the configured device and precision; every vector
is float32 and L2-normalised, so a dot product is a cosine similarity. Batches of image
files are decoded by workers (on the GPU where it can) while the model runs, and a file
that cannot be decoded is reported, never fatal. Queries that arrive together (an HTTP API
under load) are encoded together in one model call (:class:`MicroBatcher`). No Dagster
import: the query side uses it.
"""

from __future__ import annotations

import gc
import io
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.pictures import is_upright, upright_rgb

log = logging.getLogger(__name__)

_PREFETCH_BATCHES = 3
_MODELS: dict[tuple[str, str], object] = {}
_MODELS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Preprocess:
    """How CLIP expects its input: shortest edge resized to ``size``, centre crop ``crop``, then mean/std."""

    size: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


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


class _Pending:
    """One caller's items waiting in a :class:`MicroBatcher`, and then its rows or its error."""

    __slots__ = ("items", "rows", "error", "done")

    def __init__(self, items: list):
        self.items = items
        self.rows: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False


class MicroBatcher:
    """Runs concurrent calls of ``run(items) -> rows`` as one call over all their items.

    No thread of its own: the first caller to find the model idle runs a batch (the queue's
    oldest requests, up to ``max_batch`` items) while later callers queue; when it is done
    the next waiting caller runs the next batch. A lone caller runs at once. The window
    opens only under load, when a second request is already waiting or the previous batch
    held more than one: then the batch waits up to ``window_s`` for more, or until it holds
    ``max_batch`` items. Calls of ``max_batch`` items or more run alone, directly. An error
    from ``run`` reaches every caller of that batch.
    """

    def __init__(self, run: Callable[[list], np.ndarray], max_batch: int = 32, window_s: float = 0.002):
        self._run = run
        self.max_batch = max_batch
        self.window_s = window_s
        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._busy = False
        self._last_batch = 0
        #: Model calls made and the items they held, for the API's info and the benchmark.
        self.calls = 0
        self.items = 0

    @property
    def waiting(self) -> int:
        """Requests queued and not yet taken into a batch."""
        with self._cond:
            return len(self._queue)

    def stats(self) -> dict[str, Any]:
        """Model calls, items and the mean batch so far."""
        with self._cond:
            mean = self.items / self.calls if self.calls else 0.0
            return {"model_calls": self.calls, "items": self.items, "mean_batch": round(mean, 2)}

    def __call__(self, items: Sequence) -> np.ndarray:
        """The rows of ``items``, computed in one model call with whatever else is waiting."""
        request = _Pending(list(items))
        if len(request.items) >= self.max_batch:
            rows = self._run(request.items)
            with self._cond:
                self.calls += 1
                self.items += len(request.items)
            return rows
        with self._cond:
            self._queue.append(request)
            self._cond.notify_all()
            while not request.done:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                batch = self._collect()
                self._cond.release()
                try:
                    self._run_batch(batch)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        if request.error is not None:
            raise request.error
        return request.rows

    def _queued_items(self) -> int:
        return sum(len(p.items) for p in self._queue)

    def _collect(self) -> list[_Pending]:
        """The next batch, taken from the queue (the lock is held; waiting releases it)."""
        if self.window_s > 0 and (len(self._queue) > 1 or self._last_batch > 1):
            deadline = time.monotonic() + self.window_s
            while self._queued_items() < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
        batch, size = [], 0
        while self._queue and size + len(self._queue[0].items) <= self.max_batch:
            size += len(self._queue[0].items)
            batch.append(self._queue.popleft())
        self._last_batch = len(batch)
        self.calls += 1
        self.items += size
        return batch

    def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            rows = self._run([item for pending in batch for item in pending.items])
            start = 0
            for pending in batch:
                pending.rows = rows[start : start + len(pending.items)]
                start += len(pending.items)
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets the model's error
            for pending in batch:
                pending.error = exc
        finally:
            for pending in batch:
                pending.done = True


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ImageSearchError("IMAGE_SEARCH_DEVICE=cuda but torch sees no CUDA GPU: set it to cpu or auto")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: fp16 on CUDA, bf16 on CPUs with native bf16, fp32 otherwise."""
    if precision != "auto":
        if precision == "fp16" and device == "cpu":
            raise ImageSearchError("IMAGE_SEARCH_PRECISION=fp16 is GPU-only: use bf16, fp32 or auto on a CPU")
        return precision
    if device == "cuda":
        return "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def resolve_text_runtime(runtime: str, device: str, precision: str) -> str:
    """``auto``: ONNX Runtime for float32 on a CPU (the faster of the two there), PyTorch otherwise."""
    if runtime == "auto":
        return "onnx" if device == "cpu" and precision == "fp32" else "torch"
    if runtime == "onnx" and (device != "cpu" or precision != "fp32"):
        raise ImageSearchError(
            f"IMAGE_SEARCH_TEXT_RUNTIME=onnx runs float32 on the CPU, not {precision} on {device}: "
            "set IMAGE_SEARCH_DEVICE=cpu and IMAGE_SEARCH_PRECISION=fp32, or the runtime to auto"
        )
    return runtime


def _load_model(name: str, variable: str, device: str):
    """Load a sentence-transformers model once per process: a local folder, the HF cache, or the hub."""
    key = (name, device)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        from sentence_transformers import SentenceTransformer

        hint = (
            f"cannot load {variable}={name!r}: it is neither a local model folder nor reachable on the "
            f"Hugging Face hub; download it once where there is internet and set {variable} to its local path"
        )
        local = Path(name).expanduser()
        try:
            if local.exists():
                model = SentenceTransformer(str(local), device=device)
            else:
                try:
                    model = SentenceTransformer(name, device=device, local_files_only=True)
                except OSError:
                    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
                        raise ImageSearchError(hint + " (HF_HUB_OFFLINE is set)") from None
                    model = SentenceTransformer(name, device=device)
        except ImageSearchError:
            raise
        except (OSError, ValueError) as exc:
            raise ImageSearchError(f"{hint} ({type(exc).__name__})") from None
        model.eval()
        _MODELS[key] = model
        return model


def prepare_image(image: Image.Image, pre: Preprocess) -> np.ndarray:
    """One PIL image to the model's input as ``crop x crop x 3`` uint8 (orientation applied, RGB)."""
    image = upright_rgb(image)
    width, height = image.size
    scale = pre.size / min(width, height)
    resized = (max(pre.crop, round(width * scale)), max(pre.crop, round(height * scale)))
    image = image.resize(resized, Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (resized[0] - pre.crop) // 2, (resized[1] - pre.crop) // 2
    return np.asarray(image.crop((left, top, left + pre.crop, top + pre.crop)), dtype=np.uint8)


def load_prepared(path: str, pre: Preprocess) -> np.ndarray:
    """Decode and preprocess one image file; JPEGs are decoded at the smallest DCT scale that still fits."""
    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", (pre.size, pre.size))
        image.load()
        return prepare_image(image, pre)


def read_for_gpu(path: str) -> bytes | None:
    """The bytes of a plain upright RGB or greyscale JPEG, which the GPU decoder handles; ``None`` for any other file.

    Only the header is parsed here. Everything else (other formats, CMYK, EXIF rotation,
    which nvJPEG does not apply, unreadable files) goes to the CPU path, which also
    reports the failures.
    """
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            upright = is_upright(image)
            if image.format == "JPEG" and image.mode in ("RGB", "L") and upright:
                return data
    except Exception:  # noqa: BLE001 - the CPU path decodes it again and reports why it fails
        pass
    return None


def _failure_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
            query_batching=settings.query_batching,
            query_batch_max=settings.query_batch_max,
            query_batch_window_s=settings.query_batch_window_ms / 1000,
        )

    @property
    def image_model(self):
        """The sentence-transformers image model (loaded on first access)."""
        return _load_model(self.image_model_id, "IMAGE_SEARCH_IMAGE_MODEL", self.device)

    @property
    def text_model(self):
        """The sentence-transformers multilingual text model (loaded on first access)."""
        return _load_model(self.text_model_id, "IMAGE_SEARCH_TEXT_MODEL", self.device)

    def load_onnx_text_model(self):
        """Export or load the text model on ONNX Runtime (:mod:`resources.onnx_text`); ``None`` where PyTorch runs it.

        The first call exports the model if needed and drops the PyTorch weights. With
        ``IMAGE_SEARCH_TEXT_RUNTIME=auto`` a model that cannot be exported or does not
        verify switches ``text_runtime`` to ``torch`` with one warning; with ``onnx`` that
        is an error.
        """
        if self.text_runtime != "onnx":
            return None
        from resources.onnx_text import OnnxTextError, OnnxTextModel

        key = (self.text_model_id, "onnx")
        with _MODELS_LOCK:
            loaded = _MODELS.get(key)
        if loaded is None:
            model = self.text_model
            with _MODELS_LOCK:
                if key not in _MODELS:
                    try:
                        _MODELS[key] = OnnxTextModel.load(model, self.onnx_dir)
                        # The session has what it needs; the PyTorch weights (as large again) are
                        # dropped and load again only if something asks for ``text_model``.
                        _MODELS.pop((self.text_model_id, self.device), None)
                    except OnnxTextError as exc:
                        _MODELS[key] = exc
                loaded = _MODELS[key]
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
    def _clip(self):
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
        return int(self._clip.config.projection_dim)

    @property
    def gpu_jpeg_decode(self) -> bool:
        """Whether :meth:`encode_image_files` decodes JPEGs on the GPU (CUDA with torchvision)."""
        return self.gpu_decode and _GpuJpegDecoder.create(self.device, Preprocess()) is not None

    def _autocast(self):
        import torch

        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device, dtype=dtype)

    def _pixels_to_vectors(self, pixels) -> np.ndarray:
        """Normalise a ``N x H x W x 3`` uint8 tensor or array on the device, run the image tower, L2-normalise."""
        import torch

        clip = self._clip
        pre = self.preprocess
        batch = torch.as_tensor(pixels).to(self.device, non_blocking=True)
        if batch.is_cuda:
            # Made on the decode thread's stream: tell the allocator this stream uses it too.
            batch.record_stream(torch.cuda.current_stream())
        mean = torch.tensor(pre.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(pre.std, device=self.device).view(1, 3, 1, 1)
        batch = (batch.permute(0, 3, 1, 2).float().div_(255.0) - mean).div_(std)
        with torch.inference_mode(), self._autocast():
            out = clip.get_image_features(pixel_values=batch)
        out = getattr(out, "pooler_output", out).float()
        out = torch.nn.functional.normalize(out, dim=-1)
        return out.cpu().numpy().astype(np.float32, copy=False)

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
        return self._pixels_to_vectors(np.stack(prepared))

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
        gpu_decoder = _GpuJpegDecoder.create(self.device, pre) if self.gpu_decode else None
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

            in_flight: deque = deque(submit(s) for s in islice(starts, _PREFETCH_BATCHES))
            while in_flight:
                positions, pending = in_flight.popleft()
                if (start := next(starts, None)) is not None:
                    in_flight.append(submit(start))
                ok, pixels, failures = _collect(positions, pending) if gpu_decoder is None else pending.result()
                vectors = self._pixels_to_vectors(pixels) if ok else np.zeros((0, self.dim), np.float32)
                yield EncodedBatch(ok, vectors, failures)


def _collect(positions: list[int], futures: list[Future]):
    """Wait for one batch of CPU decodes: (positions decoded, their stacked pixels, failures)."""
    arrays, ok, failures = [], [], []
    for position, future in zip(positions, futures):
        try:
            arrays.append(future.result())
            ok.append(position)
        except Exception as exc:  # noqa: BLE001 - any decode error is a per-file failure
            failures.append((position, _failure_reason(exc)))
    return ok, (np.stack(arrays) if arrays else None), failures


class _GpuJpegDecoder:
    """JPEG decoding on the GPU with torchvision's nvJPEG binding, resized and cropped there too."""

    def __init__(self, device: str, pre: Preprocess):
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        self._decode_jpeg, self._mode = decode_jpeg, ImageReadMode.RGB
        self.device, self.pre = device, pre
        self.stream = torch.cuda.Stream()
        self.disabled = False

    @classmethod
    def create(cls, device: str, pre: Preprocess) -> "_GpuJpegDecoder | None":
        """A decoder when ``device`` is CUDA and torchvision is installed, else ``None`` (CPU workers decode)."""
        if device != "cuda":
            return None
        try:
            return cls(device, pre)
        except (ImportError, OSError, RuntimeError) as exc:
            log.info(f"no GPU JPEG decoder ({type(exc).__name__}: {exc}): decoding JPEGs with CPU worker processes")
            return None

    def _prepare(self, image):
        import torch
        import torch.nn.functional as F

        _, height, width = image.shape
        scale = self.pre.size / min(height, width)
        size = (max(self.pre.crop, round(height * scale)), max(self.pre.crop, round(width * scale)))
        image = F.interpolate(image[None].float(), size=size, mode="bicubic", antialias=True, align_corners=False)[0]
        top, left = (size[0] - self.pre.crop) // 2, (size[1] - self.pre.crop) // 2
        crop = image[:, top : top + self.pre.crop, left : left + self.pre.crop]
        return crop.clamp_(0, 255).round_().to(torch.uint8).permute(1, 2, 0)

    def prepare_batch(self, positions: list[int], reads: list[Future], paths: list[str], pool: Executor):
        """Decode one batch on the GPU (other files on CPU workers): (positions decoded, NHWC uint8 tensor, failures).

        Runs on the decode thread and its own CUDA stream, synchronised before returning,
        so the model can use the tensor while the next batch is being decoded.
        """
        import torch

        raw, raw_positions, fallback, failures = [], [], [], []
        for position, future in zip(positions, reads):
            data = None if self.disabled else future.result()
            (fallback if data is None else raw_positions).append(position)
            if data is not None:
                raw.append(data)
        with torch.cuda.stream(self.stream):
            tensors, undecoded = self.decode(raw)
            if raw and len(undecoded) == len(raw):
                log.warning("the GPU JPEG decoder failed on a whole batch: decoding on CPU workers from now on")
                self.disabled = True
            ok = [p for i, p in enumerate(raw_positions) if i not in undecoded]
            fallback += [raw_positions[i] for i in sorted(undecoded)]
            cpu_futures = [pool.submit(load_prepared, paths[p], self.pre) for p in fallback]
            for position, future in zip(fallback, cpu_futures):
                try:
                    tensors.append(torch.from_numpy(future.result()).to(self.device))
                    ok.append(position)
                except Exception as exc:  # noqa: BLE001 - any decode error is a per-file failure
                    failures.append((position, _failure_reason(exc)))
            batch = torch.stack(tensors) if tensors else None
        self.stream.synchronize()
        return ok, batch, failures

    def decode(self, blobs: list[bytes]) -> tuple[list, set[int]]:
        """Decode a batch; returns the prepared ``crop x crop x 3`` uint8 tensors and the indices that failed."""
        import torch

        if not blobs:
            return [], set()
        inputs = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        try:
            images = self._decode_jpeg(inputs, mode=self._mode, device=self.device)
            return [self._prepare(img) for img in images], set()
        except Exception:  # noqa: BLE001 - the batch call fails as a whole: retry file by file
            prepared, failed = [], set()
            for i, data in enumerate(inputs):
                try:
                    image = self._decode_jpeg(data, mode=self._mode, device=self.device)
                    prepared.append(self._prepare(image))
                except Exception:  # noqa: BLE001 - this file goes to the CPU path, which reports why
                    failed.add(i)
            return prepared, failed
