"""``image-search sample DIR``: a synthetic release written the way Unsplash Lite is published.

Unsplash Lite may not be redistributed, so tests, CI and the offline demo ingest this
instead: each release's documents, columns and file names, CSV quoting, text as people
type it, the documented value domains, one small JPEG per photo, optionally tiny models and
planted near-duplicates; from a 48-photo fixture to the real size (docs/ingestion.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from resources.errors import ImageSearchError
from resources.release.lite_format import DOCUMENTS, LATEST_RELEASE, RELEASES, columns_of
from resources.storage.files import Staged

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

_NOUNS = (
    "mountain lake forest beach ocean city street building bridge tree flower sky cloud sunset "
    "sunrise road car bicycle dog cat bird horse coffee book laptop desk window door river "
    "snow desert field grass leaf rock island boat train person woman man child hand portrait "
    "food fruit bread wall light night star moon architecture interior garden park path hill "
    "valley waterfall wave sand shadow reflection glass metal wood texture pattern paper "
    "music guitar camera phone market shop cafe restaurant kitchen table chair plant cactus "
    "rain fog storm ice lighthouse castle church temple tower skyline stairs fence field farm"
).split()
_ADJECTIVES = (
    "old new bright dark calm wild urban rural vintage modern minimal colorful quiet busy "
    "misty sunny cold warm green blue golden soft"
).split()
#: Generic keywords: single nouns, then two-word phrases, as Unsplash keywords are.
VOCABULARY: list[str] = list(dict.fromkeys(_NOUNS)) + [f"{a} {n}" for a in _ADJECTIVES for n in dict.fromkeys(_NOUNS)]

_PLACES = (
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
_FIRST_NAMES = "Anna Ben Chen Dana Emil Fatima Goran Hana Ivan Julia Kenji Lea Mateo Nora Omar Priya Zoë 美咲".split()
_LAST_NAMES = "Smith Müller Wang Silva Kowalski Nguyen Okafor Rossi Tanaka Dubois Larsen Haddad O'Brien 山田".split()
_CAMERAS = (
    ("Canon", "EOS 5D Mark IV"),
    ("NIKON CORPORATION", "NIKON D750"),
    ("SONY", "ILCE-7M3"),
    ("FUJIFILM", "X-T3"),
    ("Apple", "iPhone 12 Pro"),
)
_COUNTRIES = "US GB DE FR JP CN BR IN CA AU ES IT NL SE KR MX".split()

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
_TRICKY_SHARE = 0.002
#: Columns whose values may need CSV quoting; every other column holds ids, numbers, flags or timestamps.
_FREE_TEXT = {
    "photo_description",
    "ai_description",
    "photographer_first_name",
    "photographer_last_name",
    "photo_location_name",
    "photo_location_city",
    "keyword",
    "collection_title",
}
_BASE83 = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"))
#: File name of the planted near-duplicate pairs (original photo_id, copy photo_id).
PLANTED_DUPLICATES = "planted_duplicates.tsv"

_CHUNK_ROWS = 500_000
_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))
_EPOCH_2013 = 1_356_998_400  # 2013-01-01 UTC, the year Unsplash started
_SPAN_SECONDS = 10 * 365 * 86_400


def _ids(rng: np.random.Generator, n: int, length: int = 11) -> np.ndarray:
    """``n`` distinct random ids in Unsplash's 11-character alphabet."""
    out: dict[str, None] = {}
    while len(out) < n:
        chars = _ID_ALPHABET[rng.integers(0, len(_ID_ALPHABET), size=(n - len(out), length))]
        out.update(dict.fromkeys("".join(row) for row in chars))
    return np.array(list(out)[:n], dtype=object)


def _timestamps(rng: np.random.Generator, n: int) -> pa.Array:
    """``n`` timestamps between 2013 and 2023 in the dump's ``YYYY-MM-DD HH:MM:SS.ffffff`` form."""
    micros = (_EPOCH_2013 + rng.integers(0, _SPAN_SECONDS, size=n)) * 1_000_000 + rng.integers(0, 1_000_000, size=n)
    return pa.array(micros, type=pa.timestamp("us")).cast(pa.string())


