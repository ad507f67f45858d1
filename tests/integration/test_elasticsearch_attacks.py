"""Attacks on the cluster half of issue #23: a shared cluster, racing builds, servers that answer unlike the fake.

Each test plays one thing a shared cluster or a real server does (source named in its
docstring) against the wire-level fake (``tests/es_fake/``, a real HTTP server on
127.0.0.1). Races are held at a known point by wrapping one client call, never by sleeping.
"""

from __future__ import annotations

import pytest
from elasticsearch7 import Elasticsearch

from resources.errors import ImageSearchError, UnavailableError
from resources.index.es_engines import META_KEY
from resources.index.es_publish import BuildLock, clean_up
from resources.index.es_transport import CheckedTransport
from tests.es_fake import FakeSearchServer, Faults, ServerProfile
from tests.es_fake.helpers import FakeTime, backend_for, build_info, builds, corpus

STAMP = "20991231235959000000"


def raw(fake: FakeSearchServer) -> Elasticsearch:
    return Elasticsearch(fake.url, transport_class=CheckedTransport)


def ours(name: str, alias: str = "image_search") -> dict:
    """The ``_meta`` this project writes into a build (resources/index/elasticsearch.py ``_build_and_publish``)."""
    return {"_meta": {META_KEY: {"name": name, "alias": alias}}, "properties": {"describe": {"type": "text"}}}


# -- a shared cluster ------------------------------------------------------------------------------


def test_the_clean_up_of_a_finished_build_never_deletes_the_next_builds_index(monkeypatch) -> None:
    """Two processes: build A publishes and gives up its lock; build B takes the lock and creates its index
    (held there by wrapping A's release); only then does A clean up. Before: A cleaned up after releasing the
    lock, so B's unaliased in-flight build (name and ``_meta`` of a stale build) was deleted under it."""
    with FakeSearchServer("opensearch-2.11") as fake:
        first = backend_for(fake)
        docs, vectors = corpus()
        first.build(docs, vectors, build_info())
        in_flight = f"image_search_v{STAMP}"
        release = BuildLock.release

        def then_next_build_starts(lock: BuildLock) -> None:
            release(lock)
            if in_flight not in fake.indices:
                BuildLock(raw(fake), "image_search", fake.url, 600).acquire()
                raw(fake).indices.create(index=in_flight, mappings=ours(in_flight))

        monkeypatch.setattr(BuildLock, "release", then_next_build_starts)
        second = first.build(docs, vectors, build_info())
        assert in_flight in fake.indices, "the next build's index was deleted by the previous build's clean-up"
        assert fake.aliases == {"image_search": {second.name}}


def test_a_colleagues_alias_of_the_same_name_is_not_taken_over() -> None:
    """A colleague's alias ``image_search`` points at their own index (no ``_meta`` of ours). Publishing would
    ``remove`` it from their index and point it at ours: their readers would silently get our photos. The
    alias is a shared name like a concrete index (docs/backends.md "Never someone else's index"): stop, name it,
    write nothing."""
    with FakeSearchServer("opensearch-2.11") as fake:
        raw(fake).indices.create(index="their_photos", mappings={"properties": {"describe": {"type": "text"}}})
        raw(fake).indices.put_alias(index="their_photos", name="image_search")
        with pytest.raises(ImageSearchError) as refused:
            backend_for(fake).build(*corpus(), build_info())
        message = str(refused.value)
        assert "their_photos" in message and "did not build" in message and "\n" not in message
        assert fake.aliases == {"image_search": {"their_photos"}} and builds(fake) == {"their_photos"}


def test_an_alias_on_two_indices_one_of_them_a_strangers_is_left_alone() -> None:
    """Someone added our alias to their index too (``POST _aliases add``; an alias may name many indices).
    The build must not strip it from their index: it stops naming it."""
    with FakeSearchServer("opensearch-2.11") as fake:
        backend = backend_for(fake)
        docs, vectors = corpus()
        old = backend.build(docs, vectors, build_info())
        raw(fake).indices.create(index="their_photos")
        raw(fake).indices.put_alias(index="their_photos", name="image_search")
        with pytest.raises(ImageSearchError, match="their_photos"):
            backend.build(docs, vectors, build_info())
        assert fake.aliases == {"image_search": {old.name, "their_photos"}}
        assert builds(fake) == {old.name, "their_photos"}


