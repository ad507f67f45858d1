"""Each document of a synthetic release: its rows, and its files as Unsplash Lite publishes them.

A document is written in ``parts`` files, each with the header line, in the release's
columns, its free-text fields quoted by the CSV rules (:class:`DocumentWriter`); the rows
come from :mod:`image_search.sample_values`, in chunks so that a full-size release fits in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from image_search.sample_values import (
    ADJECTIVES,
    CAMERAS,
    COUNTRIES,
    FIRST_NAMES,
    LAST_NAMES,
    NOUNS,
    PALETTE,
    PLACES,
    TRICKY_KEYWORDS,
    TRICKY_SEARCHES,
    TRICKY_TEXTS,
    VOCABULARY,
    free_text,
    random_ids,
    spread,
    timestamps,
)
from resources.release.lite_format import columns_of
from resources.storage.files import Staged

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


_TRICKY_SHARE = 0.002


_CHUNK_ROWS = 500_000


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


class DocumentWriter:
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
        """Finish the document: every remaining part file is written (with its header) and committed."""
        while self._part < len(self.paths) - 1:
            self._next_part()
        self._file.close()
        self._staged.commit()


def _photo_sizes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Widths and heights of ``n`` photos: 60% landscape, 30% portrait, 10% (nearly) square, as on Unsplash."""
    kind = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    long_side = rng.choice([3000, 4000, 4912, 5472, 6000, 6720], size=n)
    short_side = (long_side * rng.choice([2 / 3, 3 / 4, 9 / 16, 4 / 5], size=n)).astype(np.int64)
    width = np.where(kind == 0, long_side, np.where(kind == 1, short_side, long_side))
    height = np.where(kind == 0, short_side, np.where(kind == 1, long_side, long_side - rng.integers(0, 20, size=n)))
    return width, height


def _where(mask, values) -> list:
    """``values`` where ``mask`` holds, missing (``None``) elsewhere."""
    return [v if m else None for m, v in zip(mask, values)]


def _exif_columns(rng: np.random.Generator, camera: np.ndarray) -> dict[str, pa.Array]:
    """The EXIF columns of photos taken with ``camera`` (an index into :data:`CAMERAS`; -1: no EXIF)."""
    n = len(camera)
    has_camera = camera >= 0
    return {
        "exif_camera_make": pa.array(_where(has_camera, [CAMERAS[c][0] for c in camera])),
        "exif_camera_model": pa.array(_where(has_camera, [CAMERAS[c][1] for c in camera])),
        "exif_iso": pa.array(_where(has_camera, rng.choice([100, 200, 400, 800, 1600], size=n).tolist()), pa.int64()),
        "exif_aperture_value": pa.array(_where(has_camera, rng.choice(["1.8", "2.8", "4.0", "5.6", "8.0"], size=n))),
        "exif_focal_length": pa.array(_where(has_camera, rng.choice(["24.0", "35.0", "50.0", "85.0"], size=n))),
        "exif_exposure_time": pa.array(_where(has_camera, rng.choice(["1/60", "1/250", "1/1000", "2"], size=n))),
    }