def _spread(rng: np.random.Generator, total: int, n: int, cap: int, floor: int = 2) -> np.ndarray:
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


def _csv_field(values: pa.Array) -> pa.Array:
    """``values`` as CSV fields: a value holding a quote, tab or line break is quoted, its quotes doubled."""
    needs = pc.fill_null(pc.match_substring_regex(values, '["\t\r\n]'), False)
    if not pc.any(needs).as_py():
        return values
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(values, '"', '""'), '"', "")
    return pc.if_else(needs, quoted, values)


def file_names(release_version: str, document: str, parts: int) -> list[str]:
    """The part file names of ``document`` as ``release_version`` names them.

    1.3.0 named every document ``.csv000`` (unsplash/datasets pull request 71); 1.4.1
    "fixed the extension of the photos.tsv file" (pull request 74), so 1.4.0 had
    ``photos.csv000``; every other release uses ``.tsv000``.
    """
    csv = release_version.startswith("1.3.") or (release_version == "1.4.0" and document == "photos")
    return [f"{document}.{'csv' if csv else 'tsv'}{k:03d}" for k in range(parts)]


class _DocumentWriter:
    """Writes one document: ``parts`` files of about equal row counts, each with the header line."""

    def __init__(self, out: Path, document: str, release_version: str, total: int, parts: int):
        self.columns = columns_of(release_version)[document]
        self.paths = [out / name for name in file_names(release_version, document, parts)]
        self.bounds = [round(total * k / parts) for k in range(parts + 1)]
        self.rows = 0
        self._part = -1
        self._file = None
        self._next_part()

    def _next_part(self) -> None:
        if self._file is not None:
            self._file.close()
            self._staged.commit()
        self._part += 1
        self._staged = Staged(self.paths[self._part])
        self._file = open(self._staged.path, "wb")
        self._file.write(("\t".join(self.columns) + "\n").encode("utf-8"))

    def write(self, columns: dict[str, pa.Array]) -> None:
        """Append rows given column by column (every column of the latest release; the release's are written)."""
        fields = []
        for name in self.columns:
            values = columns[name] if columns[name].type == pa.string() else columns[name].cast(pa.string())
            fields.append(_csv_field(values) if name in _FREE_TEXT else values)
        lines = pc.binary_join_element_wise(
            pc.binary_join_element_wise(*fields, "\t", null_handling="replace", null_replacement=""),
            pa.scalar(""),
            "\n",
        )
        offsets = np.frombuffer(lines.buffers()[1], np.int32, count=len(lines) + 1, offset=lines.offset * 4)
        data = memoryview(lines.buffers()[2])
        done = 0
        while done < len(lines):
            if self.rows == self.bounds[self._part + 1]:
                self._next_part()
            take = min(len(lines) - done, self.bounds[self._part + 1] - self.rows)
            self._file.write(data[offsets[done] : offsets[done + take]])
            done += take
            self.rows += take

    def close(self) -> None:
        while self._part < len(self.paths) - 1:
            self._next_part()
        self._file.close()
        self._staged.commit()


def _design(i: int) -> tuple[str, str, str]:
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


