"""Image files made in memory for the tests: plain, awkward and hostile bytes of each format.

Every picture is generated from a seed (nothing comes from the Unsplash data set): plain
JPEGs, the colour modes, bit depths and orientations a decoder must turn upright RGB, and
inputs it must refuse (an animated GIF, a decompression bomb). The download server of
``tests/http_fixtures.py`` serves them; the decoding tests open them directly.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def gradient(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic RGB test picture (two gradients and a seed-dependent tint)."""
    rng = np.random.default_rng(seed)
    tint = rng.integers(0, 255, size=3)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    pixels = (x * np.array([1, 0, 0.5]) + y * np.array([0, 1, 0.5])) / 2 + tint / 2
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def photo_jpeg(width: int = 640, height: int = 427, seed: int = 0) -> bytes:
    """A JPEG the size and weight of what imgix returns for ``w=640`` (texture included, ~100 KB)."""
    noise = np.random.default_rng(seed).normal(0, 18, size=(height, width, 3))
    pixels = np.clip(np.asarray(gradient(width, height, seed), dtype=np.float32) + noise, 0, 255)
    return _encode(Image.fromarray(pixels.astype(np.uint8), "RGB"), "JPEG", quality=80)


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0, **options) -> bytes:
    """A plain baseline RGB JPEG."""
    return _encode(gradient(width, height, seed), "JPEG", quality=85, **options)


def cmyk_jpeg() -> bytes:
    """A CMYK JPEG."""
    return _encode(gradient(40, 30).convert("CMYK"), "JPEG")


def greyscale_jpeg() -> bytes:
    """A one-channel (L) JPEG."""
    return _encode(gradient(40, 30).convert("L"), "JPEG")


def png16() -> bytes:
    """A 16-bit greyscale PNG whose values span the full 0..65535 range."""
    values = np.tile(np.linspace(0, 65535, 40, dtype=np.uint16), (30, 1))
    return _encode(Image.fromarray(values), "PNG")


def palette_png_transparent() -> bytes:
    """A 16-colour palette PNG whose left half is index 15, declared fully transparent."""
    image = gradient(40, 30).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pixels = np.asarray(image).copy()
    pixels[:, :20] = 15
    result = Image.fromarray(pixels, "P")
    result.putpalette(image.getpalette())
    return _encode(result, "PNG", transparency=15)


def rgba_png() -> bytes:
    """An RGBA PNG with a half-transparent alpha channel."""
    image = gradient(40, 30).convert("RGBA")
    image.putalpha(128)
    return _encode(image, "PNG")


def exif_rotated_jpeg() -> bytes:
    """A 60 x 20 JPEG with EXIF orientation 6 (display rotated 90 degrees: 20 x 60)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(gradient(60, 20), "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    """A three-frame GIF whose first frame is pure red."""
    frames = [Image.new("RGB", (32, 24), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def webp_bytes() -> bytes:
    """A WebP image."""
    return _encode(gradient(40, 30), "WEBP")


def progressive_jpeg() -> bytes:
    """A progressive RGB JPEG (decoded and re-encoded, not kept as is)."""
    return _encode(gradient(40, 30), "JPEG", progressive=True)


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` (400 M pixels) in about 50 KB.

    Decoding it would need hundreds of megabytes; the pipeline must refuse it from the
    header alone.
    """
    raw_row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(raw_row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
