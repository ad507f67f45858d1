"""The Elasticsearch backend on a shared, busy, upgraded cluster (issue #23): what it must never do.

Each test runs against a profile of the wire-level fake (``tests/es_fake/``, a real HTTP
server on 127.0.0.1; no search server can be installed here) whose behaviour names the
engine source it follows. The profiles changed for this issue answer as the real servers do
where the fake used to be kinder: OpenSearch 2.18 scores graph-less segments exactly by
another formula, alias actions answer by version, a proxy can lose the answer to a swap it
made, and a write queue can stay full for minutes.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from elasticsearch7 import Elasticsearch
from elasticsearch7.exceptions import TransportError

from resources.config import Settings
from resources.errors import ImageSearchError, UnavailableError
from resources.index.base import Filters
from resources.index.elasticsearch import ElasticsearchBackend
from resources.index.es_engines import ALWAYS_GRAPHS, RECIPROCAL, _hnsw
from resources.index.es_load import Backoff
from resources.index.es_publish import BuildLock
from resources.index.es_transport import CheckedTransport
from tests.es_fake import FakeSearchServer, Faults, ServerProfile
from tests.es_fake.helpers import FakeTime, N, backend_for, build_info, builds, corpus, probe_at


def raw(fake: FakeSearchServer) -> Elasticsearch:
    return Elasticsearch(fake.url, transport_class=CheckedTransport)


# -- never delete what the project did not build --------------------------------------------------


def test_a_strangers_index_named_like_the_alias_is_never_deleted() -> None:
    """Before: the first build removed any concrete ``image_search`` (``remove_index``). Now it stops in one
    line naming what is there and the two ways on; only an index whose ``_meta`` says this project built it is replaced."""
    with FakeSearchServer("escloud-7.10") as fake:
        raw(fake).indices.create(index="image_search", mappings={"properties": {"describe": {"type": "text"}}})
        raw(fake).index(index="image_search", id="theirs", document={"describe": "a colleague's photo"})
        backend = backend_for(fake)
        with pytest.raises(ImageSearchError) as refused:
            backend.build(*corpus(), build_info())
        message = str(refused.value)
        assert "concrete index named image_search" in message and "did not build" in message
        assert "IMAGE_SEARCH_INDEX" in message and "DELETE /image_search" in message and "\n" not in message
        assert set(fake.indices) == {"image_search"} and "theirs" in fake.indices["image_search"].docs
        assert not fake.bodies("POST", "/_aliases")

    with FakeSearchServer("escloud-7.10") as fake:
        meta = {"image_search": {"name": "image_search", "alias": "image_search"}}
        raw(fake).indices.create(
            index="image_search", mappings={"_meta": meta, "properties": {"describe": {"type": "text"}}}
        )
        report = backend_for(fake).build(*corpus(), build_info())
        assert fake.bodies("POST", "/_aliases")[-1]["actions"] == [
            {"remove_index": {"index": "image_search"}},
            {"add": {"index": report.name, "alias": "image_search"}},
        ]
        assert builds(fake) == {report.name}


# -- publishing under retries and races -------------------------------------------------------------


def test_two_builds_of_one_alias_never_both_publish() -> None:
    """The second build starts while the first is loading (held there by its progress callback): it stops
    naming the running build, writes nothing, and the first publishes. Later builds take the lock again."""
    with FakeSearchServer("opensearch-2.11") as fake:
        first, second = backend_for(fake), backend_for(fake)
        docs, vectors = corpus()
        refusals: list[str] = []

        def start_second(done: int, total: int) -> None:
            if done == total and not refusals:
                before = set(fake.indices)
                with pytest.raises(UnavailableError) as busy:
                    second.build(docs, vectors, build_info())
                refusals.append(str(busy.value))
                assert set(fake.indices) == before

        report = first.build(docs, vectors, build_info(), progress=start_second)
        assert "another build of image_search is running" in refusals[0] and "\n" not in refusals[0]
        assert fake.aliases == {"image_search": {report.name}}
        assert second.build(docs, vectors, build_info()).name in fake.aliases["image_search"]


def test_a_build_that_lost_its_lock_does_not_publish_and_an_expired_lock_is_taken_over() -> None:
    with FakeSearchServer("opensearch-2.11") as fake:
        backend = backend_for(fake)
        docs, vectors = corpus()
        good = backend.build(docs, vectors, build_info())

        def steal(done: int, total: int) -> None:
            if done == total:
                lock = fake.indices["image_search_build_lock"]
                lock.write("image_search", {"owner": "someone else", "expires_at": 9e18})

        with pytest.raises(ImageSearchError, match="lost its lock.*not published") as lost:
            backend.build(docs, vectors, build_info(), progress=steal)
        assert "\n" not in str(lost.value)
        assert fake.aliases == {"image_search": {good.name}} and builds(fake) == {good.name}

        fake.indices["image_search_build_lock"].write("image_search", {"owner": "crashed", "expires_at": 0.0})
        assert backend.build(docs, vectors, build_info()).name in fake.aliases["image_search"]


def test_two_takeovers_of_one_expired_lock_conflict() -> None:
    """Both read the same stale lock; the conditional write (if_seq_no) lets only one through."""
    with FakeSearchServer("opensearch-2.11") as fake:
        client = raw(fake)
        BuildLock(client, "photos", fake.url, 60).acquire()
        fake.indices["photos_build_lock"].write("photos", {"owner": "crashed", "expires_at": 0.0})
        stale = client.get(index="photos_build_lock", id="photos")
        winner = BuildLock(client, "photos", fake.url, 60)
        winner.acquire()
        with pytest.raises(TransportError) as conflict:
            client.index(
                index="photos_build_lock",
                id="photos",
                document={"owner": "late"},
                if_seq_no=stale["_seq_no"],
                if_primary_term=stale["_primary_term"],
            )
        assert conflict.value.status_code == 409 and conflict.value.error == "version_conflict_engine_exception"
        winner.check()


def test_an_ambiguous_publish_is_settled_by_reading_the_alias_back(caplog: pytest.LogCaptureFixture) -> None:
    """A proxy applies ``POST _aliases`` but answers 504; the client resends it, and the resend's ``remove``
    of the old build answers 404 (OpenSearch #11210: a remove whose aliases are all missing). Before: the build took the
    404 as a failure and deleted its new index, which the alias already pointed to, leaving the alias on
    nothing. Now the alias is read back: the new build is published and says so."""
    with FakeSearchServer("opensearch-2.11") as fake:
        backend = backend_for(fake)
        docs, vectors = corpus()
        old = backend.build(docs, vectors, build_info())
        fake.switch_to("opensearch-2.11-alias-504")
        new = backend.build(docs, vectors, build_info())
        posts = fake.bodies("POST", "/_aliases")
        assert posts[-1] == posts[-2] and len(posts) == 3  # the client resent the swap
        assert fake.aliases == {"image_search": {new.name}} and new.details["previous"] == [old.name]
        assert backend.count() == N and backend.knn(vectors[4], 1)[0].photo_id == "p00004"
        assert any("reads back as" in r.getMessage() and new.name in r.getMessage() for r in caplog.records)


def test_a_swap_raced_by_someone_else_fails_saying_where_the_alias_points() -> None:
    """Between the build's read of the alias and its swap, another client points the alias elsewhere (held at
    that point by wrapping the swap call): the swap's ``remove`` answers 404, the alias reads back as the
    other index, and the build says so, drops only its own new index and leaves the other one serving."""
    with FakeSearchServer("opensearch-2.11") as fake:
        backend = backend_for(fake)
        docs, vectors = corpus()
        old = backend.build(docs, vectors, build_info())
        other = raw(fake)
        other.indices.create(index="hand_made")
        swap = backend.client.indices.update_aliases

        def raced(**kwargs):
            other.indices.update_aliases(
                body={
                    "actions": [
                        {"remove": {"index": old.name, "alias": "image_search"}},
                        {"add": {"index": "hand_made", "alias": "image_search"}},
                    ]
                }
            )
            return swap(**kwargs)

        backend.client.indices.update_aliases = raced
        with pytest.raises(ImageSearchError) as lost:
            backend.build(docs, vectors, build_info())
        message = str(lost.value)
        assert "answered HTTP 404" in message and "now points at ['hand_made']" in message and "\n" not in message
        assert fake.aliases == {"image_search": {"hand_made"}} and builds(fake) == {old.name, "hand_made"}


def test_a_publish_that_cannot_be_read_back_keeps_the_new_build() -> None:
    """The cluster goes away right after applying the swap: nobody can tell whether the new build is published,
    so it is not deleted, and the message says it may be published."""
    with FakeSearchServer("opensearch-2.11") as fake:
        backend = backend_for(fake)
        docs, vectors = corpus()
        old = backend.build(docs, vectors, build_info())
        swap = backend.client.indices.update_aliases

        def then_gone(**kwargs):
            answer = swap(**kwargs)
            fake.gone = True
            return answer

        backend.client.indices.update_aliases = then_gone
        with pytest.raises(ImageSearchError) as unsure:
            backend.build(docs, vectors, build_info())
        message = str(unsure.value)
        (new,) = fake.aliases["image_search"]
        assert new != old.name and new in fake.indices
        assert f"may point at {new} or still at ['{old.name}']" in message and f"{new} is kept" in message
        assert "unchanged" not in message


def test_fake_alias_actions_answer_as_each_version_does() -> None:
    """``must_exist`` is unknown before OpenSearch 2.12 and Elasticsearch 7.11; removing a missing alias is a
    404 on OpenSearch (even with ``must_exist: false``) and Elasticsearch 7.x, a 200 on Elasticsearch 8.14+
    (elastic #106304)."""
    es8 = ServerProfile("es-8.15", "8.15.0", None, "default", "You Know, for Search")
    cases = [
        ("opensearch-2.11", 400, 404),
        ("opensearch-2.19", 200, 404),
        ("elasticsearch-oss-7.10", 400, 404),
        ("elasticsearch-7.17", 200, 404),
        (es8, 200, 200),
    ]
    for profile, with_must_exist, missing in cases:
        with FakeSearchServer(profile) as fake:
            client = raw(fake)
            client.indices.create(index="a")
            client.indices.create(index="b")
            client.indices.put_alias(index="a", name="live")
            tolerant = {"remove": {"index": "a", "alias": "live", "must_exist": False}}
            status = _status(lambda: client.indices.update_aliases(body={"actions": [tolerant]}))
            assert status == with_must_exist, profile
            gone = {"remove": {"index": "b", "alias": "live"}}
            assert _status(lambda: client.indices.update_aliases(body={"actions": [gone]})) == missing, profile
            if with_must_exist == 200:
                lenient = {"remove": {"index": "b", "alias": "live", "must_exist": False}}
                assert _status(lambda: client.indices.update_aliases(body={"actions": [lenient]})) == missing, profile


def _status(call) -> int:
    try:
        call()
        return 200
    except TransportError as exc:
        return exc.status_code


# -- scores right on every version -------------------------------------------------------------------


def test_fake_opensearch_2_18_searches_small_segments_exactly_with_another_formula() -> None:
    """k-NN 2.18.0.0: segments under index.knn.advanced.approximate_threshold (default 15,000) get no graph and
    are scored (1 + cos) / 2, beside 1 / (2 - cos) from nmslib graphs. Before, the fake scored them all alike."""
    probe, target = [0.5, 0.75**0.5, 0.0], [1.0, 0.0, 0.0]
    for settings, expected in (({}, (1 + 0.5) / 2), (ALWAYS_GRAPHS, 1 / (2 - 0.5))):
        with FakeSearchServer("opensearch-2.18") as fake:
            client = raw(fake)
            client.indices.create(
                index="x",
                settings={"index": {"knn": "true", **settings}},
                mappings={"properties": {"v": _hnsw(3, "nmslib")}},
            )
            client.index(index="x", id="a", document={"v": target}, refresh="true")
            hit = client.search(index="x", query={"knn": {"v": {"vector": probe, "k": 1}}})["hits"]["hits"][0]
            assert hit["_score"] == pytest.approx(expected, abs=1e-6)
    with FakeSearchServer("opensearch-2.17") as fake:
        with pytest.raises(TransportError, match="unknown setting"):
            raw(fake).indices.create(index="x", settings={"index": {"knn": "true", **ALWAYS_GRAPHS}})


def test_opensearch_2_18_builds_graphs_for_every_segment_and_scores_true_cosines() -> None:
    with FakeSearchServer("opensearch-2.18") as fake:
        backend = backend_for(fake, es_engine="escloud")
        docs, vectors = corpus()
        report = backend.build(docs, vectors, build_info())
        (created,) = fake.bodies("PUT", f"/{report.name}")
        assert created["settings"]["index"]["knn.advanced.approximate_threshold"] == "0"
        hits = {h.photo_id: h.score for h in backend.knn(probe_at(vectors, 5, 0.5), N)}
        assert hits["p00005"] == pytest.approx(0.5, abs=1e-4)


def test_a_build_the_cluster_scores_wrongly_fails_its_self_check_and_the_old_build_serves(monkeypatch) -> None:
    """An index made as this project made them before (no approximate_threshold on 2.18): its small segments
    score (1 + cos) / 2 where the engine reads 1 / (2 - cos). The self-check catches it before publishing."""
    with FakeSearchServer("opensearch-2.18") as fake:
        backend = backend_for(fake, es_engine="escloud")
        docs, vectors = corpus()
        good = backend.build(docs, vectors, build_info())
        monkeypatch.setattr(backend.impl, "mappings", lambda dim: [({}, _hnsw(dim, "nmslib"))])
        with pytest.raises(ImageSearchError) as refused:
            backend.build(docs, vectors, build_info())
        message = str(refused.value)
        for part in ("self-check", "OpenSearch 2.18.0", "escloud engine", RECIPROCAL.score, "unchanged"):
            assert part in message, message
        assert "\n" not in message and fake.aliases == {"image_search": {good.name}} and builds(fake) == {good.name}


def test_read_only_credentials_that_cannot_read_settings_still_get_true_cosines(caplog) -> None:
    """On an index created by 2.19, the knn_score script scores (1 + cos) / 2 (k-NN #2357/#2375). Before, a
    user denied index.version.created got its scores read as 1 + cos: every filtered cosine was wrong.
    Now the formula is told from one stored vector (a ``_doc`` read, which ``read`` allows)."""
    with FakeSearchServer("opensearch-2.19") as fake:
        docs, vectors = corpus()
        backend_for(fake, es_engine="escloud").build(docs, vectors, build_info())
        fake.switch_to("opensearch-2.19-no-settings")
        reader = ElasticsearchBackend(Settings(es_url=fake.url, es_engine="escloud"))
        probe = probe_at(vectors, 5, 0.5)
        for filters in (Filters(orientation=docs.orientation[5]), None):
            assert {h.photo_id: h.score for h in reader.knn(probe, N, filters)}["p00005"] == pytest.approx(
                0.5, abs=1e-4
            )
        assert "denied reading index.version.created" in caplog.text


# -- overload is not bad data ------------------------------------------------------------------------


def test_sustained_overload_is_waited_out_with_jitter_and_never_counts_as_bad_documents() -> None:
    """Every 7th document refused 6 times running and 8 whole requests refused: the old loader gave up after
    3 retries (about 7 s), counted the documents as errors and failed the build on max_error_share 0."""
    with FakeSearchServer("opensearch-2.11-sustained-429") as fake:
        time = FakeTime()
        backend = backend_for(fake, time, es_max_error_share=0.0)
        backend.bulk_backoff_s = 1.0
        report = backend.build(*corpus(), build_info())
        assert report.errors == {} and report.count == N == backend.count()
        assert len(time.waits) > 8 and sum(time.waits) > 7.0
        assert len(set(time.waits)) == len(time.waits) and max(time.waits) <= 60.0  # jittered, capped


def test_overload_fails_the_build_only_at_its_own_deadline() -> None:
    refusing = ServerProfile(
        "forever-429",
        "2.11.1",
        "opensearch",
        None,
        "The OpenSearch Project: https://opensearch.org/",
        ("opensearch-knn",),
        faults=Faults(bulk_rejections=10**9),
    )
    with FakeSearchServer(refusing) as fake:
        time = FakeTime()
        backend = backend_for(fake, time, es_build_timeout=600.0)
        backend.bulk_backoff_s = 1.0
        with pytest.raises(UnavailableError) as gave_up:
            backend.build(*corpus(), build_info())
        message = str(gave_up.value)
        assert "IMAGE_SEARCH_ES_BUILD_TIMEOUT" in message and "429" in message and "unchanged" in message
        assert sum(time.waits) == pytest.approx(600.0) and builds(fake) == set()


def test_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    time = FakeTime()
    backoff = Backoff(deadline=1e9, base_s=1.0, clock=time.clock, sleep=time.sleep, rng=random.Random(7))
    for _ in range(10):
        backoff.wait("documents", "es_rejected_execution_exception: queue full")
    caps = [min(60.0, 2.0**n) for n in range(10)]
    assert all(0.0 <= w <= cap for w, cap in zip(time.waits, caps))
    assert np.mean(time.waits[-4:]) > 5.0