def write_release(
    out_dir: Path | str,
    *,
    photos: int = 100,
    keywords: int | None = None,
    collections: int | None = None,
    conversions: int | None = None,
    colors: int | None = None,
    duplicates: int = 0,
    image_base_url: str | None = None,
    images: bool = True,
    models: bool = False,
    seed: int = 0,
    release_version: str = LATEST_RELEASE,
    parts: int = 1,
) -> dict:
    """Write a synthetic Unsplash Lite release into ``out_dir`` and return what it holds.

    Unset row counts scale with ``photos``: 20 keywords, 3 collections, 10 conversions and
    3 colours per photo (no colours before release 1.1.0). Every photo's first two keywords
    are its background colour and its shape, suggested by the user, so ``describe`` is
    predictable; its colour rows put the background first by coverage. ``image_base_url``
    replaces the ``file://`` URLs with ``<image_base_url>/<photo_id>.jpg`` (for serving the
    images folder over HTTP).

    The returned dict has the row count of each document, ``files`` (document -> file
    names), ``photo_ids``, ``designs`` (photo_id -> (background, shape, accent)),
    ``duplicates`` (planted pairs), ``images_dir`` and, with ``models``, ``models_dir``.
    """
    if release_version not in RELEASES:
        raise ImageSearchError(f"--release-version {release_version} is not one of {', '.join(RELEASES)}")
    documents = columns_of(release_version)
    keywords = 20 * photos if keywords is None else keywords
    collections = 3 * photos if collections is None else collections
    conversions = 10 * photos if conversions is None else conversions
    colors = (3 * photos if colors is None else colors) if "colors" in documents else 0
    for name, value in (
        ("photos", photos),
        ("keywords", keywords),
        ("collections", collections),
        ("conversions", conversions),
        ("colors", colors),
        ("duplicates", duplicates),
    ):
        if value < 0:
            raise ImageSearchError(f"--{name} {value} is negative: give a count of 0 or more")
    if photos < 1:
        raise ImageSearchError("--photos must be at least 1")
    if parts < 1:
        raise ImageSearchError(f"--parts {parts}: give 1 or more")
    if duplicates >= photos:
        raise ImageSearchError(
            f"--duplicates {duplicates} needs more photos than that: use fewer than --photos {photos}"
        )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    text_rng = np.random.default_rng([seed, 1])
    photo_ids = _ids(rng, photos)

    # The last `duplicates` photos copy the design (and later the image) of an earlier one.
    design_of = np.arange(photos)
    originals = (
        rng.choice(photos - duplicates, size=duplicates, replace=duplicates > photos - duplicates)
        if duplicates
        else np.array([], dtype=int)
    )
    design_of[photos - duplicates :] = originals
    designs = [_design(int(d)) for d in design_of]

    def writer(document: str, total: int) -> _DocumentWriter:
        return _DocumentWriter(out, document, release_version, total, parts)

    images_dir = out / "images"
    _write_photos(writer("photos", photos), rng, text_rng, photo_ids, designs, images_dir, image_base_url)
    if images:
        images_dir.mkdir(exist_ok=True)
        _write_images(images_dir, rng, photo_ids, designs, design_of, photos - duplicates)
    pairs = [(photo_ids[int(o)], photo_ids[photos - duplicates + k]) for k, o in enumerate(originals)]
    with open(out / PLANTED_DUPLICATES, "w", encoding="utf-8") as f:
        f.write("original_photo_id\tcopy_photo_id\n")
        f.writelines(f"{a}\t{b}\n" for a, b in pairs)

    keyword_counts = _spread(rng, keywords, photos, 2 + len(VOCABULARY))
    _write_keywords(writer("keywords", keywords), rng, photo_ids, designs, keyword_counts, release_version)
    _write_collections(writer("collections", collections), rng, text_rng, photo_ids, collections)
    _write_conversions(
        writer("conversions", conversions), rng, text_rng, photo_ids, designs, keyword_counts, conversions
    )
    if "colors" in documents:
        _write_colors(writer("colors", colors), rng, photo_ids, designs, colors)
    _write_docs(out, release_version)

    summary = {
        "photos": photos,
        "keywords": keywords,
        "collections": collections,
        "conversions": conversions,
        "colors": colors,
        "release_version": release_version,
        "files": {doc: file_names(release_version, doc, parts) for doc in documents},
        "photo_ids": list(photo_ids),
        "designs": dict(zip(photo_ids, designs)),
        "duplicates": pairs,
        "images_dir": str(images_dir) if images else None,
    }
    if models:
        from image_search.tiny_models import write_tiny_models

        write_tiny_models(out / "models")
        summary["models_dir"] = str(out / "models")
    return summary


def _free_text(rng: np.random.Generator, plain: list[str | None], tricky: tuple[str, ...]) -> pa.Array:
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


