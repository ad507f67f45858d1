"""Image files to the model's input on the CPU: open, decode (JPEGs at a reduced DCT scale), resize, crop.

Every file the encoder reads is opened by :func:`resources.images.pictures.open_image`, the one safe
opener (JPEG, PNG or WebP only, the pixel cap read from the header). A file that cannot be decoded is a per-file failure with a short reason, never
fatal to its batch.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from resources.images.pictures import is_upright, open_image, upright_rgb


@dataclass(frozen=True)
class Preprocess:
    """How CLIP expects its input: shortest edge resized to ``size``, centre crop ``crop``, then mean/std."""

    size: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


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
    with open_image(path, draft_to=pre.size) as image:
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
        with open_image(data) as image:
            upright = is_upright(image)
            if image.format == "JPEG" and image.mode in ("RGB", "L") and upright:
                return data
    except Exception:  # noqa: BLE001 - the CPU path decodes it again and reports why it fails
        pass
    return None


def failure_reason(exc: BaseException) -> str:
    """A one-line reason for a file that failed: the exception's type and the start of its message."""
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def collect_decoded(positions: list[int], futures: list[Future]):
    """Wait for one batch of CPU decodes: (positions decoded, their stacked pixels, failures)."""
    arrays, ok, failures = [], [], []
    for position, future in zip(positions, futures):
        try:
            arrays.append(future.result())
            ok.append(position)
        except Exception as exc:  # noqa: BLE001 - any decode error is a per-file failure
            failures.append((position, failure_reason(exc)))
    return ok, (np.stack(arrays) if arrays else None), failures
