"""The Elasticsearch/OpenSearch/ESCloud backend, end to end over HTTP.

Every test taking ``cluster`` runs once per engine against the wire-level fake in
``tests/es_fake/`` (a real HTTP server on 127.0.0.1, since no search server can be
installed here) and, when ``IMAGE_SEARCH_ES_URL`` is set, once more against that real
cluster (see docs/backends.md). What only a fake can show (the exact bodies on the wire, a
server dying mid-build) is in ``tests/integration/test_elasticsearch_fake.py``; shared-cluster safety in
``tests/integration/test_elasticsearch_safety.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import traceback
import uuid
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
from elasticsearch7 import Elasticsearch

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.index import open_backend
from resources.index.base import STORED_FIELDS, Filters
from resources.index.elasticsearch import ElasticsearchBackend
from resources.index.es_transport import CheckedTransport
from tests.es_fake import FakeSearchServer
from tests.es_fake.helpers import DIM, N, build_info, corpus, probe_at

#: (fake server profile, IMAGE_SEARCH_ES_ENGINE, the engine the backend must end up using)
CASES = [
    ("escloud-7.10", "auto", "escloud"),
    ("opensearch-2.11", "auto", "opensearch"),
    ("opensearch-2.11", "escloud", "escloud"),
    ("opensearch-2.17", "escloud", "escloud"),
    ("opensearch-2.18", "escloud", "escloud"),
    ("opensearch-2.19", "escloud", "escloud"),
    ("opensearch-3.1", "auto", "opensearch"),
    ("elasticsearch-7.17", "auto", "elasticsearch"),
    ("opensearch-2.11-compatibility", "auto", "opensearch"),
    ("opensearch-2.11-no-monitor", "opensearch", "opensearch"),
    ("escloud-7.10-no-monitor", "escloud", "escloud"),
    ("opensearch-2.11-3-shards", "auto", "opensearch"),
    ("opensearch-2.11-item-429", "auto", "opensearch"),
    ("opensearch-2.11-bulk-429", "auto", "opensearch"),
    ("opensearch-2.11-bulk-413", "auto", "opensearch"),
]

CASE_IDS = [f"{p}-{e}" for p, e, _ in CASES]


def assert_found(got: list[str], expected: list[str], exact: bool, what: str = "") -> None:
    """Exact searches return ``expected`` in order; approximate (HNSW) ones at least 3 in 4 of them, any order.

    Filtered searches on ``escloud`` and ``elasticsearch`` are exact scripts; the ``opensearch``
    engine's filtered kNN and every plain ``knn`` query may be approximate on a real cluster.
    """
    if exact:
        assert got == expected, what
    else:
        assert len(got) == len(expected) and len(set(got) & set(expected)) >= 0.75 * len(expected), what


@dataclass
class Cluster:
    """A server to test against: a fake (``fake`` set) or the real one from the environment."""

    settings: Settings
    fake: FakeSearchServer | None
    engine: str | None

    def backend(self, **changes) -> ElasticsearchBackend:
        backend = ElasticsearchBackend(self.settings.replace(**changes))
        if self.fake is not None:
            backend.bulk_backoff_s = 0.0  # the fake's rejections clear at once: retry without waiting
        return backend

    def raw(self) -> Elasticsearch:
        """A plain client for looking behind the backend's back (product check done as the backend does)."""
        s = self.settings
        auth = (s.es_username, s.es_password or "") if s.es_username else None
        return Elasticsearch(
            s.es_url,
            http_auth=auth,
            api_key=s.es_api_key,
            verify_certs=s.es_verify_certs,
            ca_certs=s.es_ca_certs,
            transport_class=CheckedTransport,
        )

    def indices(self) -> set[str]:
        return set(self.raw().indices.get_alias(index=f"{self.settings.index_name}_v*"))

    def aliased(self) -> set[str]:
        return set(self.raw().indices.get_alias(name=self.settings.index_name))


def _real_params() -> list:
    if not os.environ.get("IMAGE_SEARCH_ES_URL"):
        return [
            pytest.param(None, marks=pytest.mark.skip(reason="IMAGE_SEARCH_ES_URL not set: no real cluster"), id="real")
        ]
    return [pytest.param(None, id="real")]


@pytest.fixture(params=[pytest.param(c, id=i) for c, i in zip(CASES, CASE_IDS)] + _real_params())
def cluster(request) -> Iterator[Cluster]:
    """Each engine on the fake, then the real cluster when ``IMAGE_SEARCH_ES_URL`` names one."""
    index = f"image_search_test_{uuid.uuid4().hex[:8]}"
    if request.param is None:
        settings = Settings.from_env(backend="elasticsearch", index_name=index)
        real = Cluster(settings, None, None)
        yield real
        leftovers = real.indices()
        if leftovers:
            real.raw().indices.delete(index=",".join(sorted(leftovers)))
        return
    profile, engine, expected = request.param
    with FakeSearchServer(profile) as fake:
        yield Cluster(
            Settings(backend="elasticsearch", es_url=fake.url, es_engine=engine, index_name=index), fake, expected
        )


