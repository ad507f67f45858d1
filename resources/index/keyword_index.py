"""A persistent BM25 keyword index over each photo's ``describe`` and descriptions (``bm25s``).

Built with each search-index build and numbered like its documents, so a filter (a mask
over documents) applies inside the keyword search. Tokens are lower-cased Unicode words,
without stop words or stemming: queries come in many languages.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import bm25s
import numpy as np

_TOKEN = re.compile(r"\w+", re.UNICODE)

#: The catalog columns whose words are indexed.
TEXT_FIELDS = ("describe", "photo_description", "ai_description")


def tokenize(text: str | None) -> list[str]:
    """The index's tokens of ``text``: lower-cased runs of word characters."""
    return _TOKEN.findall(text.lower()) if text else []


def document_text(row: dict) -> str:
    """The text one document is indexed by: its keywords and both descriptions."""
    return " ".join(v for f in TEXT_FIELDS if isinstance(v := row.get(f), str))


class KeywordIndex:
    """BM25 over a fixed list of documents, queried with an optional mask of allowed rows."""

    def __init__(self, retriever: bm25s.BM25 | None, size: int):
        self._retriever = retriever
        self.size = size

    @classmethod
    def build(cls, texts: Iterable[str]) -> "KeywordIndex":
        """Index ``texts`` (one per document, in document order)."""
        corpus = [tokenize(t) for t in texts]
        if not any(corpus):
            return cls(None, len(corpus))
        retriever = bm25s.BM25()
        retriever.index(corpus, show_progress=False)
        return cls(retriever, len(corpus))

    def save(self, directory: Path) -> None:
        """Write the index into ``directory`` (created); an index of empty texts writes only its size."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "size.txt").write_text(str(self.size))
        if self._retriever is not None:
            self._retriever.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: Path) -> "KeywordIndex":
        """Open an index written by :meth:`save`, memory-mapping its arrays."""
        size = int((directory / "size.txt").read_text())
        if not (directory / "params.index.json").exists():
            return cls(None, size)
        retriever = bm25s.BM25.load(str(directory), mmap=True, show_progress=False)
        return cls(retriever, size)

    def containing(self, text: str) -> np.ndarray:
        """The boolean mask of documents that carry any token of ``text``."""
        found = np.zeros(self.size, dtype=bool)
        if self._retriever is None:
            return found
        tokens = [t for t in tokenize(text) if t in self._retriever.vocab_dict]
        if tokens:
            found |= np.asarray(self._retriever.get_scores(tokens)) > 0
        return found

    def search(self, text: str, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows and BM25 scores of the ``k`` best matches of ``text``, best first.

        Only documents that share a token with ``text`` (and pass ``mask`` when given) come
        back, so fewer than ``k`` rows is a normal answer.
        """
        empty = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
        if self._retriever is None or k <= 0 or self.size == 0:
            return empty
        vocab = self._retriever.vocab_dict
        tokens = [t for t in tokenize(text) if t in vocab]
        if not tokens:
            return empty
        weights = None if mask is None else mask.astype(np.float32)
        rows, scores = self._retriever.retrieve(
            [tokens], k=min(k, self.size), show_progress=False, n_threads=1, weight_mask=weights
        )
        rows, scores = rows[0].astype(np.int64), scores[0].astype(np.float32)
        keep = scores > 0
        return rows[keep], scores[keep]
