"""Upright 8-bit RGB from any PIL image: what the downloader stores and the encoder sees."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from resources.pictures import is_upright, to_rgb, upright_rgb
from tests.http_fixtures import exif_rotated_jpeg, palette_png_transparent, png16

pytestmark = pytest.mark.unit


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
