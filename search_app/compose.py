"""The written form of a composed query, as people type it on the command line.

An expression is a sum of terms, each words, an indexed photo or an image file, each with an
optional weight::

    "beach" - "people"
    photo:Ab3xYz "at night"
    beach at sunset - 0.5*people + 2*image:~/me.jpg

- words: quoted ("..." or '...') or bare; bare words run together into one phrase until an
  operator or another term, and a hyphen inside a word (``t-shirt``) is part of the word;
- ``photo:ID`` is an indexed photo (its stored vector), ``image:PATH`` an image file
  (``image:"my photo.jpg"`` for a path with spaces);
- ``+`` and ``-`` where a term starts are operators (a term with none is added), ``N*``
  before a term weighs it (a positive number, default 1).

A term given on its own (``--plus`` / ``--minus``) takes the same forms, except that its
words need no quotes: the whole value is the words.

Every mistake is a one-line :class:`ImageSearchError` that quotes the token at fault.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Literal

from resources.errors import ImageSearchError
from search_app.service import QueryPart, load_query_image

Kind = Literal["words", "photo", "image"]

_WEIGHT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*\*\s*")
_PREFIX = re.compile(r"(photo|image):")
_QUOTES = "\"'"


@dataclass(frozen=True)
class Term:
    """One parsed term: what it names, its signed weight, and the text it was read from."""

    kind: Kind
    value: str
    weight: float
    written: str

    def as_dict(self) -> dict[str, object]:
        """The term as JSON-ready values, keyed like :class:`QueryPart`'s fields."""
        key = {"words": "text", "photo": "photo_id", "image": "image"}[self.kind]
        return {key: self.value, "weight": self.weight}


class _Reader:
    """A cursor over the expression that reads one token at a time."""

    def __init__(self, text: str):
        self.text = text
        self.at = 0

    def skip_space(self) -> None:
        while self.at < len(self.text) and self.text[self.at].isspace():
            self.at += 1

    def done(self) -> bool:
        self.skip_space()
        return self.at >= len(self.text)

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def snippet(self, start: int) -> str:
        """The token starting at ``start``, for messages."""
        end = start
        while end < len(self.text) and not self.text[end].isspace():
            end += 1
        return self.text[start:end] or self.text[start:]

    def fail(self, start: int, what: str) -> ImageSearchError:
        return ImageSearchError(f"cannot read {self.snippet(start)!r} at position {start + 1} of the query: {what}")

    def quoted(self) -> str:
        """The text between a pair of quotes starting here (the quote character escaped by a backslash)."""
        start, quote = self.at, self.text[self.at]
        self.at += 1
        out = []
        while self.at < len(self.text):
            char = self.text[self.at]
            if char == "\\" and self.at + 1 < len(self.text) and self.text[self.at + 1] in (quote, "\\"):
                out.append(self.text[self.at + 1])
                self.at += 2
                continue
            self.at += 1
            if char == quote:
                return "".join(out)
            out.append(char)
        raise ImageSearchError(f"the quote {quote} at position {start + 1} of the query is never closed: close it")

    def bare(self) -> str:
        """A run of characters up to whitespace."""
        start = self.at
        while self.at < len(self.text) and not self.text[self.at].isspace():
            self.at += 1
        return self.text[start : self.at]

    def at_term_boundary(self) -> bool:
        """True where bare words stop: the end, an operator, a quote, a weight or a prefixed term."""
        if self.done():
            return True
        rest = self.text[self.at :]
        return rest[0] in "+-" or rest[0] in _QUOTES or bool(_WEIGHT.match(rest)) or bool(_PREFIX.match(rest))


def _weight(written: str, start: int, reader: _Reader) -> float:
    value = float(written)
    if not math.isfinite(value) or value == 0:
        raise reader.fail(start, "a weight must be a finite number other than 0")
    return value


def _term(reader: _Reader, sign: float, *, whole_words: bool) -> Term:
    """The term at the reader's position (after its sign): ``[N*]`` then words, photo:ID or image:PATH."""
    reader.skip_space()
    start = reader.at
    weight = 1.0
    match = _WEIGHT.match(reader.text, reader.at)
    if match:
        weight = _weight(match.group(0).rstrip(" *\t"), start, reader)
        reader.at = match.end()
    body = reader.at
    if reader.done():
        raise reader.fail(start, "a term is missing here: add words, photo:ID or image:PATH")
    prefix = _PREFIX.match(reader.text, reader.at)
    if prefix:
        reader.at = prefix.end()
        value = reader.quoted() if reader.peek() and reader.peek() in _QUOTES else reader.bare()
        kind: Kind = prefix.group(1)  # type: ignore[assignment]
        if not value.strip():
            raise reader.fail(body, f"give a {'photo id' if kind == 'photo' else 'file path'} after {kind}:")
    elif whole_words:
        kind, value = "words", reader.text[reader.at :].strip()
        reader.at = len(reader.text)
    elif reader.peek() in _QUOTES:
        kind, value = "words", reader.quoted()
        if not value.strip():
            raise reader.fail(body, "the quotes hold no words: put words between them or drop them")
    else:
        kind, words = "words", [reader.bare()]
        while not reader.at_term_boundary():
            words.append(reader.bare())
        value = " ".join(words)
    return Term(kind, value, sign * weight, reader.text[start : reader.at].strip())


def parse_expression(expression: str) -> list[Term]:
    """The terms of an expression such as ``"beach" - "people" + 0.5*photo:abc``."""
    reader = _Reader(expression)
    if reader.done():
        raise ImageSearchError("the composed query is empty: give words, photo:ID or image:PATH")
    terms: list[Term] = []
    while not reader.done():
        start, sign = reader.at, 1.0
        if reader.peek() in "+-":
            sign = -1.0 if reader.peek() == "-" else 1.0
            reader.at += 1
            reader.skip_space()
            if reader.peek() in ("+", "-"):
                raise reader.fail(start, "two signs in a row: keep one")
            if reader.done():
                raise reader.fail(start, "the query ends after this sign: add words, photo:ID or image:PATH after it")
        terms.append(_term(reader, sign, whole_words=False))
    return terms


def parse_term(written: str, sign: float = 1.0) -> Term:
    """One ``--plus``/``--minus`` value: ``[N*]`` then words (no quotes needed), photo:ID or image:PATH."""
    reader = _Reader(written)
    if reader.done():
        raise ImageSearchError("a --plus or --minus value is empty: give words, photo:ID or image:PATH")
    return _term(reader, sign, whole_words=True)


def query_parts(terms: list[Term]) -> list[QueryPart]:
    """The service's parts for ``terms``; an image term's file is read and checked here, as an upload would be."""
    parts = []
    for term in terms:
        if term.kind == "words":
            parts.append(QueryPart(text=term.value, weight=term.weight))
        elif term.kind == "photo":
            parts.append(QueryPart(photo_id=term.value, weight=term.weight))
        else:
            parts.append(QueryPart(image=load_query_image(os.path.expanduser(term.value)), weight=term.weight))
    return parts
