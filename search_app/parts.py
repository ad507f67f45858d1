"""What a query is made of: the parts of a composed query and a query image made safe to encode.

The CLI, the page and the HTTP API hand these to :class:`search_app.service.SearchService`;
nothing here loads a model or reads an index.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from resources.errors import ImageSearchError, NotFoundError, TooLargeError
from resources.images.pictures import decoded_rgb, open_image

#: The largest query image accepted from a file or an upload (the CLI, the HTTP API); the
#: pixel cap is :data:`resources.images.pictures.MAX_PIXELS`, read from the header before decoding.
MAX_QUERY_IMAGE_BYTES = 50 * 1024 * 1024
#: The most parts one composed query may have: enough for any phrasing a person writes,
#: few enough that a caller cannot make one query encode hundreds of images.
MAX_PARTS = 16
#: The shape of a photo id the catalog accepts: Unsplash's letters, digits, ``_`` and ``-``.
PHOTO_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


def check_photo_id(photo_id: str) -> str:
    """``photo_id`` when it has a photo id's shape; otherwise a one-line :class:`NotFoundError`.

    The API, the CLI and the page all search through the service, which checks every id
    here first, so no ``..``, slash or control character ever reaches an index or a cluster URL.
    """
    if not isinstance(photo_id, str) or not PHOTO_ID.fullmatch(photo_id):
        shown = repr(photo_id) if len(repr(photo_id)) <= 80 else repr(photo_id)[:77] + "..."
        raise NotFoundError(
            f"photo id {shown} is not in the index: ids are letters, digits, _ and - only; use a photo_id from a search result"
        )
    return photo_id


@dataclass(frozen=True)
class QueryPart:
    """One part of a composed query: exactly one of words, an image or an indexed photo, with a weight.

    A positive ``weight`` pulls results towards the part, a negative one pushes them away.
    """

    text: str | None = None
    image: Image.Image | bytes | None = None
    photo_id: str | None = None
    weight: float = 1.0

    def label(self) -> str:
        """How messages name the part: ``words 'beach'``, ``photo 'abc'`` or ``an image``."""
        if self.text is not None:
            return f"words {self.text!r}"
        if self.photo_id is not None:
            return f"photo {self.photo_id!r}"
        return "an image"


def check_parts(parts: list[QueryPart]) -> list[QueryPart]:
    """``parts`` as a list when they make a composition; otherwise a one-line error naming the bad part."""
    parts = list(parts)
    if not parts:
        raise ImageSearchError("the composed query has no parts: give words, an image or a photo to search for")
    if len(parts) > MAX_PARTS:
        raise ImageSearchError(f"the composed query has {len(parts)} parts: use at most {MAX_PARTS}")
    for number, part in enumerate(parts, start=1):
        given = sum(v is not None for v in (part.text, part.image, part.photo_id))
        if given != 1:
            raise ImageSearchError(
                f"part {number} gives {given} of words, image and photo id: give exactly one per part"
            )
        for name, value in (("words", part.text), ("photo id", part.photo_id)):
            if value is not None and not isinstance(value, str):
                raise ImageSearchError(f"part {number} gives its {name} as {type(value).__name__}: give a string")
        if part.text is not None and not part.text.strip():
            raise ImageSearchError(f"part {number} has empty words: type some words or drop the part")
        if part.image is not None and not isinstance(part.image, (Image.Image, bytes, bytearray, memoryview)):
            raise ImageSearchError(
                f"part {number} has an image of type {type(part.image).__name__}: give a PIL image or the image's bytes"
            )
        if part.photo_id is not None and not part.photo_id.strip():
            raise ImageSearchError(f"part {number} has an empty photo id: use a photo_id from a search result")
        if part.photo_id is not None:
            try:
                check_photo_id(part.photo_id)
            except NotFoundError as exc:
                raise NotFoundError(f"part {number}: {exc}") from None
        weight = part.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)):
            raise ImageSearchError(f"part {number} ({part.label()}) has weight {weight!r}: give a number")
        if not np.isfinite(weight) or weight == 0:
            raise ImageSearchError(
                f"part {number} ({part.label()}) has weight {weight!r}: give a finite number other than 0"
            )
    if all(part.weight < 0 for part in parts):
        raise ImageSearchError(
            "the composed query has only negative parts: add words, an image or a photo to search for"
        )
    return parts


def load_query_image(image: Image.Image | bytes | str | os.PathLike, *, draft_to: int | None = None) -> Image.Image:
    """An RGB image from a PIL image, raw bytes or a file path; a bad one raises ImageSearchError.

    Bytes and files go through :func:`resources.images.pictures.decoded_rgb`, as downloaded photos
    do (a byte cap, JPEG, PNG or WebP only, a pixel cap read before decoding, a real decode,
    EXIF rotation, conversion to RGB), so an upload is never trusted. ``draft_to`` lets a
    large JPEG decode at reduced scale, to the size the model resizes to.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    label, data = _query_bytes(image)
    try:
        return decoded_rgb(data, draft_to=draft_to)
    except ImageSearchError as exc:
        raise type(exc)(f"cannot use {label} as a query: {exc}") from None


def check_query_image(image: Image.Image | bytes | str | os.PathLike) -> None:
    """Refuse a bad query image before any model loads: what :func:`load_query_image` checks without decoding.

    The file, the byte cap, the format and the pixel count its header declares.
    """
    if isinstance(image, Image.Image):
        return
    label, data = _query_bytes(image)
    try:
        open_image(data)
    except ImageSearchError as exc:
        raise type(exc)(f"cannot use {label} as a query: {exc}") from None


def _query_bytes(image: bytes | str | os.PathLike) -> tuple[str, bytes]:
    """How messages name the image, and its bytes, once the file is found and within the byte cap."""
    label = "the uploaded image"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        label = str(path)
        if not path.is_file():
            raise ImageSearchError(f"image file {path} not found: give the path of a JPEG, PNG or WebP file")
        if path.stat().st_size > MAX_QUERY_IMAGE_BYTES:
            raise TooLargeError(f"image file {path} is larger than 50 MB: give a smaller image")
        image = path.read_bytes()
    if len(image) > MAX_QUERY_IMAGE_BYTES:
        raise TooLargeError(f"{label} is larger than 50 MB: give a smaller image")
    return label, bytes(image)
