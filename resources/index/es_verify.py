"""A build's self-check before it is published: does the cluster score the vectors we hold as we hold them?

No one here can run every cluster a user may point the backend at (ESCloud included), and
score formulas change between versions and even between the segments of one index (k-NN
#2319 on OpenSearch 2.18). So each build queries its new index with the stored vectors of a
sample of its own photos, plain and filtered, and compares each reported score, turned back
into a cosine by the formula the engine says is in use, with the dot product of the vectors
the build holds; each photo must find itself first. Any disagreement beyond
:data:`TOLERANCE` fails the build before the alias moves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from elasticsearch7 import Elasticsearch
from elasticsearch7.exceptions import TransportError

from resources.errors import ClusterError
from resources.index.es_engines import Engine, ScoreFormula
from resources.index.es_load import Backoff, permanent, retryable, stored_vectors
from resources.index.es_transport import check_shards, one_line_errors, reason

logger = logging.getLogger("resources.index.elasticsearch")

#: Photos probed per build (all of them when the build holds fewer).
SAMPLE = 20
#: How far a converted score may be from the true cosine (vectors travel with 6 decimals; engines score in float32).
TOLERANCE = 1e-3
_K = 10


@dataclass(frozen=True)
class Verification:
    """What the self-check measured: photos probed, the worst disagreement, the formulas read by."""

    samples: int
    max_deviation: float
    formulas: dict[str, str]

    def summary(self) -> str:
        used = ", ".join(f"{path} {score}" for path, score in sorted(self.formulas.items()))
        return (
            f"{self.samples} photos each found themselves first, plain and filtered; reported cosines agree with the"
            f" held vectors within {self.max_deviation:.1e} (limit {TOLERANCE:g}; _score read as {used})"
        )


def verify(
    ids: list[str | None],
    vectors: np.ndarray,
    engine: Engine,
    search: Callable[[list[dict[str, Any]]], list[list[dict[str, Any]]]],
    formula_of: Callable[[str], ScoreFormula],
    where: str,
) -> Verification:
    """Probe the new index through ``search`` with a sample of ``ids``' own vectors; raise :class:`ClusterError` on any disagreement.

    ``search`` runs a list of ``_search`` bodies in one request (``_msearch``) and returns each one's hits.

    ``ids`` names each row of ``vectors``, ``None`` for a row the cluster refused to index.
    ``formula_of(path)`` is the score formula the backend will read that k-NN path's scores
    by; ``where`` names the server, the index's creator and the engine for the message.
    """
    rounded = stored_vectors(vectors)
    rows = [r for r in np.flatnonzero(np.isfinite(rounded).all(axis=1)).tolist() if ids[r] is not None]
    unit = rounded / np.maximum(np.linalg.norm(rounded, axis=1, keepdims=True), 1e-12)
    if not rows:
        return Verification(0, 0.0, {})
    row_of = {ids[r]: r for r in rows}
    picks = sorted(np.random.default_rng(0).choice(rows, size=min(SAMPLE, len(rows)), replace=False).tolist())
    sample = [ids[r] for r in picks]
    worst, used = 0.0, {}
    for filters in ([], [{"terms": {"photo_id": sample}}]):
        bodies, path = [], ""
        for row in picks:
            body, path = engine.knn_query(rounded[row].tolist(), min(_K, len(rows)), filters)
            bodies.append({**body, "_source": False})
        formula = formula_of(path)
        used[path] = formula.score
        for row, hits in zip(picks, search(bodies)):
            worst = max(worst, _check_hits(hits, ids[row], unit, row_of, formula, f"{where}, {path} search"))
    return Verification(len(picks), worst, used)


def _check_hits(hits, photo_id, unit, row_of, formula: ScoreFormula, where: str) -> float:
    """The largest gap between a hit's reported and true cosine; raise if it exceeds the tolerance or the photo is not first."""
    query = unit[row_of[photo_id]]
    if not hits:
        raise ClusterError(
            f"the self-check found nothing for photo {photo_id} on {where}: the index does not answer kNN searches"
        )
    worst = 0.0
    for hit in hits:
        truth = float(unit[row_of[str(hit["_id"])]] @ query)
        reported = max(-1.0, min(1.0, formula.to_cosine(float(hit["_score"]))))
        gap = abs(reported - truth)
        if gap > TOLERANCE:
            raise ClusterError(
                f"the self-check of photo {photo_id} on {where} read a _score of {hit['_score']} for {hit['_id']} as"
                f" cosine {reported:.4f} by the formula {formula.score}, but the vectors give {truth:.4f} (off by"
                f" {gap:.4f}, more than {TOLERANCE:g}): the cluster scores differently than this engine expects;"
                " run `image-search cluster check` and report its output"
            )
        worst = max(worst, gap)
    first = str(hits[0]["_id"])
    if first != photo_id and float(unit[row_of[first]] @ query) < 1.0 - 1e-6:
        raise ClusterError(
            f"the self-check of photo {photo_id} on {where} found {first} first, not the photo itself: the index"
            " misses documents or ranks them wrongly; run `image-search cluster check` and report its output"
        )
    return worst


def search_many(
    client: Elasticsearch, url: str, index: str, bodies: list[dict[str, Any]], backoff: Backoff
) -> list[list[dict[str, Any]]]:
    """The self-check's searches: ``bodies`` on ``index`` in one ``_msearch``; any failed search fails all, in one line.

    A search refused for overload (429: a full search queue, a TRANSIENT breaker) is not
    bad data: it goes again, alone with the others refused, under ``backoff`` until the
    build's deadline (es_load). A PERMANENT breaker or any other error fails at once.
    """
    doing = f"self-checking {index}"
    found: dict[int, list[dict[str, Any]]] = {}
    pending = list(range(len(bodies)))
    while pending:
        lines = [line for i in pending for line in ({}, bodies[i])]
        with one_line_errors(url, doing):
            try:
                responses = client.msearch(index=index, body=lines)["responses"]
            except TransportError as exc:
                if not retryable(exc):
                    raise
                backoff.wait(f"a self-check of {len(pending)} searches", reason(exc))
                continue
        refused, why = [], ""
        for i, response in zip(pending, responses):
            if "error" not in response:
                check_shards(response, url, doing)
                found[i] = response["hits"]["hits"]
                continue
            error = response["error"] if isinstance(response["error"], dict) else {"reason": response["error"]}
            cause = (error.get("root_cause") or [error])[0]
            why = f"{cause.get('type')}: {cause.get('reason')}"
            if response.get("status") != 429 or permanent(error):
                raise ClusterError(f"{url} answered HTTP {response.get('status')} while {doing}: {why}")
            refused.append(i)
        pending = refused
        if refused:
            logger.info("%s refused %d self-check searches as overloaded (%s): backing off", url, len(refused), why)
            backoff.wait(f"{len(refused)} self-check searches", why)
        else:
            backoff.reset()
    return [found[i] for i in range(len(bodies))]