def test_an_alias_on_two_of_our_builds_is_published_as_exactly_one() -> None:
    """A hand-made rollback left the alias on two of our builds: one atomic swap removes both and adds the new
    one; both stay for rollback (the clean-up keeps what the alias pointed to)."""
    with FakeSearchServer("opensearch-2.11") as fake:
        backend = backend_for(fake)
        docs, vectors = corpus()
        a = backend.build(docs, vectors, build_info())
        b = backend.build(docs, vectors, build_info())
        raw(fake).indices.put_alias(index=a.name, name="image_search")
        c = backend.build(docs, vectors, build_info())
        assert fake.aliases == {"image_search": {c.name}} and sorted(c.details["previous"]) == sorted([a.name, b.name])
        assert builds(fake) == {a.name, b.name, c.name}


def test_forged_meta_for_another_alias_or_a_look_alike_name_is_never_cleaned_up() -> None:
    """Look-alikes: ``_meta`` copied from a build of ``image_search`` onto an index for another alias, a name with
    a 19-digit stamp, and a name matching ``image_search_v*`` through an alias only. None is deleted."""
    with FakeSearchServer("elasticsearch-7.17") as fake:
        client = raw(fake)
        other = f"image_search_v{STAMP}"
        client.indices.create(index=other, mappings=ours(other, alias="photos"))
        short = f"image_search_v{STAMP[:-1]}"
        client.indices.create(index=short, mappings=ours(short))
        client.indices.create(index="theirs", mappings=ours("theirs"))
        client.indices.put_alias(index="theirs", name=f"image_search_v{'1' * 20}")
        assert clean_up(client, "image_search", keep=set()) == []
        assert {other, short, "theirs"} <= set(fake.indices)


def test_a_lock_given_up_between_the_conflict_and_the_read_is_taken() -> None:
    """Build B's ``_create`` of the lock meets A's (409); A finishes and deletes the lock before B reads it (held
    there by wrapping B's ``get``). Before: B's read answered 404 and the build failed with "HTTP 404 while
    preparing a build"; the lock is free, so B takes it."""
    with FakeSearchServer("opensearch-2.11") as fake:
        a = BuildLock(raw(fake), "photos", fake.url, 600)
        a.acquire()
        client = raw(fake)
        read = client.get

        def after_a_is_done(**kwargs):
            a.release()
            client.get = read
            return read(**kwargs)

        client.get = after_a_is_done
        b = BuildLock(client, "photos", fake.url, 600)
        b.acquire()
        b.check()


def test_a_machine_whose_clock_runs_ahead_takes_over_a_live_lock_but_only_one_build_publishes() -> None:
    """Clock skew: ``expires_at`` is written by the builder's clock and read by another machine's. A machine
    ahead by more than IMAGE_SEARCH_ES_BUILD_TIMEOUT sees a live lock as expired and takes it over; the live
    build then fails its check before publishing (``BuildLock.check``), so the alias still moves once."""
    with FakeSearchServer("opensearch-2.11") as fake:
        backend = backend_for(fake, es_build_timeout=600)
        docs, vectors = corpus()

        skewed = BuildLock(raw(fake), "image_search", fake.url, 600, clock=lambda: 2e9 + 10_000)

        def skewed_machine_starts(done: int, total: int) -> None:
            if done == total and not skewed._version:
                skewed.acquire()

        with pytest.raises(ImageSearchError, match="lost its lock"):
            backend.build(docs, vectors, build_info(), progress=skewed_machine_starts)
        assert "image_search" not in fake.aliases


def test_a_takeover_resent_after_a_lost_answer_keeps_the_lock() -> None:
    """The conditional write that takes over an expired lock is applied, but its answer is lost and
    ``elasticsearch7`` resends it (``retry_on_timeout``, ``Transport.retry_on_status`` 502/503/504): the resend
    meets its own write and answers 409. Before: the build said another build took the lock, and its own
    takeover then blocked every build until it expired. Now the lock is read back: it is ours."""
    with FakeSearchServer("opensearch-2.11") as fake:
        BuildLock(raw(fake), "photos", fake.url, 600).acquire()
        fake.indices["photos_build_lock"].write("photos", {"owner": "crashed", "expires_at": 0.0})
        client = raw(fake)
        write = client.index

        def resent(**kwargs):
            write(**kwargs)
            return write(**kwargs)

        client.index = resent
        lock = BuildLock(client, "photos", fake.url, 600)
        lock.acquire()
        lock.check()
        lock.release()
        assert "photos" not in fake.indices["photos_build_lock"].docs


