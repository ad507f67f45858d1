"""``image-search cluster check``: prove on a scratch index that the cluster works as a build needs.

It prints what a build would send (server, plugins, engine, mapping, queries, score
formulas), then builds and queries a dozen known vectors under a scratch alias (each build
running the self-check every build runs before publishing, whose measured agreement it
reports) and deletes exactly what it made; one line per check, exit status 1 if any failed (docs/backends.md).
Like the rest of the query side it never imports Dagster.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.index.base import BuildInfo, BuildReport, Filters

if TYPE_CHECKING:
    from resources.index.elasticsearch import ElasticsearchBackend

#: The vectors' dimension: the default image model's (clip-ViT-B-32).
DIM = 512
DOCS = 12
#: A probe at cosine 0.5 to document 0 and sqrt(0.75) to document 1; document 11 points away from it.
PROBE_COSINE = 0.5
#: How far a converted score may be from the true cosine (vectors travel with 6 decimals; engines score in float32).
TOLERANCE = 1e-3
PLACEHOLDER = f"<{DIM} floats>"


class CheckFailed(Exception):
    """One check's failure, in one line that says what is wrong and what to do."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``cluster`` and its ``check`` subcommand."""
    parser = sub.add_parser("cluster", help="Elasticsearch/OpenSearch/ESCloud cluster tools")
    cluster_sub = parser.add_subparsers(dest="cluster", required=True, metavar="ACTION")
    check = cluster_sub.add_parser(
        "check",
        help="test the configured cluster on a scratch index before the first build",
        description="Print the engine, version, plugins, mapping and queries a build will use, then prove on a"
        " scratch index that cosine scores, filters, BM25, the alias swap and clean-up work. Exits 1 if any check"
        " fails, with one line per failure.",
    )
    check.set_defaults(handler=run)


def documents() -> tuple[pd.DataFrame, np.ndarray]:
    """``DOCS`` catalog rows with known unit vectors: document i is the i-th basis vector, the last one -e1."""
    vectors = np.eye(DOCS, DIM, dtype=np.float32)
    vectors[-1] = -vectors[1]
    rows = []
    for i in range(DOCS):
        rows.append(
            {
                "photo_id": f"check-{i:02d}",
                "describe": "lake shore" if i % 2 == 0 else "mountain ridge",
                "photo_description": None,
                "ai_description": f"test photo {i}",
                "photo_image_url": f"https://images.example/check-{i}",
                "photo_url": f"https://unsplash.example/photos/check-{i}",
                "photographer_name": "Cluster Check",
                "photographer_username": "cluster_check",
                "orientation": ("landscape", "portrait", "square")[i % 3],
                "dominant_color": ("red", "blue")[i % 2],
                "colors": [("red", "blue")[i % 2], "white"],
                "photo_location_country": ("France", "Japan")[i % 2],
                "photo_submitted_at": pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(days=30 * i),
            }
        )
    return pd.DataFrame(rows), vectors


def probe() -> np.ndarray:
    vector = np.zeros(DIM)
    vector[0], vector[1] = PROBE_COSINE, np.sqrt(1 - PROBE_COSINE**2)
    return vector


FILTERS: dict[str, tuple[Filters, Callable[[pd.DataFrame], pd.Series]]] = {
    "orientation": (Filters(orientation="landscape"), lambda d: d.orientation == "landscape"),
    "colour": (Filters(color="Red"), lambda d: d.colors.map(lambda c: "red" in c)),
    "country": (Filters(country="japan"), lambda d: d.photo_location_country == "Japan"),
    "dates": (
        Filters(since=dt.date(2024, 3, 1), until=dt.date(2024, 7, 1)),
        lambda d: (
            (d.photo_submitted_at >= pd.Timestamp("2024-03-01", tz="UTC"))
            & (d.photo_submitted_at < pd.Timestamp("2024-07-02", tz="UTC"))
        ),
    ),
}