def write_photos(
    writer: DocumentWriter, rng, text_rng, photo_ids, designs, images_dir: Path, image_base_url: str | None
) -> None:
    """Photo rows: sizes, photographers, places, cameras and descriptions drawn per photo, its image URL."""
    n = len(photo_ids)
    width, height = _photo_sizes(rng, n)
    if image_base_url:
        base = image_base_url.rstrip("/")
        image_urls = [f"{base}/{pid}.jpg" for pid in photo_ids]
    else:
        image_urls = [(images_dir / f"{pid}.jpg").resolve().as_uri() for pid in photo_ids]
    first = rng.choice(FIRST_NAMES, size=n)
    last = rng.choice(LAST_NAMES, size=n)
    place = rng.integers(-3, len(PLACES), size=n)  # negative: no location
    camera = rng.integers(-1, len(CAMERAS), size=n)  # -1: no EXIF
    landmark = rng.random(n) < 0.1

    has_place = place >= 0
    place_names = [PLACES[p][0] if p >= 0 else None for p in place]
    descriptions = _where(rng.random(n) < 0.6, [f"{a} {s} shapes on {bg}" for bg, s, a in designs])
    writer.write(
        {
            "photo_id": pa.array(photo_ids, pa.string()),
            "photo_url": pa.array([f"https://unsplash.com/photos/{pid}" for pid in photo_ids]),
            "photo_image_url": pa.array(image_urls),
            "photo_submitted_at": timestamps(rng, n),
            "photo_featured": pa.array(np.where(rng.random(n) < 0.9, "t", "f")),
            "photo_width": pa.array(width),
            "photo_height": pa.array(height),
            "photo_aspect_ratio": pa.array(np.round(width / height, 2)),
            "photo_description": free_text(text_rng, descriptions, TRICKY_TEXTS),
            "photographer_username": pa.array(
                [f"{f.lower()}{s.lower()}{k}" for f, s, k in zip(first, last, rng.integers(1, 999, size=n))]
            ),
            "photographer_first_name": pa.array(first),
            "photographer_last_name": pa.array(_where(rng.random(n) < 0.95, last)),
            **_exif_columns(rng, camera),
            "photo_location_name": free_text(text_rng, place_names, TRICKY_TEXTS),
            "photo_location_latitude": pa.array(_where(has_place, [PLACES[p][3] for p in place]), pa.float64()),
            "photo_location_longitude": pa.array(_where(has_place, [PLACES[p][4] for p in place]), pa.float64()),
            "photo_location_country": pa.array(_where(has_place, [PLACES[p][1] for p in place])),
            "photo_location_city": pa.array(_where(has_place, [PLACES[p][2] for p in place])),
            "stats_views": pa.array(rng.integers(100, 5_000_000, size=n)),
            "stats_downloads": pa.array(rng.integers(0, 50_000, size=n)),
            "ai_description": pa.array(
                [f"{_article(a)} {a} {s} on {_article(bg)} {bg} background" for bg, s, a in designs]
            ),
            "ai_primary_landmark_name": pa.array(_where(landmark, ["Eiffel Tower"] * n)),
            "ai_primary_landmark_latitude": pa.array(_where(landmark, [48.8584] * n), pa.float64()),
            "ai_primary_landmark_longitude": pa.array(_where(landmark, [2.2945] * n), pa.float64()),
            "ai_primary_landmark_confidence": pa.array(_where(landmark, [f"{c:.6f}" for c in rng.uniform(0.5, 1, n)])),
            # A 4 x 3 component BlurHash: size flag "L", then 27 base-83 digits (blurha.sh).
            "blur_hash": pa.array(
                ["L" + "".join(row) for row in _BASE83[text_rng.integers(0, len(_BASE83), size=(n, 27))]]
            ),
        }
    )
    writer.close()


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


def write_keywords(writer: DocumentWriter, rng, photo_ids, designs, counts: np.ndarray, release_version: str) -> None:
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


def write_collections(writer: DocumentWriter, rng, text_rng, photo_ids, total: int) -> None:
    """Photo-collection rows: user collections with numeric ids, and topics (about 1 in 10) with Unsplash-style ids."""
    titles = [w.title() for w in NOUNS] + [f"{a.title()} {n}" for a in ADJECTIVES for n in NOUNS[:20]]
    collection_count = max(1, total // 10)
    numbered = (np.arange(collection_count) + 1_000_000).astype(str).astype(object)
    topic = text_rng.random(collection_count) < 0.1
    ids = np.where(topic, random_ids(text_rng, collection_count), numbered)
    names = free_text(text_rng, [titles[k % len(titles)] for k in range(collection_count)], TRICKY_TEXTS).to_numpy(
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
                "photo_collected_at": timestamps(rng, n),
                "collection_type": pa.array(np.where(topic[collection], "topic", "collection")),
            }
        )
    writer.close()


def write_conversions(
    writer: DocumentWriter, rng, text_rng, photo_ids, designs, keyword_counts: np.ndarray, total: int
) -> None:
    """Downloads after a search (the only conversion type, DOCS.md): each pairs a photo with one of its own keywords."""
    users = random_ids(rng, max(1, total // 20), length=32)
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
                "converted_at": timestamps(rng, n),
                "conversion_type": pa.array(np.full(n, "download")),
                "keyword": pa.array(keyword, pa.string()),
                "photo_id": pa.array(photo_ids[photo_index], pa.string()),
                "anonymous_user_id": pa.array(users[rng.integers(0, len(users), size=n)], pa.string()),
                "conversion_country": pa.array(
                    np.array(COUNTRIES, dtype=object)[rng.integers(0, len(COUNTRIES), size=n)], pa.string()
                ),
                "device_type": pa.array(rng.choice(["desktop", "mobile", "tablet"], size=n, p=[0.6, 0.35, 0.05])),
                "search_orientation_filter": pa.array(
                    rng.choice(["all", "landscape", "portrait"], size=n, p=[0.8, 0.12, 0.08])
                ),
                "search_ordering": pa.array(rng.choice(["popular", "recent"], size=n, p=[0.9, 0.1])),
            }
        )
    writer.close()


def write_colors(writer: DocumentWriter, rng, photo_ids, designs, total: int) -> None:
    """Colour rows: background (largest coverage, in percent), accent, then other palette colours; shuffled."""
    names = list(PALETTE)
    counts = spread(rng, total, len(photo_ids), len(names))
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
