"""The made-up values of a synthetic release: words, names, places, ids, times, and each photo's picture.

:mod:`image_search.sample` writes the release; the values here are what people would have
typed or uploaded (text with quotes, tabs and line breaks among them, ``TRICKY_*``), drawn
so that a photo's colours, shape and keywords agree and a search for them finds it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from resources.errors import ImageSearchError

#: Colour names with the RGB each stands for; the names are also Unsplash colour keywords.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (234, 138, 20),
    "yellow": (240, 214, 40),
    "green": (46, 160, 67),
    "teal": (20, 150, 150),
    "blue": (37, 99, 235),
    "purple": (126, 58, 200),
    "pink": (236, 100, 170),
    "brown": (120, 72, 40),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
}


SHAPES = ("circle", "square", "triangle", "stripes", "cross")


NOUNS = (
    "mountain lake forest beach ocean city street building bridge tree flower sky cloud sunset "
    "sunrise road car bicycle dog cat bird horse coffee book laptop desk window door river "
    "snow desert field grass leaf rock island boat train person woman man child hand portrait "
    "food fruit bread wall light night star moon architecture interior garden park path hill "
    "valley waterfall wave sand shadow reflection glass metal wood texture pattern paper "
    "music guitar camera phone market shop cafe restaurant kitchen table chair plant cactus "
    "rain fog storm ice lighthouse castle church temple tower skyline stairs fence field farm"
).split()


ADJECTIVES = (
    "old new bright dark calm wild urban rural vintage modern minimal colorful quiet busy "
    "misty sunny cold warm green blue golden soft"
).split()


#: Generic keywords: single nouns, then two-word phrases, as Unsplash keywords are.
VOCABULARY: list[str] = list(dict.fromkeys(NOUNS)) + [f"{a} {n}" for a in ADJECTIVES for n in dict.fromkeys(NOUNS)]


PLACES = (
    ("Paris, France", "France", "Paris", 48.8566, 2.3522),
    ("Tokyo, Japan", "Japan", "Tokyo", 35.6762, 139.6503),
    ("New York, United States", "United States", "New York", 40.7128, -74.0060),
    ("Cape Town, South Africa", "South Africa", "Cape Town", -33.9249, 18.4241),
    ("Reykjavik, Iceland", "Iceland", "Reykjavik", 64.1466, -21.9426),
    ("Sydney, Australia", "Australia", "Sydney", -33.8688, 151.2093),
    ("Beijing, China", "China", "Beijing", 39.9042, 116.4074),
    ("São Paulo, Brazil", "Brazil", "São Paulo", -23.5505, -46.6333),
    ("Berlin, Germany", "Germany", "Berlin", 52.52, 13.405),
    ("Banff, Canada", "Canada", "Banff", 51.1784, -115.5708),
)


FIRST_NAMES = "Anna Ben Chen Dana Emil Fatima Goran Hana Ivan Julia Kenji Lea Mateo Nora Omar Priya Zoë 美咲".split()


LAST_NAMES = "Smith Müller Wang Silva Kowalski Nguyen Okafor Rossi Tanaka Dubois Larsen Haddad O'Brien 山田".split()


CAMERAS = (
    ("Canon", "EOS 5D Mark IV"),
    ("NIKON CORPORATION", "NIKON D750"),
    ("SONY", "ILCE-7M3"),
    ("FUJIFILM", "X-T3"),
    ("Apple", "iPhone 12 Pro"),
)


COUNTRIES = "US GB DE FR JP CN BR IN CA AU ES IT NL SE KR MX".split()


#: Free text as people type it, one case of the CSV rules each (the last has them all).
#: Photo ``i`` below this many gets text ``i`` as its location name and description.
TRICKY_TEXTS = (
    "Morning light over the ridge\nshot from the hut",
    "Old harbour at dusk\r\nwritten on Windows",
    'My "favourite" corner of the city',
    "Left\tright: a tab typed into the text",
    "雨の日の東京タワー",
    "Sunset 🌅 over the bay 🏖️",
    '"Quoted from the first character"',
    'All at once: "quote"\ttab\r\nCRLF\nLF 山 🏔️',
)


#: User-suggested keywords that need quoting; photo ``i`` below this many has keyword ``i``.
TRICKY_KEYWORDS = ("night\nsky", 'vinyl 12"', "富士山", "🌸 blossom", "tab\tkeyword")


#: Search terms that need quoting, a few among the conversions (and the first ones).
TRICKY_SEARCHES = ('"blue hour"', "猫", "coffee ☕", "beach\ttowel", "two\nlines")


_TEXT_SHARE = 0.03


_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))


_EPOCH_2013 = 1_356_998_400  # 2013-01-01 UTC, the year Unsplash started


_SPAN_SECONDS = 10 * 365 * 86_400


def random_ids(rng: np.random.Generator, n: int, length: int = 11) -> np.ndarray:
    """``n`` distinct random ids in Unsplash's 11-character alphabet."""
    out: dict[str, None] = {}
    while len(out) < n:
        chars = _ID_ALPHABET[rng.integers(0, len(_ID_ALPHABET), size=(n - len(out), length))]
        out.update(dict.fromkeys("".join(row) for row in chars))
    return np.array(list(out)[:n], dtype=object)