def _write_photos(
    writer: _DocumentWriter, rng, text_rng, photo_ids, designs, images_dir: Path, image_base_url: str | None
) -> None:
    n = len(photo_ids)
    # 60% landscape, 30% portrait, 10% (nearly) square, as on Unsplash.
    kind = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    long_side = rng.choice([3000, 4000, 4912, 5472, 6000, 6720], size=n)
    short_side = (long_side * rng.choice([2 / 3, 3 / 4, 9 / 16, 4 / 5], size=n)).astype(np.int64)
    width = np.where(kind == 0, long_side, np.where(kind == 1, short_side, long_side))
    height = np.where(kind == 0, short_side, np.where(kind == 1, long_side, long_side - rng.integers(0, 20, size=n)))
    if image_base_url:
        base = image_base_url.rstrip("/")
        image_urls = [f"{base}/{pid}.jpg" for pid in photo_ids]
    else:
        image_urls = [(images_dir / f"{pid}.jpg").resolve().as_uri() for pid in photo_ids]
    first = rng.choice(_FIRST_NAMES, size=n)
    last = rng.choice(_LAST_NAMES, size=n)
    place = rng.integers(-3, len(_PLACES), size=n)  # negative: no location
    camera = rng.integers(-1, len(_CAMERAS), size=n)  # -1: no EXIF
    landmark = rng.random(n) < 0.1

    def opt(mask, values):
        return [v if m else None for m, v in zip(mask, values)]

    has_place = place >= 0
    has_camera = camera >= 0
    place_names = [_PLACES[p][0] if p >= 0 else None for p in place]
    descriptions = opt(rng.random(n) < 0.6, [f"{a} {s} shapes on {bg}" for bg, s, a in designs])
    writer.write(
        {
            "photo_id": pa.array(photo_ids, pa.string()),
            "photo_url": pa.array([f"https://unsplash.com/photos/{pid}" for pid in photo_ids]),
            "photo_image_url": pa.array(image_urls),
            "photo_submitted_at": _timestamps(rng, n),
            "photo_featured": pa.array(np.where(rng.random(n) < 0.9, "t", "f")),
            "photo_width": pa.array(width),
            "photo_height": pa.array(height),
            "photo_aspect_ratio": pa.array(np.round(width / height, 2)),
            "photo_description": _free_text(text_rng, descriptions, TRICKY_TEXTS),
            "photographer_username": pa.array(
                [f"{f.lower()}{s.lower()}{k}" for f, s, k in zip(first, last, rng.integers(1, 999, size=n))]
            ),
            "photographer_first_name": pa.array(first),
            "photographer_last_name": pa.array(opt(rng.random(n) < 0.95, last)),
            "exif_camera_make": pa.array(opt(has_camera, [_CAMERAS[c][0] for c in camera])),
            "exif_camera_model": pa.array(opt(has_camera, [_CAMERAS[c][1] for c in camera])),
            "exif_iso": pa.array(opt(has_camera, rng.choice([100, 200, 400, 800, 1600], size=n).tolist()), pa.int64()),
            "exif_aperture_value": pa.array(opt(has_camera, rng.choice(["1.8", "2.8", "4.0", "5.6", "8.0"], size=n))),
            "exif_focal_length": pa.array(opt(has_camera, rng.choice(["24.0", "35.0", "50.0", "85.0"], size=n))),
            "exif_exposure_time": pa.array(opt(has_camera, rng.choice(["1/60", "1/250", "1/1000", "2"], size=n))),
            "photo_location_name": _free_text(text_rng, place_names, TRICKY_TEXTS),
            "photo_location_latitude": pa.array(opt(has_place, [_PLACES[p][3] for p in place]), pa.float64()),
            "photo_location_longitude": pa.array(opt(has_place, [_PLACES[p][4] for p in place]), pa.float64()),
            "photo_location_country": pa.array(opt(has_place, [_PLACES[p][1] for p in place])),
            "photo_location_city": pa.array(opt(has_place, [_PLACES[p][2] for p in place])),
            "stats_views": pa.array(rng.integers(100, 5_000_000, size=n)),
            "stats_downloads": pa.array(rng.integers(0, 50_000, size=n)),
            "ai_description": pa.array(
                [f"{_article(a)} {a} {s} on {_article(bg)} {bg} background" for bg, s, a in designs]
            ),
            "ai_primary_landmark_name": pa.array(opt(landmark, ["Eiffel Tower"] * n)),
            "ai_primary_landmark_latitude": pa.array(opt(landmark, [48.8584] * n), pa.float64()),
            "ai_primary_landmark_longitude": pa.array(opt(landmark, [2.2945] * n), pa.float64()),
            "ai_primary_landmark_confidence": pa.array(opt(landmark, [f"{c:.6f}" for c in rng.uniform(0.5, 1, n)])),
            # A 4 x 3 component BlurHash: size flag "L", then 27 base-83 digits (blurha.sh).
            "blur_hash": pa.array(
                ["L" + "".join(row) for row in _BASE83[text_rng.integers(0, len(_BASE83), size=(n, 27))]]
            ),
        }
    )
    writer.close()


