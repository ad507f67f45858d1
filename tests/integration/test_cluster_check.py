"""``image-search cluster check`` against every profile of the wire-level fake (``tests/es_fake/``).

No real cluster can run here, so each profile stands for one real answer (its comment in
the fake names the source). The check must pass where a build works, and fail with one line
naming the problem where it does not; either way it leaves the cluster's other indices as
they were. The command run as a user does, in a subprocess: test_cluster_check_cli.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from image_search.cli import main
from resources.config import Settings
from resources.index.elasticsearch import ElasticsearchBackend
from tests.es_fake import PROFILES, FakeSearchServer
from tests.es_fake.helpers import build_info, corpus

SECRET = "s3cr3t-Pa55"


#: (profile, IMAGE_SEARCH_ES_ENGINE) where a build works, so the check passes.
PASSING = [
    ("escloud-7.10", "auto"),
    ("opensearch-2.11", "auto"),
    ("opensearch-2.11", "escloud"),
    ("opensearch-2.17", "escloud"),
    ("opensearch-2.18", "escloud"),
    ("opensearch-2.19", "auto"),
    ("opensearch-2.19", "escloud"),
    ("opensearch-3.1", "auto"),
    ("opensearch-3.1", "escloud"),
    ("elasticsearch-7.17", "auto"),
    ("opensearch-2.11-compatibility", "auto"),
    ("opensearch-2.11-no-monitor", "opensearch"),
    ("escloud-7.10-no-monitor", "escloud"),
    ("opensearch-2.11-3-shards", "auto"),
    ("opensearch-2.11-item-429", "auto"),
    ("opensearch-2.11-bulk-429", "auto"),
    ("opensearch-2.11-bulk-413", "auto"),
    ("opensearch-2.11-sustained-429", "auto"),
    ("opensearch-2.11-alias-504", "auto"),
    ("opensearch-2.18-manager-2.17", "auto"),
]
#: (profile, IMAGE_SEARCH_ES_ENGINE, the failing check, what its line must say).
FAILING = [
    ("elasticsearch-oss-7.10", "auto", "connect", "neither a k-NN plugin nor dense_vector"),
    ("opensearch-2.11-no-monitor", "auto", "connect", "cluster:monitor/main"),
    ("opensearch-2.11-circuit-breaker", "auto", "build", "circuit_breaking_exception"),
    ("opensearch-2.11-partial-shards", "auto", "build", "only 2 of 3 shards answered"),
    ("opensearch-2.19-no-settings", "escloud", "build", "indices:monitor/settings/get"),
]


def test_every_profile_is_checked() -> None:
    assert {p for p, _ in PASSING} | {p for p, *_ in FAILING} == set(PROFILES)


def _check(fake: FakeSearchServer, engine: str, monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[int, list[str]]:
    for name in [n for n in os.environ if n.startswith("IMAGE_SEARCH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("IMAGE_SEARCH_BACKEND", "elasticsearch")
    monkeypatch.setenv("IMAGE_SEARCH_ES_URL", fake.url.replace("://", f"://elastic:{SECRET}@"))
    monkeypatch.setenv("IMAGE_SEARCH_ES_ENGINE", engine)
    monkeypatch.setattr(ElasticsearchBackend, "bulk_backoff_s", 0.0)  # the fake's 429s clear at once
    capsys.readouterr()
    code = main(["cluster", "check"])
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    return code, captured.out.splitlines()


def _publish(fake: FakeSearchServer, engine: str) -> None:
    """A published build of ``image_search`` and an index named like it, as a user's cluster would hold."""
    backend = ElasticsearchBackend(Settings(es_url=fake.url, es_engine=engine))
    backend.bulk_backoff_s = 0.0
    backend.build(*corpus(), build_info())
    backend.client.indices.create(index="image_search_vnext_v20200101000000000000")


@pytest.mark.parametrize(("profile", "engine"), PASSING, ids=[f"{p}-{e}" for p, e in PASSING])
def test_cluster_check_passes_where_a_build_works(profile, engine, monkeypatch, capsys) -> None:
    with FakeSearchServer(profile) as fake:
        _publish(fake, engine)
        before = ({n: index.docs for n, index in fake.indices.items()}, {a: set(m) for a, m in fake.aliases.items()})
        code, lines = _check(fake, engine, monkeypatch, capsys)
        assert code == 0, "\n".join(lines)
        heads = [line.split()[0] for line in lines]
        for head in ("cluster", "plugins", "engine", "query", "filtered", "published"):
            assert head in heads, "\n".join(lines)
        assert any(line.startswith("mapping") for line in lines)
        results = {line.split(":")[0][6:]: line[:4] for line in lines if line[:4] in ("ok  ", "FAIL", "skip")}
        assert results == dict.fromkeys(
            [
                "build",
                "self-check",
                "cosine",
                "filtered",
                "filters",
                "keywords",
                "alias swap",
                "clean-up",
                "scratch removed",
            ],
            "ok  ",
        ), "\n".join(lines)
        assert any("cosine 0.5 scores 0.5000 unfiltered" in line for line in lines)
        (checked,) = [line for line in lines if line.startswith("ok    self-check: ")]
        assert "12 photos each found themselves first" in checked and "limit 0.001" in checked, checked
        assert any(line.endswith("(2 with a filter, 4 without the words '4 8')") for line in lines), "\n".join(lines)
        assert lines[-1].startswith("all checks passed on ")
        after = ({n: index.docs for n, index in fake.indices.items()}, {a: set(m) for a, m in fake.aliases.items()})
        assert after == before


