"""The embedded backend for real: files on disk, builds published and rolled back, searches answered."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.query import clustered_vectors, synthetic_documents
from resources.config import Settings
from resources.errors import ImageSearchError
from resources.index import open_backend
from resources.index.base import BuildInfo, Filters
from resources.index.local import IndexNotBuiltError, LocalBackend
from resources.index.local_build import SCREEN_MIN_DOCS, exact_top10

N = 600
DIM = 512


def _info(image_model: str = "img-model") -> BuildInfo:
    return BuildInfo(image_model=image_model, text_model="txt-model", dim=DIM, count=0, built_at="2026-01-01", name="")


@pytest.fixture()
def data():
    return synthetic_documents(N, seed=1), clustered_vectors(N, DIM, clusters=12, seed=1)


@pytest.fixture()
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(Settings(home=tmp_path))


def test_open_backend_chooses_local_by_default(tmp_path: Path):
    assert isinstance(open_backend(Settings(home=tmp_path)), LocalBackend)


def test_nothing_published_yet(backend: LocalBackend):
    assert backend.info() is None and backend.count() == 0
    with pytest.raises(IndexNotBuiltError, match="make demo"):
        backend.knn(np.ones(DIM, dtype=np.float32), 5)


def test_build_publishes_and_self_retrieval_scores_one(backend: LocalBackend, data):
    docs, vectors = data
    report = backend.build(docs, vectors, _info())
    assert report.count == N and backend.count() == N
    current = (backend.root / "CURRENT").read_text().strip()
    assert current == report.name and backend.info().name == report.name
    assert backend.info().image_model == "img-model" and backend.info().dim == DIM
    for row in (0, 17, N - 1):
        hits = backend.knn(vectors[row], 5)
        assert hits[0].photo_id == docs.photo_id[row]
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    fields, vector = backend.get(docs.photo_id[3])
    assert fields["describe"] == docs["describe"][3] and np.allclose(vector, vectors[3])
    assert isinstance(fields["colors"], list) and fields["photo_submitted_at"].startswith("20")
    assert backend.get("no-such-photo") is None


def test_scores_are_cosine_similarities(backend: LocalBackend, data):
    docs, vectors = data
    backend.build(docs, vectors, _info())
    q = vectors[5] + vectors[9]
    q /= np.linalg.norm(q)
    for hit in backend.knn(q, 20):
        row = int(np.flatnonzero(docs.photo_id == hit.photo_id)[0])
        assert hit.score == pytest.approx(float(vectors[row] @ q), abs=1e-5)


def test_rebuild_keeps_count_previous_build_and_removes_older(backend: LocalBackend, data):
    docs, vectors = data
    first = backend.build(docs, vectors, _info()).name
    second = backend.build(docs, vectors, _info()).name
    assert backend.count() == N
    assert backend.builds() == sorted([first, second])
    third = backend.build(docs, vectors, _info())
    assert backend.count() == N
    assert backend.builds() == sorted([second, third.name]) and first in third.details["removed"]
    assert backend.rollback() == second
    assert backend.info().name == second and backend.count() == N


def test_a_build_removes_folders_abandoned_by_killed_builds_only(backend: LocalBackend, data):
    docs, vectors = data
    backend.build(docs, vectors, _info())
    abandoned, in_progress = backend.builds_dir / ".build.killed.tmp", backend.builds_dir / ".build.running.tmp"
    for folder in (abandoned, in_progress):
        folder.mkdir()
        (folder / "vectors.npy").write_bytes(b"\0" * 1024)
    two_hours_ago = time.time() - 7200
    os.utime(abandoned, (two_hours_ago, two_hours_ago))
    backend.build(docs, vectors, _info())
    assert not abandoned.exists() and (in_progress / "vectors.npy").is_file()


@pytest.mark.parametrize(
    "break_input",
    [
        lambda d, v: (d, np.where(np.arange(len(v))[:, None] == 3, np.nan, v)),
        lambda d, v: (d, v[:, :100]),
        lambda d, v: (d.iloc[:-1], v),
        lambda d, v: (d.assign(photo_id=["same"] * len(d)), v),
        lambda d, v: (d.drop(columns=["describe"]), v),
    ],
    ids=["nan-vector", "wrong-dimension", "count-mismatch", "duplicate-ids", "missing-column"],
)
def test_failed_build_leaves_previous_serving(backend: LocalBackend, data, break_input):
    docs, vectors = data
    good = backend.build(docs, vectors, _info()).name
    bad_docs, bad_vectors = break_input(docs, vectors)
    with pytest.raises(ImageSearchError):
        backend.build(bad_docs, bad_vectors, _info())
    assert backend.info().name == good and backend.count() == N
    assert backend.builds() == [good]
    assert not list(backend.builds_dir.glob(".*.tmp"))
    assert backend.knn(vectors[0], 1)[0].photo_id == docs.photo_id[0]


#: The two build sizes the concurrent-reader test alternates: small, so that a reader's pass (every hit
#: with its stored fields) is quick and the passes are many.
SMALL, LARGE = 40, 60


def test_reader_switches_to_new_build_and_never_sees_half_of_one(tmp_path: Path, data):
    """A reader searching in a loop while three builds publish sees one whole build or the next, never a mix.

    The writer stops at each step of each build (its progress callback, the publish between
    the last two) until the reader has made a whole pass begun after that step, so reads fall
    in every stage of every build; the reader yields between passes, so it never starves the
    writer of the GIL (a tight loop once made this test take 34 s).
    """
    docs, vectors = data
    writer = LocalBackend(Settings(home=tmp_path))
    writer.build(docs.iloc[:SMALL], vectors[:SMALL], _info())
    reader = LocalBackend(Settings(home=tmp_path))
    assert reader.count() == SMALL
    seen, errors, stop = set(), [], threading.Event()
    passes, done = threading.Condition(), [0]

    def read():
        while not stop.is_set():
            try:
                # Two calls, so a switch may fall between them: each must see a whole build.
                seen.add(("count", reader.count()))
                seen.add(("knn", len(reader.knn(vectors[0], 1000))))
            except Exception as exc:  # noqa: BLE001 - any failure of a reader is what the test looks for
                errors.append(exc)
            with passes:
                done[0] += 1
                passes.notify_all()
            time.sleep(0)

    def after_a_pass(step: int, steps: int) -> None:
        with passes:
            begun_after = done[0] + 2
            # The timeout only stops a hung test: the pass comes whatever the machine's speed.
            assert passes.wait_for(lambda: done[0] >= begun_after, timeout=600), f"no pass at step {step}/{steps}"

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for size in (LARGE, SMALL, LARGE):
            writer.build(docs.iloc[:size], vectors[:size], _info(), progress=after_a_pass)
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert seen == {("count", SMALL), ("count", LARGE), ("knn", SMALL), ("knn", LARGE)}
    assert reader.count() == LARGE and reader.info().name == writer.info().name


def test_missing_published_build_is_a_clear_error(backend: LocalBackend, data):
    docs, vectors = data
    backend.build(docs, vectors, _info())
    (backend.root / "CURRENT").write_text("gone\n")
    with pytest.raises(ImageSearchError, match="missing"):
        backend.count()


def _filtered_rows(docs, filters: Filters) -> np.ndarray:
    keep = np.ones(len(docs), dtype=bool)
    if filters.orientation:
        keep &= (docs.orientation == filters.orientation).to_numpy()
    if filters.color:
        keep &= docs.colors.map(lambda c: filters.color in c).to_numpy()
    if filters.country:
        keep &= (docs.photo_location_country.str.lower() == filters.country.lower()).fillna(False).to_numpy()
    day = docs.photo_submitted_at.dt.date
    if filters.since:
        keep &= (day >= filters.since).to_numpy()
    if filters.until:
        keep &= (day <= filters.until).to_numpy()
    return np.flatnonzero(keep)


FILTERS = [
    Filters(orientation="portrait"),
    Filters(color="red"),
    Filters(country="SPAIN"),
    Filters(since=dt.date(2020, 1, 1), until=dt.date(2021, 6, 30)),
    Filters(orientation="square", color="blue", country="japan"),
]


@pytest.mark.parametrize("approximate", [False, True], ids=["exact", "approximate"])
@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(k for k, v in vars(f).items() if v))
def test_filters_apply_inside_the_search(tmp_path: Path, data, filters: Filters, approximate: bool):
    docs, vectors = data
    backend = LocalBackend(Settings(home=tmp_path), ann_min_docs=100 if approximate else 10**9)
    report = backend.build(docs, vectors, _info())
    assert (report.details["approximate"] is not None) == approximate
    passing = _filtered_rows(docs, filters)
    assert 0 < len(passing) < N
    q = vectors[int(np.flatnonzero(~np.isin(np.arange(N), passing))[0])]
    for k in (1, 10, len(passing), len(passing) + 50):
        hits = backend.knn(q, k, filters)
        assert len(hits) == min(k, len(passing))
        assert {h.photo_id for h in hits} <= set(docs.photo_id[passing])
    exact = set(docs.photo_id[passing[np.argsort(-(vectors[passing] @ q))[:10]]])
    assert len({h.photo_id for h in backend.knn(q, 10, filters)} & exact) >= 9
    words = backend.keyword("mountain", 1000, filters)
    assert words and {h.photo_id for h in words} <= set(docs.photo_id[passing])
    assert all("mountain" in h.fields["describe"] or "mountain" in h.fields["ai_description"] for h in words)


def test_keyword_search_ranks_matches(backend: LocalBackend, data):
    docs, vectors = data
    docs = docs.copy()
    docs.loc[7, "describe"] = "zebra zebra savanna"
    docs.loc[8, "photo_description"] = "A zebra at the waterhole"
    backend.build(docs, vectors, _info())
    hits = backend.keyword("Zebra", 10)
    assert [h.photo_id for h in hits] == [docs.photo_id[7], docs.photo_id[8]]
    assert hits[0].score > hits[1].score > 0
    assert backend.keyword("nothing-matches-this", 10) == []
    assert [h.photo_id for h in backend.keyword("zebra", 10, exclude="Waterhole")] == [docs.photo_id[7]]
    assert [h.photo_id for h in backend.keyword("zebra", 10, exclude="unknown-word")] == [h.photo_id for h in hits]


def test_keyword_exclusion_leaves_out_every_document_carrying_an_unwanted_word(backend: LocalBackend, data):
    docs, vectors = data
    backend.build(docs, vectors, _info())
    text = docs[["describe", "photo_description", "ai_description"]].fillna("").agg(" ".join, axis=1)
    unwanted = text.str.contains(r"\bmountain\b") | text.str.contains(r"\bsnow\b")
    filters = Filters(orientation="portrait")
    hits = backend.keyword("sea forest", 1000, filters, exclude="Mountain, snow!")
    allowed = set(docs.photo_id[~unwanted & (docs.orientation == "portrait")])
    assert hits and {h.photo_id for h in hits} <= allowed
    expected = {h.photo_id: h.score for h in backend.keyword("sea forest", 1000, filters) if h.photo_id in allowed}
    assert {h.photo_id: h.score for h in hits} == pytest.approx(expected)


def test_k_larger_than_index_and_k_of_a_thousand(backend: LocalBackend, data):
    docs, vectors = data
    backend.build(docs, vectors, _info())
    assert len(backend.knn(vectors[0], 1000)) == N


def test_approximate_index_recall_against_exact(tmp_path: Path):
    n = 20_000
    docs, vectors = synthetic_documents(n, seed=2), clustered_vectors(n, DIM, clusters=64, seed=2)
    backend = LocalBackend(Settings(home=tmp_path), ann_min_docs=10_000)
    report = backend.build(docs, vectors, _info())
    meta = json.loads((backend.builds_dir / report.name / "info.json").read_text())["ann"]
    assert meta["kind"] == "ivf-flat" and meta["tuned_recall_at_10"] >= 0.99
    rng = np.random.default_rng(3)
    queries = clustered_vectors(100, DIM, clusters=64, seed=2)[rng.permutation(100)]
    truth = exact_top10(vectors, queries)
    found = [backend.knn_rows(q, 10)[0] for q in queries]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.98
    exact = [backend.knn_rows(q, 10, exact=True)[0] for q in queries]
    assert all(list(e) == list(t) for e, t in zip(exact, truth))


def test_exact_search_screens_in_float16_and_still_orders_near_ties_like_float32(tmp_path: Path):
    """Neighbours whose cosines differ by less than float16 can resolve still come back in float32 order."""
    n = SCREEN_MIN_DOCS + 1_000
    docs, vectors = synthetic_documents(n, seed=4), clustered_vectors(n, DIM, clusters=64, seed=4)
    rng = np.random.default_rng(4)
    queries = clustered_vectors(3, DIM, clusters=64, seed=5)
    planted = rng.permutation(n)[: 3 * 40].reshape(3, 40)
    for q, rows in zip(queries, planted):
        # Cosines 0.95, 0.95002, 0.95004, ...: steps of 2e-5 are far above float32's rounding
        # but far below the float16 screen's error of about 1e-3.
        for j, row in enumerate(rows):
            other = rng.standard_normal(DIM).astype(np.float32)
            other -= (other @ q) * q
            other /= np.linalg.norm(other)
            cosine = 0.95 + j * 2e-5
            vectors[row] = cosine * q + np.sqrt(1 - cosine**2) * other
    backend = LocalBackend(Settings(home=tmp_path))
    report = backend.build(docs, vectors, _info())
    assert (backend.builds_dir / report.name / "vectors_f16.npy").exists()
    for q, rows in zip(queries, planted):
        found, scores = backend.knn_rows(q, 40, exact=True)
        assert list(found) == list(rows[::-1])
        assert np.all(np.diff(scores) < 0)
    landscape = docs["orientation"].to_numpy() == "landscape"
    for q in clustered_vectors(20, DIM, clusters=64, seed=6):
        scores = vectors @ q
        for k in (1, 10, 1000):
            rows, got = backend.knn_rows(q, k, exact=True)
            want = np.sort(scores)[::-1][:k]
            # The same ranking as one float32 pass, up to float32 rounding: two summation
            # orders may swap documents whose cosines agree to 1e-7.
            assert len(set(rows)) == k
            assert np.allclose(scores[rows], want, atol=1e-6) and np.allclose(got, want, atol=1e-6)
        rows, _ = backend.knn_rows(q, 10, Filters(orientation="landscape"), exact=True)
        assert landscape[rows].all()
        assert np.allclose(scores[rows], np.sort(scores[landscape])[::-1][:10], atol=1e-6)


def test_small_builds_carry_no_float16_copy(backend: LocalBackend, data):
    docs, vectors = data
    report = backend.build(docs, vectors, _info())
    assert not (backend.builds_dir / report.name / "vectors_f16.npy").exists()
    assert list(backend.knn_rows(vectors[3], 5, exact=True)[0]) == list(np.argsort(-(vectors @ vectors[3]))[:5])