def run(args: argparse.Namespace) -> int:
    """Describe the cluster, run the checks on a scratch alias, print one line each."""
    settings = Settings.from_env()
    if not settings.es_url:
        raise ImageSearchError(
            "IMAGE_SEARCH_ES_URL is not set: point it at the cluster to check, e.g. https://localhost:9200"
        )
    from resources.index.elasticsearch import ElasticsearchBackend

    scratch = f"{settings.index_name}_check_{secrets.token_hex(4)}"
    try:
        backend = ElasticsearchBackend(settings.replace(index_name=scratch))
    except ImageSearchError as exc:
        print(f"FAIL  connect: {exc}")
        return 1
    describe(backend, settings)
    if settings.backend != "elasticsearch":
        print(f"note  IMAGE_SEARCH_BACKEND={settings.backend}: builds use this cluster once it is set to elasticsearch")
    failures = int(not published(backend, settings.index_name))
    print(f"checks on the scratch alias {scratch}:")
    failures += Checks(backend, settings.index_name).run()
    if failures:
        print(f"{failures} check(s) failed on {backend.server.label} at {backend.url}: fix them before the first build")
        return 1
    print(f"all checks passed on {backend.server.label} at {backend.url}: the first build can run")
    return 0


def describe(backend: "ElasticsearchBackend", settings: Settings) -> None:
    """What a build will send: server, plugins, engine, mapping, queries and score formulas."""
    from resources.index.elasticsearch import VECTOR_FIELD

    server, impl = backend.server, backend.impl
    print(f"cluster   {backend.url}: {server.label}")
    if server.unknown:
        print(f"note      {server.unknown}: version quirks are judged by each index's created version")
    plugins = "not readable (no monitor privilege)" if server.plugins is None else ", ".join(server.plugins) or "none"
    print(f"plugins   {plugins}")
    print(f"engine    {impl.name} (IMAGE_SEARCH_ES_ENGINE={settings.es_engine})")
    bodies = impl.create_bodies(DIM, {})
    for n, body in enumerate(bodies, start=1):
        index = {k: v for k, v in body["settings"]["index"].items() if k != "analysis"}
        vector = body["mappings"]["properties"][VECTOR_FIELD]
        label = "mapping  " if len(bodies) == 1 else f"mapping {n}"
        print(f"{label} {json.dumps(vector)}; index settings {json.dumps(index)}")
    if len(bodies) > 1:
        print("          (the server hides its version: a build tries these in turn and keeps the first one accepted)")
    created = server.release
    for what, filters in (("query    ", []), ("filtered ", [{"term": {"orientation": "landscape"}}])):
        body, path = impl.knn_query(PLACEHOLDER, 10, filters)
        print(f"{what} {json.dumps(body['query'])}  (_score = {impl.formula(path, created).score})")


def published(backend: "ElasticsearchBackend", alias: str) -> bool:
    """Print the index published under ``alias`` now; False when a build could not replace it or it would not score by cosine.

    A concrete index named ``alias``, or an alias on an index, that this project did not
    build is someone else's: a build stops rather than delete or move it, so the advice is another ``IMAGE_SEARCH_INDEX`` or
    removing it by hand, never a rebuild.
    """
    from elasticsearch7.exceptions import TransportError

    from resources.index.es_publish import stranger

    try:
        if not backend.client.indices.exists(index=alias):
            print(f"published {alias}: none yet")
            return True
        refusal = stranger(backend.client, alias, backend.url)
        if refusal:
            print(f"FAIL  published: {refusal}")
            return False
        described = backend.describe(alias)
    except TransportError as exc:
        print(
            f"FAIL  published: {backend.url} answered HTTP {exc.status_code} to reading the mapping of {alias}: grant"
            " the user view_index_metadata on it"
        )
        return False
    healthy = True
    for name, (created, space) in described.items():
        print(f"published {alias} -> {name} (created by {created or 'an unknown version'}, vector field {space})")
        if space != "cosinesimil":
            print(
                f"FAIL  published: {name} scores vectors by {space}, not cosinesimil (k-NN issue #2296 on OpenSearch 2.17"
                " and 2.18): rebuild it (materialize search_index); new builds declare the space type on the field"
            )
            healthy = False
    return healthy


