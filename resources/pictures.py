"""Pixels every stage can use: any PIL image made upright 8-bit RGB, and the pixel cap.

The downloader (what it stores), the encoder (what the model sees) and query uploads go
through these, so an odd image (16-bit, palette, transparency, EXIF rotation) looks the
same wherever it enters.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

#: Images with more pixels are refused, read from the header before any pixel is decoded.
MAX_PIXELS = 40_000_000
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