# -- a server that answers unlike a quiet one ------------------------------------------------------


def test_a_disk_full_cluster_fails_the_build_at_its_deadline_naming_the_flood_stage_block() -> None:
    """The load fills a node's disk: every bulk item answers 429 ``cluster_block_exception`` (read-only-allow-delete,
    ``IndexMetadata.INDEX_READ_ONLY_ALLOW_DELETE_BLOCK``). 429 is retried (the block lifts by itself once disk is
    freed, ``DiskThresholdMonitor`` in Elasticsearch 7.4+ and OpenSearch), but the build's one line at its
    deadline must say why. Before: "kept refusing ... as overloaded", the disk never named."""
    flooded = ServerProfile(
        "flood-stage",
        "2.11.1",
        "opensearch",
        None,
        "The OpenSearch Project: https://opensearch.org/",
        ("opensearch-knn",),
        faults=Faults(flood_stage=True),
    )
    with FakeSearchServer("opensearch-2.11") as fake:
        old = backend_for(fake).build(*corpus(), build_info())
        fake.switch_to(flooded)
        time = FakeTime()
        backend = backend_for(fake, time, es_build_timeout=300.0)
        with pytest.raises(UnavailableError) as gave_up:
            backend.build(*corpus(), build_info())
        message = str(gave_up.value)
        assert "flood-stage watermark" in message and "cluster_block_exception" in message and "\n" not in message
        assert "unchanged" in message and sum(time.waits) == pytest.approx(300.0)
        assert fake.aliases == {"image_search": {old.name}} and builds(fake) == {old.name}


def test_the_client_compatibility_variable_from_the_environment_never_reaches_the_server(monkeypatch) -> None:
    """``ELASTIC_CLIENT_APIVERSIONING=1`` (set on machines that also talk to Elasticsearch 8) makes ``elasticsearch7``
    send ``application/vnd.elasticsearch+json;compatible-with=7`` (``elasticsearch7/client/utils.py``), which
    OpenSearch and Elasticsearch 7.10 answer 406 "Content-Type header [...] is not supported" (opensearch-py #46:
    OpenSearch has no such media type). Before: every request of a build carried it. Now plain JSON always."""
    monkeypatch.setenv("ELASTIC_CLIENT_APIVERSIONING", "1")
    with FakeSearchServer("opensearch-2.11") as fake:
        backend_for(fake).build(*corpus(), build_info())
        sent = {v for h in fake.headers_seen for k, v in h.items() if k in ("accept", "content-type")}
        assert sent and not [v for v in sent if "vnd.elasticsearch" in v], sent


# -- a cluster under search load, mid-upgrade, or losing answers ------------------------------------


def _os_2_11(**faults) -> ServerProfile:
    return ServerProfile(
        "opensearch-2.11-faults",
        "2.11.1",
        "opensearch",
        None,
        "The OpenSearch Project: https://opensearch.org/",
        ("opensearch-knn",),
        faults=Faults(**faults),
    )


