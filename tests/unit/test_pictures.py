"""Opening images safely (JPEG, PNG and WebP only, pixels bounded from the header) and upright 8-bit RGB from any PIL image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from resources.errors import ImageSearchError, TooLargeError, UnsupportedTypeError
from resources.images.pictures import (
    ACCEPTED_FORMATS,
    MAX_PIXELS,
    decoded_rgb,
    is_upright,
    open_image,
    to_rgb,
    upright_rgb,
)
from tests.images import exif_rotated_jpeg, palette_png_transparent, png16


def test_16_bit_is_scaled_not_clipped():
    image = Image.open(io.BytesIO(png16()))
    wide = np.asarray(image, dtype=np.float64)
    rgb = np.asarray(to_rgb(image))
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
    assert abs(int(rgb.max()) - round(wide.max() / 257)) <= 1 and rgb.max() > 0


def test_wide_modes_holding_8_bit_values_keep_them():
    values = np.array([[0, 128, 255]], dtype=np.int32)
    assert np.asarray(to_rgb(Image.fromarray(values, "I")))[0, :, 0].tolist() == [0, 128, 255]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(unit))[0, :, 0].tolist() == [0, 127, 255]


def test_transparency_lands_on_white():
    rgb = to_rgb(Image.open(io.BytesIO(palette_png_transparent())))
    assert rgb.mode == "RGB"
    clear = Image.new("LA", (2, 2), (0, 0))
    assert np.asarray(to_rgb(clear)).min() == 255


def test_exif_orientation_is_applied_once():
    image = Image.open(io.BytesIO(exif_rotated_jpeg()))
    assert image.size == (60, 20) and not is_upright(image)
    upright = upright_rgb(image)
    assert upright.size == (20, 60) and upright.mode == "RGB" and is_upright(upright)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def decoders_spied(monkeypatch):
    """Every plugin outside JPEG, PNG and WebP, and Ghostscript itself, replaced by a spy that records a call.

    Pillow's registry (``Image.OPEN``) is what ``Image.open`` consults, so a format whose
    entry is a spy cannot be opened without the spy seeing it; this does not depend on
    Ghostscript being absent from the machine.
    """
    from PIL import EpsImagePlugin

    Image.init()
    reached: list[str] = []
    for fmt, (factory, accept) in list(Image.OPEN.items()):
        if fmt not in ACCEPTED_FORMATS:

            def spy(*args, _fmt=fmt, _factory=factory):
                reached.append(_fmt)
                return _factory(*args)

            monkeypatch.setitem(Image.OPEN, fmt, (spy, accept))
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: reached.append("Ghostscript"))
    return reached


@pytest.mark.parametrize("fmt", ["EPS", "TIFF", "PSD", "ICO"])
def test_formats_outside_jpeg_png_webp_are_refused_without_reaching_their_decoder(decoders_spied, fmt):
    data = b"8BPS\x00\x01" + b"\x00" * 64 if fmt == "PSD" else _encoded(Image.new("RGB", (32, 32), "red"), fmt)
    with pytest.raises(UnsupportedTypeError, match=f"is a {fmt} image: only JPEG, PNG or WebP images are accepted"):
        open_image(data)
    assert decoders_spied == []
    if fmt == "EPS":  # the spy is live: an unrestricted open goes straight to the EPS plugin
        with pytest.raises(Exception):
            Image.open(io.BytesIO(data)).load()
        assert decoders_spied[0] == "EPS"


def test_a_small_file_declaring_too_many_pixels_is_refused_from_its_header(monkeypatch):
    from tests.images import bomb_png

    data = bomb_png(6400, 6400)
    assert len(data) < 10_000 and 6400 * 6400 > MAX_PIXELS
    loads: list[object] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self))
    with pytest.raises(TooLargeError, match="declares 6400x6400 pixels"):
        open_image(data)
    assert loads == []


def test_a_large_jpeg_decodes_at_the_dct_scale_the_model_needs():
    data = _encoded(Image.new("RGB", (4000, 3000), "blue"), "JPEG")
    image = open_image(data, draft_to=224)
    assert 224 <= min(image.size) < 3000 // 4
    assert decoded_rgb(data, draft_to=224).size == image.size
    assert open_image(data).size == (4000, 3000)


def test_bytes_that_are_no_image_say_which_formats_are_accepted():
    with pytest.raises(ImageSearchError, match="is not an image .*: give a JPEG, PNG or WebP image") as raised:
        open_image(b"this is not an image")
    assert not isinstance(raised.value, (UnsupportedTypeError, TooLargeError))
