"""Shared helpers for the tests over the fake: a corpus with every stored field, build names, a fake clock.

Tests import them from here, never from another test file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from resources.config import Settings
from resources.index.base import BuildInfo
from resources.index.elasticsearch import ElasticsearchBackend
from tests.es_fake.server import FakeSearchServer

DIM = 16


N = 60


WORDS = ["mountain", "lake", "forest", "city", "street", "beach", "dog", "cat", "snow", "night"]


COUNTRIES = ["France", "Japan", "Brazil", None]


COLORS = ["red", "blue", "green", "black", "white"]


def corpus(n: int = N, dim: int = DIM, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """``n`` catalog rows with the stored fields and unit vectors; every filter value occurs often."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = []
    for i in range(n):
        words = [WORDS[i % len(WORDS)], WORDS[(i * 3 + 1) % len(WORDS)]]
        rows.append(
            {
                "photo_id": f"p{i:05d}",
                "describe": " ".join(sorted(set(words))),
                "photo_description": f"A photo of a {WORDS[(i * 7) % len(WORDS)]}" if i % 4 else None,
                "ai_description": f"{WORDS[(i * 5 + 2) % len(WORDS)]} in daylight",
                "photo_image_url": f"https://images.example/{i}",
                "photo_url": f"https://unsplash.example/photos/{i}",
                "photographer_name": f"Photographer {i % 7}",
                "photographer_username": f"user{i % 7}",
                "orientation": ("landscape", "portrait", "square")[i % 3],
                "dominant_color": COLORS[i % 5],
                "colors": [COLORS[i % 5], COLORS[(i + 2) % 5]],
                "photo_location_country": COUNTRIES[i % 4],
                "photo_submitted_at": pd.Timestamp("2020-01-01", tz="UTC") + pd.Timedelta(days=11 * i, hours=i % 24),
            }
        )
    return pd.DataFrame(rows), vectors


def builds(fake: FakeSearchServer) -> set[str]:
    """The fake's indices but the builds' lock index (resources/index/es_publish.py), which stays for the next build."""
    return {name for name in fake.indices if not name.endswith("_build_lock")}


def build_info(name: str = "test") -> BuildInfo:
    """The build record of a tiny-model build named ``name``."""
    return BuildInfo(
        image_model="tiny-clip", text_model="tiny-text", dim=DIM, count=0, built_at="2026-11-26T00:00:00Z", name=name
    )


def probe_at(vectors: np.ndarray, target: int, cos: float) -> np.ndarray:
    """A unit vector at cosine ``cos`` to ``vectors[target]``."""
    rng = np.random.default_rng(1)
    v = vectors[target].astype(np.float64)
    u = rng.normal(size=v.shape)
    u -= (u @ v) * v
    u /= np.linalg.norm(u)
    return cos * v + np.sqrt(1 - cos**2) * u


class FakeTime:
    """A clock that moves only when the build sleeps: backoff is measured, never waited for."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def backend_for(fake: FakeSearchServer, time: FakeTime | None = None, **settings) -> ElasticsearchBackend:
    """A backend on ``fake``: its backoff measured on ``time`` when given, else not waited for at all."""
    backend = ElasticsearchBackend(Settings(es_url=fake.url, **settings))
    if time is not None:
        backend.clock, backend.sleep = time.clock, time.sleep
    else:
        backend.bulk_backoff_s = 0.0
    return backend
