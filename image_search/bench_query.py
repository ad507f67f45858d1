"""``image-search bench query``: query latency of the local backend, exact and approximate.

On synthetic documents with clustered unit vectors (real CLIP vectors cluster; isotropic
noise would be a needlessly hard case for approximate search), in one process:

- publishing a build of ``--docs`` documents (exact only, as below ``IMAGE_SEARCH_ANN_MIN_DOCS``);
- kNN alone: the baseline (plain float32 numpy ``vectors @ q`` and a full ``argsort``), the
  backend's exact search, and its approximate index (built for the run whatever the size);
  recall@10 of the approximate answers against exact ones;
- text queries end to end (encode with the configured text model, kNN, stored fields)
  through :class:`search_app.service.SearchService`, when the models can be loaded.

Figures are p50/p95 over ``--queries`` queries after a warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

WORDS = ("mountain", "sea", "city", "forest", "dog", "cat", "flower", "car", "night", "snow", "beach", "portrait")
COLORS = ("red", "green", "blue", "yellow", "black", "white")
COUNTRIES = ("Spain", "Japan", "Kenya", "Peru", None)
QUERIES = ("a dog on the beach", "montañas nevadas", "城市夜景", "red flowers", "a cat sleeping", "forest in fog")


def clustered_vectors(n: int, dim: int = 512, clusters: int = 256, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    """``n`` unit float32 vectors around ``clusters`` random centres (cosine to the centre about 0.85)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        m = min(step, n - start)
        noise = rng.standard_normal((m, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
        block = centres[rng.integers(0, clusters, m)] + noise
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + m] = block
    return out


def synthetic_documents(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` documents with every stored field, varied enough for keyword search and each filter."""
    from resources.backends.base import ORIENTATIONS

    rng = np.random.default_rng(seed)
    ids = np.char.add("photo", np.arange(n).astype(str))
    picked = np.array(WORDS)[rng.integers(0, len(WORDS), (n, 3))]
    describe = np.char.add(np.char.add(np.char.add(picked[:, 0], " "), np.char.add(picked[:, 1], " ")), picked[:, 2])
    colors = np.array(COLORS)
    return pd.DataFrame(
        {
            "photo_id": ids,
            "describe": describe,
            "photo_description": None,
            "ai_description": np.char.add("a photo of a ", picked[:, 0]),
            "photo_image_url": np.char.add("https://images.unsplash.com/", ids),
            "photo_url": np.char.add("https://unsplash.com/photos/", ids),
            "photographer_name": "Ada Example",
            "photographer_username": "ada",
            "orientation": np.array(ORIENTATIONS)[rng.integers(0, 3, n)],
            "dominant_color": colors[rng.integers(0, len(colors), n)],
            "colors": colors[rng.integers(0, len(colors), (n, 2))].tolist(),
            "photo_location_country": np.array(COUNTRIES, dtype=object)[rng.integers(0, len(COUNTRIES), n)],
            "photo_submitted_at": pd.Timestamp("2018-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 3000, n), unit="D"),
        }
    )