def test_cluster_check_mid_upgrade_builds_without_the_2_18_setting_and_catches_the_mixed_scores(
    monkeypatch, capsys
) -> None:
    """A 2.18 node answers for a 2.17 cluster manager: the scratch build is made without
    ``index.knn.advanced.approximate_threshold`` (created by 2.17), and the cosine check names the
    scores the upgraded node gives its graph-less segments (the self-check's probes sit at cosine 0
    and 1, where both formulas agree)."""
    with FakeSearchServer("opensearch-2.18-manager-2.17") as fake:
        code, lines = _check(fake, "escloud", monkeypatch, capsys)
        assert code == 1
        assert any(line.startswith("ok    build: ") and "created by OpenSearch 2.17.1" in line for line in lines)
        cosine = "FAIL  cosine: a pair at cosine 0.5 scored 0.6667"
        assert any(line.startswith(cosine) for line in lines), "\n".join(lines)
        assert not [n for n in fake.indices if "_check_" in n]


@pytest.mark.parametrize(("profile", "engine", "check", "says"), FAILING, ids=[f"{p}-{e}" for p, e, *_ in FAILING])
def test_cluster_check_names_the_problem_in_one_line(profile, engine, check, says, monkeypatch, capsys) -> None:
    with FakeSearchServer(profile) as fake:
        code, lines = _check(fake, engine, monkeypatch, capsys)
        assert code == 1
        failures = [line for line in lines if line.startswith("FAIL")]
        assert len(failures) == 1 and failures[0].startswith(f"FAIL  {check}: ") and says in failures[0], "\n".join(
            lines
        )
        assert not [n for n in fake.indices if "_check_" in n]


def test_cluster_check_finds_a_published_index_that_scores_by_l2(monkeypatch, capsys) -> None:
    """An index built with the design's index-level space type on OpenSearch 2.18 (k-NN #2296), as earlier
    versions of this project built it: the check fails on it, while its own scratch checks pass."""
    with FakeSearchServer("opensearch-2.18") as fake:
        backend = ElasticsearchBackend(Settings(es_url=fake.url, es_engine="escloud"))
        legacy = dataclasses.replace(backend.server, distribution="elasticsearch")
        (body,) = type(backend.impl)(legacy).create_bodies(16, {})
        backend.client.indices.create(index="image_search_v20250101000000000000", **body)
        backend.client.indices.put_alias(index="image_search_v20250101000000000000", name="image_search")
        code, lines = _check(fake, "escloud", monkeypatch, capsys)
        assert code == 1
        failures = [line for line in lines if line.startswith("FAIL")]
        assert len(failures) == 1 and failures[0].startswith(
            "FAIL  published: image_search_v20250101000000000000 scores"
        )
        assert "l2" in failures[0] and "#2296" in failures[0]
        assert sum(line.startswith("ok  ") for line in lines) == 9


def test_cluster_check_never_advises_a_rebuild_over_a_strangers_index(monkeypatch, capsys) -> None:
    """A colleague's concrete ``image_search`` on a shared cluster: the check fails on it with the two ways on
    (another IMAGE_SEARCH_INDEX, or removing it by hand), never "rebuild", which once deleted it; it is left as it was."""
    with FakeSearchServer("opensearch-2.11") as fake:
        client = ElasticsearchBackend(Settings(es_url=fake.url)).client
        client.indices.create(index="image_search", mappings={"properties": {"describe": {"type": "text"}}})
        client.index(index="image_search", id="theirs", document={"describe": "a colleague's photo"}, refresh="true")
        code, lines = _check(fake, "auto", monkeypatch, capsys)
        assert code == 1
        (failure,) = [line for line in lines if line.startswith("FAIL")]
        assert (
            failure.startswith("FAIL  published: ") and "did not build" in failure and "IMAGE_SEARCH_INDEX" in failure
        )
        assert "DELETE /image_search" in failure and "rebuild" not in " ".join(lines) and "materialize" not in failure
        assert set(fake.indices) == {"image_search"} and set(fake.indices["image_search"].docs) == {"theirs"}