def _write_images(images_dir: Path, rng, photo_ids, designs, design_of, first_copy: int) -> None:
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


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _chunks(total: int):
    for start in range(0, total, _CHUNK_ROWS):
        yield start, min(start + _CHUNK_ROWS, total)


def _keyword_of(photo_index: np.ndarray, rank: np.ndarray, designs) -> pa.Array:
    """Keyword number ``rank`` of each photo: its background colour, its shape, a tricky one for the first photos, then vocabulary."""
    design_kw = np.array([[bg, shape] for bg, shape, _ in designs], dtype=object)
    vocab_index = (photo_index * 7 + rank - 2) % len(VOCABULARY)
    generic = np.array(VOCABULARY, dtype=object)[vocab_index]
    early = rank < 2
    generic[early] = design_kw[photo_index[early], rank[early]]
    tricky = (rank == 2) & (photo_index < len(TRICKY_KEYWORDS))
    generic[tricky] = np.array(TRICKY_KEYWORDS, dtype=object)[photo_index[tricky]]
    return pa.array(generic, pa.string())


def _row_positions(counts: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Photo index and rank within the photo of rows ``start..stop`` of a per-photo document."""
    offsets = np.concatenate([[0], np.cumsum(counts)])
    rows = np.arange(start, stop)
    photo_index = np.searchsorted(offsets, rows, side="right") - 1
    return photo_index, rows - offsets[photo_index]


def _write_keywords(writer: _DocumentWriter, rng, photo_ids, designs, counts: np.ndarray, release_version: str) -> None:
    """Keyword rows; AI confidences (0-100, DOCS.md) are at least 40 from 1.3.0 on (CHANGELOG.md)."""
    floor = 40 if release_version >= "1.3.0" else 20
    for start, stop in _chunks(int(counts.sum())):
        photo_index, rank = _row_positions(counts, start, stop)
        n = stop - start
        keyword = _keyword_of(photo_index, rank, designs)
        stray = pa.array(rng.random(n) < 0.02)
        keyword = pc.if_else(stray, pc.binary_join_element_wise(keyword, pa.scalar(" "), pa.scalar("")), keyword)
        by_user = (rank < 2) | (rng.random(n) < 0.15) | ((rank == 2) & (photo_index < len(TRICKY_KEYWORDS)))
        source = rng.choice(["photographer", "admin", "unknown"], size=n, p=[0.8, 0.15, 0.05])
        writer.write(
            {
                "photo_id": pa.array(photo_ids[photo_index], pa.string()),
                "keyword": keyword,
                "ai_service_1_confidence": pa.array(np.round(rng.uniform(floor, 100, n), 6), mask=rng.random(n) < 0.3),
                "ai_service_2_confidence": pa.array(np.round(rng.uniform(floor, 100, n), 6), mask=rng.random(n) < 0.5),
                "suggested_by_user": pa.array(np.where(by_user, "t", "f")),
                "user_suggestion_source": pa.array(np.where(by_user, source, None), pa.string()),
                "suggested_by_ai_service_3": pa.array(np.where(rng.random(n) < 0.4, "t", "f")),
                "confirmed_by_ai_service_3": pa.array(np.where(rng.random(n) < 0.2, "t", "f")),
            }
        )
    writer.close()


def _write_collections(writer: _DocumentWriter, rng, text_rng, photo_ids, total: int) -> None:
    """Photo-collection rows: user collections with numeric ids, and topics (about 1 in 10) with Unsplash-style ids."""
    titles = [w.title() for w in _NOUNS] + [f"{a.title()} {n}" for a in _ADJECTIVES for n in _NOUNS[:20]]
    collection_count = max(1, total // 10)
    numbered = (np.arange(collection_count) + 1_000_000).astype(str).astype(object)
    topic = text_rng.random(collection_count) < 0.1
    ids = np.where(topic, _ids(text_rng, collection_count), numbered)
    names = _free_text(text_rng, [titles[k % len(titles)] for k in range(collection_count)], TRICKY_TEXTS).to_numpy(
        zero_copy_only=False
    )
    for start, stop in _chunks(total):
        n = stop - start
        collection = rng.integers(0, collection_count, size=n)
        writer.write(
            {
                "photo_id": pa.array(photo_ids[rng.integers(0, len(photo_ids), size=n)], pa.string()),
                "collection_id": pa.array(ids[collection], pa.string()),
                "collection_title": pa.array(names[collection], pa.string()),
                "photo_collected_at": _timestamps(rng, n),
                "collection_type": pa.array(np.where(topic[collection], "topic", "collection")),
            }
        )
    writer.close()


def _write_conversions(
    writer: _DocumentWriter, rng, text_rng, photo_ids, designs, keyword_counts: np.ndarray, total: int
) -> None:
    """Downloads after a search (the only conversion type, DOCS.md): each pairs a photo with one of its own keywords."""
    users = _ids(rng, max(1, total // 20), length=32)
    with_keywords = np.flatnonzero(keyword_counts)
    searches = np.array(TRICKY_SEARCHES, dtype=object)
    for start, stop in _chunks(total):
        n = stop - start
        if len(with_keywords):
            photo_index = rng.choice(with_keywords, size=n)
            rank = (rng.random(n) * keyword_counts[photo_index]).astype(np.int64)
            keyword = _keyword_of(photo_index, rank, designs).to_numpy(zero_copy_only=False)
        else:
            photo_index = rng.integers(0, len(photo_ids), size=n)
            keyword = np.array(VOCABULARY, dtype=object)[rng.integers(0, len(VOCABULARY), size=n)]
        typed = text_rng.random(n) < _TRICKY_SHARE
        keyword[typed] = searches[text_rng.integers(0, len(searches), size=int(typed.sum()))]
        if start == 0:
            keyword[: len(searches)] = searches[:n]
        writer.write(
            {
                "converted_at": _timestamps(rng, n),
                "conversion_type": pa.array(np.full(n, "download")),
                "keyword": pa.array(keyword, pa.string()),
                "photo_id": pa.array(photo_ids[photo_index], pa.string()),
                "anonymous_user_id": pa.array(users[rng.integers(0, len(users), size=n)], pa.string()),
                "conversion_country": pa.array(
                    np.array(_COUNTRIES, dtype=object)[rng.integers(0, len(_COUNTRIES), size=n)], pa.string()
                ),
                "device_type": pa.array(rng.choice(["desktop", "mobile", "tablet"], size=n, p=[0.6, 0.35, 0.05])),
                "search_orientation_filter": pa.array(
                    rng.choice(["all", "landscape", "portrait"], size=n, p=[0.8, 0.12, 0.08])
                ),
                "search_ordering": pa.array(rng.choice(["popular", "recent"], size=n, p=[0.9, 0.1])),
            }
        )
    writer.close()


def _write_colors(writer: _DocumentWriter, rng, photo_ids, designs, total: int) -> None:
    """Colour rows: background (largest coverage, in percent), accent, then other palette colours; shuffled."""
    names = list(PALETTE)
    counts = _spread(rng, total, len(photo_ids), len(names))
    photo_index, rank = _row_positions(counts, 0, total)
    chosen = []
    for i, r in zip(photo_index, rank):
        bg, _, accent = designs[i]
        order = [bg, accent] + [c for c in names if c not in (bg, accent)]
        chosen.append(order[r])
    coverage = np.round(
        np.where(rank == 0, 60.0, np.where(rank == 1, 25.0, 10.0 / (rank + 1))) + rng.uniform(0, 1, total), 4
    )
    rgb = np.array([PALETTE[c] for c in chosen], dtype=np.int64).reshape(-1, 3)
    order = rng.permutation(total)
    table = {
        "photo_id": pa.array(photo_ids[photo_index], pa.string()),
        "hex": pa.array([f"{r:02X}{g:02X}{b:02X}" for r, g, b in rgb]),
        "red": pa.array(rgb[:, 0]),
        "green": pa.array(rgb[:, 1]),
        "blue": pa.array(rgb[:, 2]),
        "keyword": pa.array(chosen, pa.string()),
        "ai_coverage": pa.array(coverage),
        "ai_score": pa.array(np.round(rng.uniform(0, 1, total), 6)),
    }
    writer.write({k: v.take(pa.array(order)) for k, v in table.items()})
    writer.close()


def _write_docs(out: Path, release_version: str) -> None:
    (out / "README.md").write_text(
        f"# Synthetic Unsplash Lite {release_version} release\n\nWritten by `image-search sample`; every value is made up.\n",
        encoding="utf-8",
    )
    (out / "DOCS.md").write_text(
        "# Columns\n\n"
        + "".join(f"## {doc}\n\n{', '.join(cols)}\n\n" for doc, cols in columns_of(release_version).items()),
        encoding="utf-8",
    )
    (out / "TERMS.md").write_text("Synthetic data: no terms beyond the project's licence.\n", encoding="utf-8")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``image-search sample``."""
    parser = sub.add_parser("sample", help="write a synthetic release the way Unsplash Lite is published")
    parser.add_argument("dir", type=Path, help="folder to write the release into")
    parser.add_argument("--photos", type=int, default=100, help="photos (default 100)")
    parser.add_argument("--keywords", type=int, help="keyword rows (default 20 per photo)")
    parser.add_argument("--collections", type=int, help="collection rows (default 3 per photo)")
    parser.add_argument("--conversions", type=int, help="conversion rows (default 10 per photo)")
    parser.add_argument("--colors", type=int, help="colour rows (default 3 per photo)")
    parser.add_argument("--duplicates", type=int, default=0, help="near-copies of other photos to plant (default 0)")
    parser.add_argument(
        "--release-version",
        default=LATEST_RELEASE,
        choices=RELEASES,
        help=f"the release whose documents, columns and file names to write (default {LATEST_RELEASE})",
    )
    parser.add_argument("--parts", type=int, default=1, help="files per document, each with the header (default 1)")
    parser.add_argument("--image-base-url", help="serve images from this URL instead of file:// URLs")
    parser.add_argument("--no-images", dest="images", action="store_false", help="write the documents only")
    parser.add_argument(
        "--models", action="store_true", help="also write tiny random CLIP and text models under DIR/models"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    summary = write_release(
        args.dir,
        photos=args.photos,
        keywords=args.keywords,
        collections=args.collections,
        conversions=args.conversions,
        colors=args.colors,
        duplicates=args.duplicates,
        image_base_url=args.image_base_url,
        images=args.images,
        models=args.models,
        seed=args.seed,
        release_version=args.release_version,
        parts=args.parts,
    )
    counts = {doc: summary[doc] for doc in DOCUMENTS}
    counts["release_version"] = summary["release_version"]
    counts["duplicates"] = len(summary["duplicates"])
    print(
        json.dumps(
            {
                "dir": str(args.dir),
                **counts,
                "models_dir": summary.get("models_dir"),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )
    return 0
