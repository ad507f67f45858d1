"""What only the wire-level fake can show about the Elasticsearch backend.

The exact bodies on the wire for each engine, a server dying mid-build, what each engine
refuses, version quirks (compatibility mode, upgrades across OpenSearch 2.19, credentials
without ``monitor``), bulk faults and TLS. The fake (``tests/es_fake/``) is a real HTTP
server on 127.0.0.1, since no search server can be installed here; the tests that also run
against a real cluster are in ``tests/integration/test_elasticsearch_backend.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import warnings
from typing import Iterator

import numpy as np
import pytest
import trustme
from elasticsearch7 import Elasticsearch
from elasticsearch7.exceptions import TransportError, UnsupportedProductError

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.index.base import Filters
from resources.index.elasticsearch import ElasticsearchBackend, choose_engine, read_server
from resources.index.es_transport import CheckedTransport
from tests.es_fake import PROFILES, FakeSearchServer, ServerProfile
from tests.es_fake.helpers import DIM, N, build_info, builds, corpus, probe_at


@pytest.fixture
def fake_escloud() -> Iterator[FakeSearchServer]:
    with FakeSearchServer("escloud-7.10") as fake:
        yield fake


# -- what only the fake can show ----------------------------------------------------------------

DESIGN_PROPERTIES = {
    "photo_id": {"type": "keyword"},
    "photo_url": {"type": "keyword"},
    "describe": {"type": "text"},
    "photo_embedding": {"type": "knn_vector", "dimension": DIM},
}
DESIGN_SETTINGS = {
    "index.refresh_interval": "60s",
    "index.number_of_shards": "3",
    "index.knn.space_type": "cosinesimil",
    "index.knn": "true",
    "index.number_of_replicas": "1",
}


def test_fake_escloud_gets_the_original_designs_mapping_and_queries(fake_escloud: FakeSearchServer) -> None:
    backend = ElasticsearchBackend(Settings(es_url=fake_escloud.url, index_name="image_search"))
    assert backend.engine == "escloud"
    docs, vectors = corpus()
    report = backend.build(docs, vectors, build_info())
    (created,) = fake_escloud.bodies("PUT", f"/{report.name}")
    properties = created["mappings"]["properties"]
    assert created["mappings"]["dynamic"] == "false"
    assert {k: properties[k] for k in DESIGN_PROPERTIES} == DESIGN_PROPERTIES
    live = backend.client.indices.get_settings(index="image_search", flat_settings=True)[report.name]["settings"]
    assert {k: live[k] for k in DESIGN_SETTINGS} == DESIGN_SETTINGS
    assert fake_escloud.bodies("PUT", f"/{report.name}/_settings")[0] == {
        "index": {"refresh_interval": "60s", "number_of_replicas": "1"}
    }
    assert (
        created["settings"]["index"]["refresh_interval"] == "-1"
        and created["settings"]["index"]["number_of_replicas"] == "0"
    )

    backend.knn(vectors[0], 5)
    plain = fake_escloud.bodies("POST", "/image_search/_search")[-1]
    rounded = np.round(vectors[0].astype(np.float64), 6).tolist()
    assert plain["size"] == 5
    assert plain["query"] == {"knn": {"photo_embedding": {"vector": rounded, "k": 5}}}
    assert {"describe", "photo_url"} <= set(plain["_source"])

    backend.knn(vectors[0], 5, Filters(orientation="square"))
    filtered = fake_escloud.bodies("POST", "/image_search/_search")[-1]
    assert filtered["query"] == {
        "script_score": {
            "query": {"bool": {"filter": [{"term": {"orientation": "square"}}]}},
            "script": {
                "source": "knn_score",
                "lang": "knn",
                "params": {"field": "photo_embedding", "query_value": rounded, "space_type": "cosinesimil"},
            },
        }
    }
    bulk = fake_escloud.bodies("POST", "/_bulk")[0]
    assert bulk[0] == {"index": {"_index": report.name, "_id": "p00000"}}
    assert all(len(repr(x).split(".")[-1]) <= 6 for x in bulk[1]["photo_embedding"])
    assert fake_escloud.bodies("POST", "/_aliases") == [
        {"actions": [{"add": {"index": report.name, "alias": "image_search"}}]}
    ]


@pytest.mark.parametrize(
    ("profile", "vector_mapping"),
    [
        (
            "opensearch-3.1",
            {
                "type": "knn_vector",
                "dimension": DIM,
                "method": {"name": "hnsw", "space_type": "cosinesimil", "engine": "lucene"},
            },
        ),
        ("elasticsearch-7.17", {"type": "dense_vector", "dims": DIM}),
    ],
)
def test_fake_other_engines_get_their_own_mapping(profile: str, vector_mapping: dict) -> None:
    with FakeSearchServer(profile) as fake:
        backend = ElasticsearchBackend(Settings(es_url=fake.url))
        report = backend.build(*corpus(), build_info())
        (created,) = fake.bodies("PUT", f"/{report.name}")
        assert created["mappings"]["properties"]["photo_embedding"] == vector_mapping
        assert "knn.space_type" not in created["settings"]["index"]


def test_fake_server_gone_mid_build_leaves_the_old_index_serving() -> None:
    with FakeSearchServer("opensearch-2.11") as fake:
        backend = ElasticsearchBackend(Settings(es_url=fake.url))
        docs, vectors = corpus()
        good = backend.build(docs, vectors, build_info())
        fake.drop_bulk = True
        with pytest.raises(ImageSearchError, match=r"cannot reach http://127\.0\.0\.1:\d+ while loading index"):
            backend.build(docs, vectors, build_info())
        fake.drop_bulk = False
        assert builds(fake) == {good.name}
        assert backend.count() == N and backend.info().name == good.name
        assert backend.knn(vectors[2], 1)[0].photo_id == "p00002"


@pytest.mark.parametrize(
    ("profile", "engine"),
    [
        ("escloud-7.10", "escloud"),
        ("opensearch-2.11", "opensearch"),
        ("opensearch-2.19", "opensearch"),
        ("opensearch-3.1", "opensearch"),
        ("elasticsearch-7.17", "elasticsearch"),
    ],
)
def test_fake_auto_detection_and_the_product_check(profile: str, engine: str) -> None:
    with FakeSearchServer(profile) as fake:
        stock = Elasticsearch(fake.url)
        if PROFILES[profile].opensearch or PROFILES[profile].build_flavor == "oss":
            with pytest.raises(UnsupportedProductError):
                stock.info()
        else:
            assert stock.info()["version"]["number"] == PROFILES[profile].number
        assert ElasticsearchBackend(Settings(es_url=fake.url)).engine == engine


def test_fake_an_elasticsearch_7_with_the_knn_plugin_gets_the_design_engine() -> None:
    vendor = ServerProfile("vendor", "7.10.2", None, "default", "You Know, for Search", ("opendistro-knn",))
    with FakeSearchServer(vendor) as fake:
        assert ElasticsearchBackend(Settings(es_url=fake.url)).engine == "escloud"
        assert ElasticsearchBackend(Settings(es_url=fake.url, es_engine="elasticsearch")).engine == "elasticsearch"


def test_fake_unsupported_servers_and_engines_are_refused_in_one_line() -> None:
    with FakeSearchServer("opensearch-3.1") as fake:
        with pytest.raises(ImageSearchError, match="IMAGE_SEARCH_ES_ENGINE=elasticsearch does not run on OpenSearch"):
            ElasticsearchBackend(Settings(es_url=fake.url, es_engine="elasticsearch"))
    with FakeSearchServer("elasticsearch-oss-7.10") as fake:
        with pytest.raises(ImageSearchError, match="neither a k-NN plugin nor dense_vector"):
            ElasticsearchBackend(Settings(es_url=fake.url))
        with pytest.raises(
            ImageSearchError, match="IMAGE_SEARCH_ES_ENGINE=escloud does not run on Elasticsearch 7.10.2"
        ):
            ElasticsearchBackend(Settings(es_url=fake.url, es_engine="escloud"))
    bare = dataclasses.replace(PROFILES["opensearch-2.11"], name="opensearch-min", plugins=())
    with FakeSearchServer(bare) as fake:
        with pytest.raises(ImageSearchError, match="OpenSearch 2.11.1 has neither a k-NN plugin"):
            ElasticsearchBackend(Settings(es_url=fake.url))
    other = ServerProfile("other", "1.0.0", None, None, "Some other database")
    with FakeSearchServer(other) as fake:
        with pytest.raises(ImageSearchError, match="neither Elasticsearch nor OpenSearch"):
            ElasticsearchBackend(Settings(es_url=fake.url))
    newer = ServerProfile("es8", "8.15.0", None, "default", "You Know, for Search")
    with FakeSearchServer(newer) as fake:
        with pytest.raises(ImageSearchError, match="Elasticsearch 8.15.0 is not supported"):
            ElasticsearchBackend(Settings(es_url=fake.url))


def test_fake_refuses_what_each_engine_refuses() -> None:
    design = {
        "settings": {"index": {"knn": "true", "knn.space_type": "cosinesimil"}},
        "mappings": {"properties": {"photo_embedding": {"type": "knn_vector", "dimension": 3}}},
    }
    with FakeSearchServer("opensearch-3.1") as fake:
        with pytest.raises(TransportError) as refused:
            Elasticsearch(fake.url, transport_class=CheckedTransport).indices.create(index="x", **design)
        assert refused.value.status_code == 400 and "index.knn.space_type" in refused.value.info["error"]["reason"]
    with FakeSearchServer("elasticsearch-7.17") as fake:
        with pytest.raises(TransportError) as refused:
            Elasticsearch(fake.url).indices.create(index="x", mappings=design["mappings"])
        assert refused.value.error == "mapper_parsing_exception"
    with FakeSearchServer("opensearch-2.11") as fake:
        raw = Elasticsearch(fake.url, transport_class=CheckedTransport)
        raw.indices.create(index="x", **design)
        result = raw.bulk(body=[{"index": {"_index": "x", "_id": "a"}}, {"photo_embedding": [1.0, 0.0]}])
        item = result["items"][0]["index"]
        assert result["errors"] and item["status"] == 400 and item["error"]["type"] == "mapper_parsing_exception"
        with pytest.raises(TransportError, match="does not support filters"):
            raw.search(
                index="x",
                query={"knn": {"photo_embedding": {"vector": [1, 0, 0], "k": 1, "filter": {"match_all": {}}}}},
            )


@pytest.mark.parametrize(
    ("profile", "engine"),
    [
        ("opensearch-2.11", "nmslib"),
        ("opensearch-2.17", "nmslib"),
        ("opensearch-2.18", "nmslib"),
        ("opensearch-2.19", "faiss"),
        ("opensearch-3.1", "faiss"),
    ],
)
def test_fake_escloud_on_opensearch_declares_cosine_on_the_field(profile: str, engine: str) -> None:
    """OpenSearch 2.17 and 2.18 ignore the index-level space type (k-NN #2296) and 3.x removed it:
    the field's own method says cosinesimil, on nmslib before 2.19 and faiss from 2.19 (k-NN #2376, #2427)."""
    with FakeSearchServer(profile) as fake:
        backend = ElasticsearchBackend(Settings(es_url=fake.url, es_engine="escloud"))
        docs, vectors = corpus()
        report = backend.build(docs, vectors, build_info())
        (created,) = fake.bodies("PUT", f"/{report.name}")
        assert created["mappings"]["properties"]["photo_embedding"] == {
            "type": "knn_vector",
            "dimension": DIM,
            "method": {"name": "hnsw", "space_type": "cosinesimil", "engine": engine},
        }
        assert "knn.space_type" not in created["settings"]["index"]
        probe = probe_at(vectors, 5, 0.5)
        for filters in (None, Filters(orientation=docs.orientation[5])):
            assert {h.photo_id: h.score for h in backend.knn(probe, N, filters)}["p00005"] == pytest.approx(
                0.5, abs=1e-4
            )


def test_fake_a_build_whose_field_would_not_score_by_cosine_is_never_published(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mapping is read back after creation. To get a field the engine resolves to l2, this test
    makes the escloud engine send the design's index-level form to OpenSearch 2.18 (k-NN #2296)."""
    from resources.index import elasticsearch as es

    with FakeSearchServer("opensearch-2.18") as fake:
        backend = ElasticsearchBackend(Settings(es_url=fake.url, es_engine="escloud"))
        docs, vectors = corpus()
        good = backend.build(docs, vectors, build_info())
        legacy = es.EsCloudEngine(dataclasses.replace(backend.server, distribution="elasticsearch"))
        monkeypatch.setattr(backend.impl, "mappings", legacy.mappings)
        with pytest.raises(ImageSearchError) as refused:
            backend.build(docs, vectors, build_info())
        message = str(refused.value)
        assert "l2" in message and "cosinesimil" in message and "unchanged" in message and "\n" not in message
        assert builds(fake) == {good.name} and backend.info().name == good.name


def test_fake_opensearch_in_compatibility_mode_is_recognised() -> None:
    """compatibility.override_main_response_version: GET / says 7.10.2 without a distribution; GET /_nodes tells the truth."""
    with FakeSearchServer("opensearch-2.11-compatibility") as fake:
        version = Elasticsearch(fake.url, transport_class=CheckedTransport).info()["version"]
        assert version["number"] == "7.10.2" and "distribution" not in version
        backend = ElasticsearchBackend(Settings(es_url=fake.url))
        assert backend.engine == "opensearch"
        assert backend.server.label == "OpenSearch 2.11.1 (compatibility mode)"


def test_compatibility_mode_counts_the_lowest_node_version_or_asks_for_the_engine() -> None:
    """Mid rolling upgrade the nodes differ: the oldest decides. Without GET /_nodes, ``auto`` cannot choose."""
    root = PROFILES["opensearch-2.11-compatibility"].root()
    server = read_server(root, ["opensearch-knn 2.19.1.0"], ["2.19.1", "2.18.0"])
    assert server.label == "OpenSearch 2.18.0 (compatibility mode)"
    hidden = read_server(root, None, None)
    assert hidden.version is None and hidden.distribution == "opensearch"
    with pytest.raises(ImageSearchError, match="GET /_nodes was refused.*set IMAGE_SEARCH_ES_ENGINE"):
        choose_engine("auto", hidden)
    assert choose_engine("escloud", hidden).mappings(4)[0][1]["method"]["engine"] == "nmslib"


def test_fake_credentials_without_the_monitor_privilege(caplog: pytest.LogCaptureFixture) -> None:
    """GET / needs cluster:monitor/main. With an explicit engine the backend goes on and warns once
    about what it could not check; with ``auto`` it names the setting to use."""
    with FakeSearchServer("opensearch-2.11-no-monitor") as fake:
        with pytest.raises(ImageSearchError) as refused:
            ElasticsearchBackend(Settings(es_url=fake.url))
        message = str(refused.value)
        assert "403" in message and "cluster:monitor/main" in message and "IMAGE_SEARCH_ES_ENGINE" in message
        assert "\n" not in message
        caplog.clear()
        backend = ElasticsearchBackend(Settings(es_url=fake.url, es_engine="opensearch"))
        ours = "resources.index.elasticsearch"
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == ours]
        assert len(warnings) == 1 and "cluster:monitor/main" in warnings[0] and "cluster check" in warnings[0]
        docs, vectors = corpus()
        backend.build(docs, vectors, build_info())
        assert backend.knn(vectors[3], 1)[0].photo_id == "p00003"


def test_fake_partial_shard_failures_fail_the_search_in_one_line() -> None:
    """HTTP 200 with ``_shards.failed > 0`` is a failed search, not a short result list."""
    with FakeSearchServer("opensearch-2.11-3-shards") as fake:
        backend = ElasticsearchBackend(Settings(es_url=fake.url))
        docs, vectors = corpus()
        good = backend.build(docs, vectors, build_info())
        fake.switch_to("opensearch-2.11-partial-shards")
        for search in (lambda: backend.knn(vectors[0], 5), lambda: backend.keyword("lake", 5), backend.count):
            with pytest.raises(ImageSearchError) as failed:
                search()
            message = str(failed.value)
            assert "2 of 3 shards" in message and "node_disconnected_exception" in message and "\n" not in message
        with pytest.raises(ImageSearchError, match="2 of 3 shards.*unchanged"):
            backend.build(docs, vectors, build_info())
        fake.switch_to("opensearch-2.11-3-shards")
        assert builds(fake) == {good.name} and backend.count() == N


def test_fake_scores_follow_each_index_created_version_after_an_upgrade() -> None:
    """From 2.19 the knn_score script returns (1 + cos) / 2 only on indices created by 2.19 (k-NN #2357/#2375),
    while graph (plain kNN) scores changed for every index. A process started before the upgrade
    still converts filtered scores right, and all scores from the first build made after it."""
    with FakeSearchServer("opensearch-2.18") as fake:
        before = ElasticsearchBackend(Settings(es_url=fake.url, es_engine="escloud"))
        docs, vectors = corpus()
        before.build(docs, vectors, build_info())
        fake.switch_to("opensearch-2.19")
        probe = probe_at(vectors, 5, 0.5)
        filtered = Filters(orientation=docs.orientation[5])

        def cosine(backend: ElasticsearchBackend, filters: Filters | None) -> float:
            return {h.photo_id: h.score for h in backend.knn(probe, N, filters)}["p00005"]

        after = ElasticsearchBackend(Settings(es_url=fake.url, es_engine="escloud"))
        assert cosine(after, None) == pytest.approx(0.5, abs=1e-4)
        assert cosine(after, filtered) == pytest.approx(0.5, abs=1e-4)
        assert cosine(before, filtered) == pytest.approx(0.5, abs=1e-4)
        before.build(docs, vectors, build_info())
        for backend in (before, after):
            for filters in (None, filtered):
                assert cosine(backend, filters) == pytest.approx(0.5, abs=1e-4), (backend.server.label, filters)


@pytest.mark.parametrize("profile", ["opensearch-2.11-item-429", "opensearch-2.11-bulk-429"])
def test_fake_rejected_bulk_items_and_requests_are_retried(profile: str) -> None:
    with FakeSearchServer(profile) as fake:
        backend = ElasticsearchBackend(Settings(es_url=fake.url))
        backend.bulk_backoff_s = 0.0
        docs, vectors = corpus()
        report = backend.build(docs, vectors, build_info())
        assert report.errors == {} and report.count == N == backend.count()
        assert len(fake.bodies("POST", "/_bulk")) > 1


def test_fake_a_bulk_request_refused_as_too_large_is_split() -> None:
    """HTTP 413 (an empty body, as Netty answers past http.max_content_length or a proxy's limit)."""
    with FakeSearchServer("opensearch-2.11-bulk-413") as fake:
        backend = ElasticsearchBackend(Settings(es_url=fake.url))
        docs, vectors = corpus(n=300)
        report = backend.build(docs, vectors, build_info())
        assert report.errors == {} and report.count == 300 == backend.count()
        assert backend.knn(vectors[299], 1)[0].photo_id == "p00299"


def test_fake_a_circuit_breaker_fails_the_build_in_one_line_and_the_old_build_serves() -> None:
    with FakeSearchServer("opensearch-2.11") as fake:
        backend = ElasticsearchBackend(Settings(es_url=fake.url))
        backend.bulk_backoff_s = 0.0
        docs, vectors = corpus()
        good = backend.build(docs, vectors, build_info())
        fake.switch_to("opensearch-2.11-circuit-breaker")
        with pytest.raises(ImageSearchError) as tripped:
            backend.build(docs, vectors, build_info())
        message = str(tripped.value)
        assert "circuit_breaking_exception" in message and "heap" in message and "unchanged" in message
        assert "\n" not in message
        assert builds(fake) == {good.name} and backend.count() == N


def test_fake_open_distro_refuses_a_method_and_more_than_10000_dimensions() -> None:
    """ESCloud 7.10 runs the Open Distro 1.13 k-NN plugin (KNNVectorFieldMapper at k-NN tag v1.13.0.0)."""
    with FakeSearchServer("escloud-7.10") as fake:
        raw = Elasticsearch(fake.url, transport_class=CheckedTransport)
        method = {"name": "hnsw", "space_type": "cosinesimil", "engine": "nmslib"}
        with pytest.raises(TransportError, match=r"unknown parameter \[method\]"):
            raw.indices.create(
                index="x", mappings={"properties": {"v": {"type": "knn_vector", "dimension": 4, "method": method}}}
            )
        with pytest.raises(TransportError, match="cannot be greater than 10000"):
            raw.indices.create(index="x", mappings={"properties": {"v": {"type": "knn_vector", "dimension": 10_001}}})
        backend = ElasticsearchBackend(Settings(es_url=fake.url))
        docs, _ = corpus(n=2)
        sent = len(fake.requests)
        with pytest.raises(ImageSearchError, match="10001-dimensional vectors exceed .*10000"):
            backend.build(docs, np.ones((2, 10_001), dtype=np.float32), build_info())
        assert not fake.indices and len(fake.requests) == sent


# -- transport security ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, str]:
    """A server TLS context signed by a throwaway CA, and that CA's bundle path."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return context, str(bundle)


def test_tls_verification_is_on_by_default(tls, caplog: pytest.LogCaptureFixture) -> None:
    context, bundle = tls
    with FakeSearchServer("opensearch-2.11", ssl_context=context) as fake:
        assert fake.url.startswith("https://")
        assert Settings().es_verify_certs is True
        with pytest.raises(
            ImageSearchError,
            match="TLS certificate verification failed for https://127.0.0.1.*IMAGE_SEARCH_ES_CA_CERTS",
        ):
            ElasticsearchBackend(Settings(es_url=fake.url))
        trusted = ElasticsearchBackend(Settings(es_url=fake.url, es_ca_certs=bundle))
        assert trusted.count() == 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ElasticsearchBackend(Settings(es_url=fake.url, es_verify_certs=False))
        assert "TLS certificate verification is off" in caplog.text
