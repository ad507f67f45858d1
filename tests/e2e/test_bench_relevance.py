"""The relevance benchmark run as a command over a generated release (its metrics: test_bench_relevance_metrics)."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest

from resources.models.relevance import query_set
from tests.cli import image_search, tiny_env
from tests.pipeline import copy_home


@pytest.fixture(scope="module")
def embedded_home(tmp_path_factory, search_home, tiny_models):
    """A copy of the session's ingested sample release with a real ``image_embeddings`` run (tiny models)."""
    from dagster import DagsterInstance, materialize

    from assets.embeddings import image_embeddings
    from resources.dagster_resources import ClipResource, SettingsResource

    home = copy_home(tmp_path_factory, search_home, "relevance_home", ("tables", "catalog", "images"))
    clip, text = (str(p) for p in tiny_models)
    resource = SettingsResource(home=str(home), image_model=clip, text_model=text)
    materialize(
        [image_embeddings],
        resources={"settings": resource, "clip": ClipResource(settings=resource)},
        instance=DagsterInstance.ephemeral(),
        tags={"dagster/asset_partition_range_start": "b00", "dagster/asset_partition_range_end": "b63"},
    )
    return home


def _bench(home, tiny_models, *args: str) -> subprocess.CompletedProcess:
    return image_search("bench", "relevance", *args, env=tiny_env(home, tiny_models))


def _bench_in_process(home, tiny_models, monkeypatch, capsys, *args: str) -> str:
    """The same command through ``image_search.cli.main`` in this process (no interpreter start-up)."""
    from image_search.cli import main

    monkeypatch.setenv("IMAGE_SEARCH_HOME", str(home))
    monkeypatch.setenv("IMAGE_SEARCH_IMAGE_MODEL", str(tiny_models[0]))
    monkeypatch.setenv("IMAGE_SEARCH_TEXT_MODEL", str(tiny_models[1]))
    capsys.readouterr()
    assert main(["bench", "relevance", *args]) == 0
    return capsys.readouterr().out


def test_bench_relevance_on_a_generated_release(embedded_home, tiny_models, monkeypatch, capsys):
    held = _bench(embedded_home, tiny_models, "--k", "10", "--json")
    assert held.returncode == 0, held.stderr
    report = json.loads(held.stdout)
    conversions = pd.read_parquet(embedded_home / "tables" / "conversions.parquet")
    downloads = conversions[conversions["conversion_type"] == "download"]
    expected = query_set(downloads, pd.read_parquet(embedded_home / "catalog" / "catalog.parquet")["photo_id"], 1000)
    assert report["queries"] == len(expected) > 10
    assert report["judgements"] == sum(len(r) for r in expected.values())
    assert report["indexed_photos"] == 48 and report["held_out"] and report["held_out_tokens"] > 0
    assert set(report["modes"]) == {"vector", "keyword", "hybrid"}
    for figures in report["modes"].values():
        assert 0.0 <= figures["recall"] <= 1.0 and 0.0 <= figures["ndcg"] <= 1.0
    assert report["random"]["recall"] == pytest.approx(10 / 48, abs=1e-4)
    assert "bench relevance: keyword" in held.stderr

    # Left in describe, the judged keywords name the answers: the keyword mode must score higher.
    leaked = _bench_in_process(embedded_home, tiny_models, monkeypatch, capsys, "--k", "10", "--json", "--no-hold-out")
    leaked_report = json.loads(leaked)
    assert leaked_report["held_out_tokens"] == 0
    assert leaked_report["modes"]["keyword"]["recall"] > report["modes"]["keyword"]["recall"]
    # The vector mode reads no text: holding out changes nothing for it.
    assert leaked_report["modes"]["vector"] | {"seconds": 0} == report["modes"]["vector"] | {"seconds": 0}

    table = _bench_in_process(embedded_home, tiny_models, monkeypatch, capsys, "--k", "5", "--max-queries", "3")
    assert "relevance over 3 queries" in table and "recall@5" in table
    assert [line.split()[0] for line in table.splitlines()[2:-1]] == ["vector", "keyword", "hybrid", "random"]
    assert table.splitlines()[-1].startswith("cpu: ") and "CPUs" in table.splitlines()[-1], (
        "every benchmark names its CPU"
    )


def test_bench_relevance_without_ingested_tables_says_what_to_run(tmp_path, tiny_models):
    out = _bench(tmp_path, tiny_models)
    assert out.returncode == 2
    assert "materialize the ingestion assets first" in out.stderr and "Traceback" not in out.stderr