@pytest.mark.parametrize("breaker", [None, "TRANSIENT"], ids=["search-queue-full", "transient-breaker"])
def test_searches_refused_for_overload_during_the_self_check_are_sent_again(breaker) -> None:
    """The self-check's ``_msearch`` meets a full search queue or a TRANSIENT breaker: some items answer 429
    (``Faults.search_rejections``). Before: ``_search_many`` raised ClusterError and the loaded build was
    dropped. Overload is not bad data: the refused searches go again under the build's backoff."""
    with FakeSearchServer(_os_2_11(search_rejections=5, search_breaker=breaker)) as fake:
        time = FakeTime()
        report = backend_for(fake, time).build(*corpus(), build_info())
        assert fake.aliases == {"image_search": {report.name}} and time.waits
        sent = [len(b) // 2 for b in fake.bodies("POST", "/_msearch") + fake.bodies("GET", "/_msearch")]
        assert sent[0] > 5 and sent[1] == 5, sent  # only the refused items went again


def test_a_permanent_breaker_or_endless_overload_in_the_self_check_fails_and_the_old_build_serves() -> None:
    """A PERMANENT breaker will not clear by waiting: the build fails at once. A search queue full until the
    build's deadline fails then, naming the refusal, in one line."""
    with FakeSearchServer("opensearch-2.11") as fake:
        old = backend_for(fake).build(*corpus(), build_info())
        fake.switch_to(_os_2_11(search_rejections=1, search_breaker="PERMANENT"))
        time = FakeTime()
        with pytest.raises(ImageSearchError, match="circuit_breaking_exception") as failed:
            backend_for(fake, time).build(*corpus(), build_info())
        assert "429" in str(failed.value) and not time.waits
        fake.switch_to(_os_2_11(search_rejections=10**6))
        time = FakeTime()
        with pytest.raises(UnavailableError) as gave_up:
            backend_for(fake, time, es_build_timeout=300.0).build(*corpus(), build_info())
        message = str(gave_up.value)
        assert "rejected_execution_exception" in message and "self-check" in message and "\n" not in message
        assert sum(time.waits) == pytest.approx(300.0)
        assert fake.aliases == {"image_search": {old.name}} and builds(fake) == {old.name}


def test_a_rolling_upgrade_whose_cluster_manager_runs_2_17_creates_the_index_without_the_2_18_setting(caplog) -> None:
    """``GET /`` answers 2.18 from an upgraded node while the cluster manager, which validates index settings, still
    runs 2.17 and refuses ``index.knn.advanced.approximate_threshold`` as unknown (``AbstractScopedSettings.validate``:
    "unknown setting [...] please check that any required plugins are installed"). Before: the build failed on that
    400. Now the create goes again without it, saying so once; the self-check then judges the scores: here the 2.18
    data node searches the graph-less small segments exactly, by another formula, so the build fails there."""
    with FakeSearchServer("opensearch-2.18-manager-2.17") as fake:
        caplog.set_level("INFO", logger="resources.index.elasticsearch")
        with pytest.raises(ImageSearchError) as failed:
            backend_for(fake, es_engine="escloud").build(*corpus(), build_info())
        creates = [b for b in fake.bodies("PUT", "") if b and "mappings" in b and "properties" in b["mappings"]]
        builds_created = [b for b in creates if "photo_embedding" in b["mappings"]["properties"]]
        threshold = [("knn.advanced.approximate_threshold" in b["settings"]["index"]) for b in builds_created]
        assert threshold == [True, False]
        said = [m for m in caplog.messages if "approximate_threshold as an unknown setting" in m]
        assert len(said) == 1 and "rolling upgrade" in said[0]
        assert "unknown setting" not in str(failed.value) and "self-check" in str(failed.value)
        assert "image_search" not in fake.aliases and not builds(fake)


def test_a_create_resent_after_a_lost_answer_meets_its_own_index_and_goes_on() -> None:
    """The first ``PUT <index>`` is applied but its answer lost; ``elasticsearch7`` resends it (timeout,
    502/503/504) and the resend meets 400 ``resource_already_exists_exception``. Before: read as "this mapping form
    was refused" and the build failed. Now the index's ``_meta`` is read: this build's, so the build goes on."""
    with FakeSearchServer("opensearch-2.11") as fake:
        backend = backend_for(fake)
        create = backend.client.indices.create

        def resent(**kwargs):
            create(**kwargs)
            return create(**kwargs)

        backend.client.indices.create = resent
        report = backend.build(*corpus(), build_info())
        assert fake.aliases == {"image_search": {report.name}}


def test_an_index_of_the_same_name_made_by_someone_else_fails_the_build_and_is_kept() -> None:
    """Another process made an index of this build's very name first (its ``_meta`` names another build): the
    build stops in one line and never deletes it."""
    with FakeSearchServer("opensearch-2.11") as fake:
        backend = backend_for(fake)
        create = backend.client.indices.create

        def beaten(**kwargs):
            if kwargs["index"].startswith("image_search_v"):
                raw(fake).indices.create(index=kwargs["index"], mappings=ours("image_search_v1"))
            return create(**kwargs)

        backend.client.indices.create = beaten
        with pytest.raises(ImageSearchError) as refused:
            backend.build(*corpus(), build_info())
        message = str(refused.value)
        assert "already exists" in message and "did not make it" in message and "\n" not in message
        assert len(builds(fake)) == 1 and "image_search" not in fake.aliases