def timestamps(rng: np.random.Generator, n: int) -> pa.Array:
    """``n`` timestamps between 2013 and 2023 in the dump's ``YYYY-MM-DD HH:MM:SS.ffffff`` form."""
    micros = (_EPOCH_2013 + rng.integers(0, _SPAN_SECONDS, size=n)) * 1_000_000 + rng.integers(0, 1_000_000, size=n)
    return pa.array(micros, type=pa.timestamp("us")).cast(pa.string())


def spread(rng: np.random.Generator, total: int, n: int, cap: int, floor: int = 2) -> np.ndarray:
    """Split ``total`` rows over ``n`` photos: ``floor`` each while rows last, the rest at random, at most ``cap`` per photo."""
    if n == 0 or total == 0:
        return np.zeros(n, dtype=np.int64)
    if total > n * cap:
        raise ImageSearchError(
            f"{total} rows cannot be spread over {n} photos at most {cap} each: ask for fewer rows or more photos"
        )
    base = min(floor, total // n)
    counts = base + rng.multinomial(total - base * n, np.full(n, 1.0 / n))
    excess = np.maximum(counts - cap, 0)
    counts -= excess
    spare = excess.sum()
    while spare:
        room = np.flatnonzero(counts < cap)
        take = rng.choice(room, size=min(spare, len(room)), replace=False)
        counts[take] += 1
        spare -= len(take)
    return counts


def free_text(rng: np.random.Generator, plain: list[str | None], tricky: tuple[str, ...]) -> pa.Array:
    """``plain`` with value ``i`` replaced by ``tricky[i]`` for the first ones and a few more at random.

    The random ones (``_TEXT_SHARE``) get one of the tricky texts appended, so every kind of
    value the CSV rules cover also turns up at scale. Missing values stay missing.
    """
    values = list(plain)
    for i, text in enumerate(tricky[: len(values)]):
        values[i] = text
    picked = np.flatnonzero(rng.random(len(values)) < _TEXT_SHARE)
    for i, k in zip(picked.tolist(), rng.integers(0, len(tricky), size=len(picked)).tolist()):
        if i >= len(tricky) and values[i] is not None:
            values[i] = f"{values[i]} {tricky[k]}"
    return pa.array(values, pa.string())


def design(i: int) -> tuple[str, str, str]:
    """Background colour, shape and shape colour of photo number ``i``: distinct for 660 photos."""
    names = list(PALETTE)
    background = names[i % len(names)]
    shape = SHAPES[(i // len(names)) % len(SHAPES)]
    others = [n for n in names if n != background]
    accent = others[(i // (len(names) * len(SHAPES)) + i) % len(others)]
    return background, shape, accent


def _draw(size: tuple[int, int], background: str, shape: str, accent: str, rng: np.random.Generator):
    """A small picture: a ``background`` field with a few ``accent`` ``shape``s at random places."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, PALETTE[background])
    draw = ImageDraw.Draw(image)
    fill = PALETTE[accent]
    for _ in range(int(rng.integers(1, 4))):
        r = int(rng.integers(min(size) // 8, min(size) // 4 + 1))
        x, y = int(rng.integers(r, width - r)), int(rng.integers(r, height - r))
        if shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif shape == "square":
            draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
        elif shape == "triangle":
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
        elif shape == "stripes":
            for sx in range(x % (3 * r), width, 3 * r):
                draw.rectangle((sx, 0, sx + r // 2, height), fill=fill)
        else:
            draw.rectangle((x - r, y - r // 3, x + r, y + r // 3), fill=fill)
            draw.rectangle((x - r // 3, y - r, x + r // 3, y + r), fill=fill)
    noise = rng.integers(-12, 13, size=(height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _near_copy(image, rng: np.random.Generator):
    """``image`` brightened a little, cropped by a few pixels and resized back."""
    from PIL import ImageEnhance

    width, height = image.size
    dx, dy = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    copy = image.crop((dx, dy, width - dx, height - dy)).resize((width, height))
    return ImageEnhance.Brightness(copy).enhance(float(rng.uniform(1.04, 1.1)))


def write_images(images_dir: Path, rng, photo_ids, designs, design_of, first_copy: int) -> None:
    """One JPEG per photo; a planted copy is a near-copy of its original's picture."""
    drawn = {}
    for i, (pid, (background, shape, accent)) in enumerate(zip(photo_ids, designs)):
        if i >= first_copy:
            image = _near_copy(drawn[int(design_of[i])], rng)
        else:
            size = (96, 64) if i % 3 != 1 else (64, 96)
            image = _draw(size, background, shape, accent, rng)
            drawn[i] = image
        image.save(images_dir / f"{pid}.jpg", format="JPEG", quality=90, subsampling=0)
