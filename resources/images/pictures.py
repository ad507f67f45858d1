"""Pixels every stage can use: the one safe way to open an image, and any PIL image made upright 8-bit RGB.

The downloader (what it stores), the encoder (what the model sees) and query uploads go
through these, so an odd image (16-bit, palette, transparency, EXIF rotation) looks the
same wherever it enters, and no image reaches a decoder the project does not promise.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from resources.errors import ImageSearchError, TooLargeError, UnsupportedTypeError

#: Images with more pixels are refused, read from the header before any pixel is decoded.
MAX_PIXELS = 40_000_000
#: The only formats ever decoded (Pillow's names). Every other plugin (EPS, which runs
#: Ghostscript, TIFF, PSD, ICO...) is never asked to open anything: see :func:`open_image`.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
ACCEPTED_NAMES = "JPEG, PNG or WebP"
#: The EXIF tag saying how a camera held the picture; 1 is upright.
EXIF_ORIENTATION = 0x0112

_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def is_upright(image: Image.Image) -> bool:
    """Whether ``image`` needs no EXIF rotation to be shown the right way up."""
    return image.getexif().get(EXIF_ORIENTATION, 1) == 1


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16-bit and float scaled (not clipped), transparency on white."""
    if image.mode in _WIDE_MODES:
        values = np.asarray(image, dtype=np.float64)
        peak = values.max(initial=0.0)
        if image.mode == "F" and peak <= 1.0:
            scale = 255.0
        elif image.mode.startswith("I;16") or peak > 255:
            scale = 255.0 / 65535.0
        else:
            scale = 1.0
        image = Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


def upright_rgb(image: Image.Image) -> Image.Image:
    """``image`` with its EXIF orientation applied, as 8-bit RGB."""
    return to_rgb(ImageOps.exif_transpose(image))


def open_image(
    source: bytes | str | os.PathLike, *, draft_to: int | None = None, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """``source`` (the bytes or the path of an image) opened as JPEG, PNG or WebP, its pixels not yet decoded.

    Only the plugins of :data:`ACCEPTED_FORMATS` are asked to read it (``Image.open``'s
    ``formats``), so no other decoder, Ghostscript's included, ever sees the bytes. The
    pixel count is read from the header and checked against ``max_pixels`` before any pixel
    is allocated. ``draft_to`` asks a JPEG to decode at the smallest DCT scale whose
    shorter side stays at least that many pixels (what a model that resizes to it needs).
    Pixels are decoded on first use (``load()``, ``convert()``); a file that is corrupt
    beyond its header fails there, with Pillow's ``OSError``.

    Raises :class:`UnsupportedTypeError` for another image format, :class:`TooLargeError`
    over the pixel cap and :class:`ImageSearchError` for bytes that are no image at all.
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else "the image"
    data = Path(source).read_bytes() if isinstance(source, (str, os.PathLike)) else bytes(source)
    if not data:
        raise ImageSearchError(f"{name} is empty: give a {ACCEPTED_NAMES} image")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise TooLargeError(f"{name} has too many pixels ({exc}): give one of at most {max_pixels:,} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        other = sniffed_format(data)
        if other is not None and other not in ACCEPTED_FORMATS:
            raise UnsupportedTypeError(
                f"{name} is a {other} image: only {ACCEPTED_NAMES} images are accepted"
            ) from None
        raise ImageSearchError(
            f"{name} is not an image ({exc.__class__.__name__}): give a {ACCEPTED_NAMES} image"
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise TooLargeError(
            f"{name} declares {width}x{height} pixels, more than the cap of {max_pixels:,}: give a smaller image"
        )
    if draft_to and isinstance(image, JpegImagePlugin.JpegImageFile):  # MPO, a multi-picture JPEG, is one too
        image.draft("RGB", (draft_to, draft_to))
    return image


def sniffed_format(data: bytes) -> str | None:
    """The format whose signature ``data`` starts with, by each plugin's ``_accept`` test alone.

    Only the signature check runs: no plugin opens or parses the bytes, so naming an EPS
    file this way never starts Ghostscript.
    """
    Image.init()
    prefix = data[:16]
    for fmt, (_factory, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix):
                return fmt
        except Exception:  # noqa: BLE001 - a signature test that chokes on a short prefix is no match
            continue
    return None


def decoded_rgb(source: bytes | str | os.PathLike, *, draft_to: int | None = None) -> Image.Image:
    """``source`` opened by :func:`open_image`, decoded, made upright 8-bit RGB; one error type for every failure."""
    image = open_image(source, draft_to=draft_to)
    try:
        return upright_rgb(image)
    except Image.DecompressionBombError as exc:
        raise TooLargeError(f"the image has too many pixels: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageSearchError(f"the {image.format or 'image'} failed to decode: {exc}") from None