def test_open_backend_picks_the_engine_the_server_runs(cluster: Cluster) -> None:
    backend = open_backend(cluster.settings)
    assert isinstance(backend, ElasticsearchBackend)
    if cluster.engine:
        assert backend.engine == cluster.engine


def test_build_publishes_under_the_alias_with_its_build_info(cluster: Cluster) -> None:
    docs, vectors = corpus()
    backend = cluster.backend()
    assert backend.count() == 0 and backend.info() is None
    progress: list[tuple[int, int]] = []
    report = backend.build(docs, vectors, build_info(), progress=lambda done, total: progress.append((done, total)))
    assert report.count == N and report.errors == {}
    assert progress[-1] == (N, N)
    assert cluster.aliased() == {report.name}
    assert backend.count() == N
    info = backend.info()
    assert info is not None
    assert (info.image_model, info.text_model, info.dim, info.count, info.name) == (
        "tiny-clip",
        "tiny-text",
        DIM,
        N,
        report.name,
    )
    fields, vector = backend.get("p00007")
    assert fields == {k: _plain(docs.loc[7, k]) for k in STORED_FIELDS}
    np.testing.assert_allclose(vector, vectors[7], atol=1e-6)
    assert backend.get("missing") is None


def _plain(value):
    if not isinstance(value, list) and pd.isna(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat().replace("+00:00", "Z")
    return value


def test_rebuild_keeps_count_swaps_alias_and_keeps_only_the_previous_build(cluster: Cluster) -> None:
    docs, vectors = corpus()
    backend = cluster.backend()
    first = backend.build(docs, vectors, build_info())
    second = backend.build(docs, vectors, build_info())
    assert backend.count() == N
    assert cluster.aliased() == {second.name}
    assert cluster.indices() == {first.name, second.name}
    third = backend.build(docs, vectors, build_info())
    assert backend.count() == N
    assert cluster.aliased() == {third.name}
    assert cluster.indices() == {second.name, third.name}
    assert third.details["removed"] == [first.name] and third.details["previous"] == [second.name]


def test_a_pinned_view_reads_the_build_it_was_pinned_at_after_a_new_one_is_published(cluster: Cluster) -> None:
    docs, vectors = corpus()
    backend = cluster.backend()
    backend.build(docs.iloc[:10], vectors[:10], build_info("first"))
    view = backend.pinned()
    backend.build(docs, vectors, build_info("second"))
    assert view.count() == 10 and view.info().name.startswith(cluster.settings.index_name)
    assert view.get(docs["photo_id"].iloc[20]) is None
    assert {h.photo_id for h in view.knn(vectors[20], 5)} <= set(docs["photo_id"].iloc[:10])
    assert backend.count() == N and backend.pinned().count() == N


def test_refused_documents_are_counted_and_too_many_fail_the_build_leaving_the_old_one(cluster: Cluster) -> None:
    docs, vectors = corpus()
    backend = cluster.backend(es_max_error_share=0.06)
    good = backend.build(docs, vectors, build_info())

    some_bad = docs.astype({"photo_submitted_at": object})
    some_bad.loc[[3, 4], "photo_submitted_at"] = "not a date"
    broken = vectors.copy()
    broken[5] = np.nan
    report = backend.build(some_bad, broken, build_info())
    assert report.errors == {"mapper_parsing_exception": 2, "non_finite_vector": 1}
    assert report.count == N - 3 == backend.count()
    assert backend.get("p00003") is None and backend.get("p00005") is None

    all_bad = docs.astype({"photo_submitted_at": object})
    all_bad["photo_submitted_at"] = "not a date"
    with pytest.raises(
        ImageSearchError, match=r"60 of 60 documents could not be indexed .*mapper_parsing_exception.*unchanged"
    ):
        backend.build(all_bad, vectors, build_info())
    assert cluster.aliased() == {report.name}
    assert cluster.indices() == {good.name, report.name}
    assert backend.count() == N - 3
    assert backend.knn(vectors[0], 1)[0].photo_id == "p00000"


def test_self_retrieval_returns_the_photo_first_with_cosine_one(cluster: Cluster) -> None:
    docs, vectors = corpus()
    backend = cluster.backend()
    backend.build(docs, vectors, build_info())
    for i in (0, 17, 59):
        hits = backend.knn(vectors[i], 5)
        assert hits[0].photo_id == docs.photo_id[i]
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[0].fields["describe"] == docs["describe"][i]


@pytest.mark.parametrize("filtered", [False, True], ids=["plain", "filtered"])
def test_scores_are_cosine_similarity_on_every_engine(cluster: Cluster, filtered: bool) -> None:
    docs, vectors = corpus()
    backend = cluster.backend()
    backend.build(docs, vectors, build_info())
    probe = probe_at(vectors, 5, 0.5)
    filters = Filters(orientation=docs.orientation[5]) if filtered else None
    hits = backend.knn(probe, N, filters)
    by_id = {h.photo_id: h.score for h in hits}
    assert by_id["p00005"] == pytest.approx(0.5, abs=1e-4)
    stored = np.round(vectors.astype(np.float64), 6)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    expected = stored @ (probe / np.linalg.norm(probe))
    for hit in hits:
        assert hit.score == pytest.approx(expected[int(hit.photo_id[1:])], abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


FILTER_CASES = {
    "orientation": (Filters(orientation="portrait"), lambda d: d.orientation == "portrait"),
    "color": (Filters(color="Blue"), lambda d: d.colors.map(lambda c: "blue" in c)),
    "country": (Filters(country="japan"), lambda d: d.photo_location_country == "Japan"),
    "dates": (
        Filters(since=dt.date(2020, 3, 1), until=dt.date(2021, 1, 2)),
        lambda d: (
            (d.photo_submitted_at >= pd.Timestamp("2020-03-01", tz="UTC"))
            & (d.photo_submitted_at < pd.Timestamp("2021-01-03", tz="UTC"))
        ),
    ),
    "combined": (
        Filters(orientation="landscape", color="red", country="France"),
        lambda d: (
            (d.orientation == "landscape") & d.colors.map(lambda c: "red" in c) & (d.photo_location_country == "France")
        ),
    ),
}


def test_filters_apply_inside_the_search_so_k_results_come_back(cluster: Cluster) -> None:
    docs, vectors = corpus()
    backend = cluster.backend()
    backend.build(docs, vectors, build_info())
    query = vectors[1]
    for name, (filters, passes) in FILTER_CASES.items():
        passing = set(docs.photo_id[passes(docs)])
        assert 0 < len(passing) < N, name
        k = min(8, len(passing))
        hits = backend.knn(query, k, filters)
        assert len(hits) == k, name
        assert {h.photo_id for h in hits} <= passing, name
        expected = sorted(passing, key=lambda pid: -float(vectors[int(pid[1:])] @ query))[:k]
        assert_found([h.photo_id for h in hits], expected, exact=backend.engine != "opensearch", what=name)
        everything = backend.knn(query, len(passing), filters)
        assert {h.photo_id for h in everything} == passing, name


def test_keyword_search_uses_bm25_over_describe_and_descriptions_with_filters(cluster: Cluster) -> None:
    docs, vectors = corpus()
    backend = cluster.backend()
    backend.build(docs, vectors, build_info())
    text = docs[["describe", "photo_description", "ai_description"]].fillna("").agg(" ".join, axis=1).str.lower()
    having = set(docs.photo_id[text.str.contains(r"\bsnow\b")])
    hits = backend.keyword("Snow", N)
    assert {h.photo_id for h in hits} == having
    assert all(h.score > 0 for h in hits)
    portrait = having & set(docs.photo_id[docs.orientation == "portrait"])
    filtered = backend.keyword("snow", 3, Filters(orientation="portrait"))
    assert len(filtered) == min(3, len(portrait)) and {h.photo_id for h in filtered} <= portrait
    with pytest.raises(ImageSearchError, match="empty"):
        backend.keyword("  ", 5)
    unwanted = set(docs.photo_id[text.str.contains(r"\blake\b") | text.str.contains(r"\bdog\b")])
    assert having - unwanted and having & unwanted
    excluded = backend.keyword("snow", N, exclude="Lake dog")
    assert {h.photo_id for h in excluded} == having - unwanted
    assert {h.photo_id: h.score for h in excluded} == {h.photo_id: h.score for h in hits if h.photo_id not in unwanted}


def test_k_of_a_thousand_and_more(cluster: Cluster) -> None:
    docs, vectors = corpus(n=1_100, dim=8, seed=3)
    backend = cluster.backend()
    backend.build(docs, vectors, dataclasses.replace(build_info(), dim=8))
    hits = backend.knn(vectors[0], 1_000)
    assert len(hits) == 1_000 and hits[0].photo_id == "p00000"
    squares = backend.knn(vectors[0], 1_000, Filters(orientation="square"))
    assert {h.photo_id for h in squares} == set(docs.photo_id[docs.orientation == "square"])
    with pytest.raises(ImageSearchError, match="k=10001 is out of range"):
        backend.knn(vectors[0], 10_001)


def test_query_service_more_like_this_and_keywords_over_the_cluster(cluster: Cluster, tmp_path) -> None:
    """The one query service (no encoder needed for these two) on top of this backend."""
    from search_app.service import SearchService

    docs, vectors = corpus()
    backend = cluster.backend()
    backend.build(docs, vectors, build_info())
    service = SearchService(backend, cluster.settings.replace(home=tmp_path))
    similar = service.more_like_this("p00011", k=5)
    assert similar[0].photo_id == "p00011" and similar[0].cosine == pytest.approx(1.0, abs=1e-5)
    assert similar[0].photographer_name == docs["photographer_name"][11]
    assert len(service.more_like_this("p00011", k=5, filters=Filters(country="Brazil"))) == 5
    found = service.search_text("lake", k=100, mode="keyword", filters=Filters(orientation="square"))
    assert found and all("lake" in f"{r.describe} {r.photo_description} {r.ai_description}".lower() for r in found)
    assert all(r.orientation == "square" for r in found)


def test_clean_up_deletes_only_builds_this_project_made_for_this_alias(cluster: Cluster) -> None:
    """Neighbours named like this alias's builds survive every clean-up: another alias's builds
    (``<alias>_vnext_v...``), indices matching the build pattern that lack this project's
    ``_meta`` or carry another tool's, and an old build someone gave an alias of their own."""
    alias = cluster.settings.index_name
    raw = cluster.raw()
    stamp = "20200101000000000000"
    text = {"describe": {"type": "text"}}
    neighbours = {
        f"{alias}_vnext_v{stamp}": {
            "_meta": {"image_search": {"name": f"{alias}_vnext_v{stamp}", "alias": f"{alias}_vnext"}}
        },
        f"{alias}_v{stamp}": {},
        f"{alias}_v{stamp[:-1]}1": {"_meta": {"other_tool": {"name": f"{alias}_v{stamp[:-1]}1"}}},
        f"{alias}_v_other": {},
        f"{alias}_v2": {},
    }
    for name, extra in neighbours.items():
        raw.indices.create(index=name, mappings={"properties": text, **extra})
    docs, vectors = corpus()
    backend = cluster.backend()
    first = backend.build(docs, vectors, build_info())
    raw.indices.put_alias(index=first.name, name=f"{alias}_pinned")
    second = backend.build(docs, vectors, build_info())
    third = backend.build(docs, vectors, build_info())
    fourth = backend.build(docs, vectors, build_info())
    assert third.details["removed"] == [] and fourth.details["removed"] == [second.name]
    lock = f"{alias}_build_lock"  # the builds' lock index (resources/index/es_publish.py), kept for the next build
    assert set(raw.indices.get(index=f"{alias}*")) == set(neighbours) | {first.name, third.name, fourth.name, lock}
    assert cluster.aliased() == {fourth.name} and backend.count() == N


def test_credentials_never_appear_in_messages_logs_or_reports(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    if cluster.fake is not None:
        secrets = ["s3cr3t-Pa55"]
        settings = cluster.settings.replace(es_url=cluster.fake.url.replace("://", "://elastic:s3cr3t-Pa55@"))
    else:
        settings = cluster.settings
        secrets = [s for s in (urlsplit(settings.es_url).password, settings.es_password, settings.es_api_key) if s]
        if not secrets:
            pytest.skip("the real cluster is used without credentials")
    backend = ElasticsearchBackend(settings)
    if cluster.fake is not None:
        backend.bulk_backoff_s = 0.0  # the fake's rejections clear at once: retry without waiting
    docs, vectors = corpus()
    report = backend.build(docs, vectors, build_info())
    bad = docs.astype({"photo_submitted_at": object})
    bad["photo_submitted_at"] = "never"
    with pytest.raises(ImageSearchError) as refused:
        backend.build(bad, vectors, build_info())
    dead = f"http://elastic:{secrets[0]}@127.0.0.1:9"
    with pytest.raises(ImageSearchError) as unreachable:
        ElasticsearchBackend(settings.replace(es_url=dead))
    assert "***:***@127.0.0.1:9" in str(unreachable.value) and "\n" not in str(unreachable.value)
    shown = [str(refused.value), str(unreachable.value), repr(report), str(settings), str(settings.describe())]
    shown += ["".join(traceback.format_exception(e.value)) for e in (refused, unreachable)]
    shown += [r.getMessage() for r in caplog.records]
    assert not [s for s in shown if any(secret in s for secret in secrets)]
    if cluster.fake is not None:
        assert any(h.get("authorization", "").startswith("Basic ") for h in cluster.fake.headers_seen)


def test_unknown_engine_setting_and_mismatched_engine_are_refused(cluster: Cluster) -> None:
    with pytest.raises(ImageSearchError, match="IMAGE_SEARCH_ES_ENGINE='faiss' is not supported"):
        cluster.backend(es_engine="faiss")
    with pytest.raises(ImageSearchError, match="IMAGE_SEARCH_INDEX="):
        cluster.backend(index_name="Image Search")
