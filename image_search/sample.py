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

from image_search.sample_documents import (
    DocumentWriter,
    file_names,
    write_collections,
    write_colors,
    write_conversions,
    write_keywords,
    write_photos,
)
from image_search.sample_values import VOCABULARY, design, random_ids, spread, write_images
from resources.errors import ImageSearchError
from resources.release.lite_format import DOCUMENTS, LATEST_RELEASE, RELEASES, columns_of

#: File name of the planted near-duplicate pairs (original photo_id, copy photo_id).
PLANTED_DUPLICATES = "planted_duplicates.tsv"


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
    counts = _row_counts(photos, keywords, collections, conversions, colors, duplicates, parts, release_version)
    documents = columns_of(release_version)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    text_rng = np.random.default_rng([seed, 1])
    photo_ids = random_ids(rng, photos)
    design_of, originals = _planted(rng, photos, duplicates)
    designs = [design(int(d)) for d in design_of]

    def writer(document: str) -> DocumentWriter:
        return DocumentWriter(out, document, release_version, counts[document], parts)

    images_dir = out / "images"
    write_photos(writer("photos"), rng, text_rng, photo_ids, designs, images_dir, image_base_url)
    if images:
        images_dir.mkdir(exist_ok=True)
        write_images(images_dir, rng, photo_ids, designs, design_of, photos - duplicates)
    pairs = [(photo_ids[int(o)], photo_ids[photos - duplicates + k]) for k, o in enumerate(originals)]
    with open(out / PLANTED_DUPLICATES, "w", encoding="utf-8") as f:
        f.write("original_photo_id\tcopy_photo_id\n")
        f.writelines(f"{a}\t{b}\n" for a, b in pairs)

    keyword_counts = spread(rng, counts["keywords"], photos, 2 + len(VOCABULARY))
    write_keywords(writer("keywords"), rng, photo_ids, designs, keyword_counts, release_version)
    write_collections(writer("collections"), rng, text_rng, photo_ids, counts["collections"])
    write_conversions(writer("conversions"), rng, text_rng, photo_ids, designs, keyword_counts, counts["conversions"])
    if "colors" in documents:
        write_colors(writer("colors"), rng, photo_ids, designs, counts["colors"])
    _write_docs(out, release_version)

    summary = {
        **counts,
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


def _row_counts(
    photos: int,
    keywords: int | None,
    collections: int | None,
    conversions: int | None,
    colors: int | None,
    duplicates: int,
    parts: int,
    release_version: str,
) -> dict[str, int]:
    """The rows of each document, unset ones scaled with ``photos``; a one-line error for an impossible request."""
    if release_version not in RELEASES:
        raise ImageSearchError(f"--release-version {release_version} is not one of {', '.join(RELEASES)}")
    counts = {
        "photos": photos,
        "keywords": 20 * photos if keywords is None else keywords,
        "collections": 3 * photos if collections is None else collections,
        "conversions": 10 * photos if conversions is None else conversions,
        "colors": (3 * photos if colors is None else colors) if "colors" in columns_of(release_version) else 0,
    }
    for name, value in (*counts.items(), ("duplicates", duplicates)):
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
    return counts


def _planted(rng: np.random.Generator, photos: int, duplicates: int) -> tuple[np.ndarray, np.ndarray]:
    """Which design each photo has, and the originals of the planted copies.

    The last ``duplicates`` photos copy the design (and later the image) of an earlier one.
    """
    design_of = np.arange(photos)
    originals = (
        rng.choice(photos - duplicates, size=duplicates, replace=duplicates > photos - duplicates)
        if duplicates
        else np.array([], dtype=int)
    )
    design_of[photos - duplicates :] = originals
    return design_of, originals


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