class Checks:
    """The checks on the scratch alias, in order; each prints one line."""

    def __init__(self, backend: "ElasticsearchBackend", index_name: str):
        self.backend = backend
        self.raw = backend.client
        self.scratch = backend.alias
        self.index_name = index_name
        self.docs, self.vectors = documents()
        self.builds: list[BuildReport] = []
        self.planted: list[str] = []
        self.failures = 0

    def run(self) -> int:
        before = self.neighbourhood()
        try:
            for name, check, needs_build in (
                ("build", self.build, False),
                ("self-check", self.self_check, True),
                ("cosine", self.cosine, True),
                ("filtered", self.filtered, True),
                ("filters", self.filters, True),
                ("keywords", self.keywords, True),
                ("alias swap", self.alias_swap, True),
                ("clean-up", self.clean_up, True),
            ):
                if needs_build and not self.builds:
                    print(f"skip  {name}: needs the scratch build")
                    continue
                self.step(name, check)
        finally:
            self.step("scratch removed", lambda: self.remove(before))
        return self.failures

    def step(self, name: str, check: Callable[[], str]) -> None:
        from elasticsearch7.exceptions import TransportError

        try:
            print(f"ok    {name}: {check()}")
        except (CheckFailed, ImageSearchError) as exc:
            self.failures += 1
            print(f"FAIL  {name}: {exc}")
        except TransportError as exc:
            self.failures += 1
            print(
                f"FAIL  {name}: {self.backend.url} answered HTTP {exc.status_code} ({exc.error}): check the user's privileges"
            )

    def neighbourhood(self) -> set[str]:
        """Every index named like ``IMAGE_SEARCH_INDEX`` (its builds, its look-alikes), before and after."""
        return set(self.raw.indices.get_alias(index=f"{self.index_name}*"))

    def info(self) -> BuildInfo:
        return BuildInfo("cluster-check", "cluster-check", DIM, DOCS, dt.datetime.now(dt.timezone.utc).isoformat(), "")

    def build(self) -> str:
        report = self.backend.build(self.docs, self.vectors, self.info())
        self.builds.append(report)
        if report.count != DOCS or report.errors:
            raise CheckFailed(
                f"{report.count} of {DOCS} documents indexed ({report.errors}): look at the cluster's logs"
            )
        ((created, space),) = self.backend.describe(report.name).values()
        return f"{DOCS} documents in {report.name} (created by {created}); its vector field reads back as {space}"

    def self_check(self) -> str:
        """What the first build's own check measured before it published (resources/index/es_verify.py)."""
        return str(self.builds[0].details["verification"])

    def scores(self, filters: Filters | None) -> dict[str, float]:
        hits = self.backend.knn(probe(), DOCS, filters)
        return {hit.photo_id: hit.score for hit in hits}

    def cosine(self) -> str:
        scores = self.scores(None)
        return self.compare(scores, "unfiltered", set(self.docs.photo_id))

    def compare(self, scores: dict[str, float], how: str, expected: set[str]) -> str:
        truth = dict(zip(self.docs.photo_id, self.vectors.astype(np.float64) @ probe()))
        pair = scores.get("check-00")
        if pair is None or abs(pair - PROBE_COSINE) > TOLERANCE:
            raise CheckFailed(
                f"a pair at cosine {PROBE_COSINE} scored {pair if pair is None else round(pair, 4)} {how} on"
                f" {self.backend.server.label} with the {self.backend.engine} engine: the score formula or the space type"
                " is wrong; report it with this output, or try another IMAGE_SEARCH_ES_ENGINE"
            )
        wrong = {p: round(s, 4) for p, s in scores.items() if abs(s - truth[p]) > TOLERANCE}
        if wrong or set(scores) != expected:
            raise CheckFailed(
                f"{how} scores differ from the true cosines ({wrong or 'documents missing'}): report it with this output"
            )
        return f"a pair at cosine {PROBE_COSINE} scores {pair:.4f} {how}; all {len(scores)} scores within {TOLERANCE} of the true cosines"

    def filtered(self) -> str:
        filters, passes = FILTERS["colour"]
        expected = set(self.docs.photo_id[passes(self.docs)])
        scores = self.scores(filters)
        detail = self.compare(scores, "with a filter", expected)
        plain = self.scores(None)
        if any(abs(plain[p] - s) > TOLERANCE for p, s in scores.items()):
            raise CheckFailed(
                "filtered and unfiltered searches score the same documents differently: report it with this output"
            )
        return f"{detail}; filtered and unfiltered agree"

    def filters(self) -> str:
        for name, (filters, passes) in FILTERS.items():
            expected = set(self.docs.photo_id[passes(self.docs)])
            found = {hit.photo_id for hit in self.backend.knn(probe(), DOCS, filters)}
            if found != expected:
                raise CheckFailed(
                    f"the {name} filter returned {sorted(found)} instead of {sorted(expected)}: report it"
                )
        return f"{', '.join(FILTERS)} return exactly the matching documents"

    def keywords(self) -> str:
        expected = set(self.docs.photo_id[self.docs["describe"].str.contains("lake")])
        hits = self.backend.keyword("lake", DOCS)
        if {h.photo_id for h in hits} != expected or not all(h.score > 0 for h in hits):
            raise CheckFailed(f"BM25 for 'lake' found {sorted(h.photo_id for h in hits)}: check the text mapping")
        landscape = expected & set(self.docs.photo_id[self.docs.orientation == "landscape"])
        filtered = {h.photo_id for h in self.backend.keyword("lake", DOCS, Filters(orientation="landscape"))}
        if filtered != landscape:
            raise CheckFailed(f"BM25 for 'lake' with a filter found {sorted(filtered)}, not {sorted(landscape)}")
        kept = expected - {"check-04", "check-08"}
        excluded = {h.photo_id for h in self.backend.keyword("lake", DOCS, exclude="4 8")}
        if excluded != kept:
            raise CheckFailed(f"BM25 for 'lake' without '4 8' found {sorted(excluded)}, not {sorted(kept)}: report it")
        return (
            f"BM25 finds the {len(expected)} documents with 'lake' ({len(landscape)} with a filter, "
            f"{len(kept)} without the words '4 8')"
        )

    def alias_swap(self) -> str:
        second = self.backend.build(self.docs, self.vectors, self.info())
        self.builds.append(second)
        aliased = set(self.raw.indices.get_alias(name=self.scratch))
        if aliased != {second.name} or self.backend.count() != DOCS:
            raise CheckFailed(
                f"after the second build {self.scratch} points to {sorted(aliased)}: check the alias privileges"
            )
        top = self.backend.knn(self.vectors[3], 1)[0]
        if top.photo_id != "check-03":
            raise CheckFailed(f"after the swap a document's own vector found {top.photo_id}: report it")
        return f"{self.scratch} moved from {self.builds[0].name} to {second.name} in one request"

    def clean_up(self) -> str:
        from resources.index.es_publish import lock_index

        stamp = "20000101000000000000"
        self.planted = [f"{self.scratch}_v{stamp}", f"{self.scratch}_vnext_v{stamp}"]
        for name in self.planted:
            self.raw.indices.create(index=name, mappings={"properties": {"describe": {"type": "text"}}})
        third = self.backend.build(self.docs, self.vectors, self.info())
        self.builds.append(third)
        left = set(self.raw.indices.get_alias(index=f"{self.scratch}*")) - {lock_index(self.scratch)}
        removed = third.details["removed"]
        if removed != [self.builds[0].name] or left != {b.name for b in self.builds[1:]} | set(self.planted):
            raise CheckFailed(
                f"the third build removed {removed} and left {sorted(left)}: report it; do not run builds on this cluster"
            )
        return (
            f"the third build removed only {removed[0]}; the previous build and {len(self.planted)} look-alikes stayed"
        )

    def remove(self, before: set[str]) -> str:
        """Delete, by exact name, what the check created; everything named like the index must be as before."""
        mine = set(self.raw.indices.get_alias(index=f"{self.scratch}*"))
        if mine:
            self.raw.indices.delete(index=",".join(sorted(mine)))
        after = self.neighbourhood()
        if after != before:
            raise CheckFailed(
                f"indices named {self.index_name}* changed: {sorted(before - after)} gone, {sorted(after - before)} new"
            )
        deleted = (
            f"deleted the scratch indices {', '.join(sorted(mine))} by name" if mine else "no scratch index was left"
        )
        return f"{deleted}; every index named {self.index_name}* is as before"
