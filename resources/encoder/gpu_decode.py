"""JPEG decoding on the GPU (torchvision's nvJPEG binding), overlapping the model's work on the previous batch."""

from __future__ import annotations

import logging
from concurrent.futures import Executor, Future

from resources.encoder.decode import Preprocess, failure_reason, load_prepared

log = logging.getLogger(__name__)


class GpuJpegDecoder:
    """JPEG decoding on the GPU with torchvision's nvJPEG binding, resized and cropped there too."""

    def __init__(self, device: str, pre: Preprocess):
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        self._decode_jpeg, self._mode = decode_jpeg, ImageReadMode.RGB
        self.device, self.pre = device, pre
        self.stream = torch.cuda.Stream()
        self.disabled = False

    @classmethod
    def create(cls, device: str, pre: Preprocess) -> "GpuJpegDecoder | None":
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
                    failures.append((position, failure_reason(exc)))
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
