"""Bulk-loading a build into a cluster: documents as JSON, overload backed off, bad documents counted.

Two kinds of refusal look alike on the wire and mean opposite things. A 429
(``es_rejected_execution_exception``, on OpenSearch ``rejected_execution_exception``: a full
write queue, or indexing pressure) says the cluster is busy: the documents are good and are
sent again, after a backoff with full jitter, for as long as the build's own deadline allows; they never count as errors. A 400
(``mapper_parsing_exception`` and the like) says the document is bad: it is counted by type
toward ``IMAGE_SEARCH_ES_MAX_ERROR_SHARE``. A 429 ``circuit_breaking_exception`` whose
durability is ``PERMANENT`` will not clear by waiting (Elasticsearch
``CircuitBreakingException``, "Circuit breaker errors" docs) and fails the build at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd
from elasticsearch7 import Elasticsearch
from elasticsearch7.exceptions import TransportError

from resources.errors import UnavailableError
from resources.index.base import STORED_FIELDS, BuildProgress
from resources.index.es_engines import VECTOR_FIELD
from resources.index.es_transport import reason

logger = logging.getLogger("resources.index.elasticsearch")

CHUNK_SIZE = 500
#: Seconds one bulk request may take before the client gives up on it (and resends it).
_BULK_TIMEOUT_S = 120
#: The longest single wait between two tries of refused documents.
_MAX_BACKOFF_S = 60.0


@dataclass
class Backoff:
    """Exponential backoff with full jitter up to a deadline (AWS Architecture Blog, "Exponential Backoff And Jitter").

    ``clock``, ``sleep`` and ``rng`` are injectable so tests neither wait nor guess.
    """

    deadline: float
    base_s: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0
    waited_s: float = 0.0

    def wait(self, what: str, why: str) -> None:
        """Sleep before sending ``what`` again; raise once the deadline has passed, saying ``why`` (the last refusal)."""
        left = self.deadline - self.clock()
        if left <= 0:
            raise UnavailableError(
                f"the cluster kept refusing {what} with HTTP 429 ({why}) for {self.waited_s:.0f} s of backoff, until"
                " the build's deadline (IMAGE_SEARCH_ES_BUILD_TIMEOUT): retry when it is less busy or has disk space"
                " again, or raise the timeout"
            )
        delay = min(left, self.rng.uniform(0.0, min(_MAX_BACKOFF_S, self.base_s * 2**self.attempt)))
        self.attempt += 1
        self.waited_s += delay
        self.sleep(delay)

    def reset(self) -> None:
        """A request went through: the next refusal starts from a short wait again."""
        self.attempt = 0


def json_value(value: Any) -> Any:
    """A catalog cell as JSON: missing values become null, timestamps ISO 8601 in UTC."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_value(v) for v in value]
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, (pd.Timestamp, dt.datetime)):
        stamp = pd.Timestamp(value)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        return stamp.isoformat().replace("+00:00", "Z")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def stored_vectors(vectors: np.ndarray) -> np.ndarray:
    """The vectors as sent: float64 rounded to 6 decimals (about 4.8 KB of JSON per 512-d vector)."""
    return np.round(np.asarray(vectors, dtype=np.float64), 6)


def permanent(error: Any) -> bool:
    """Whether a 429's error body is a circuit breaker that waiting will not clear (``durability: PERMANENT``).

    The breaker may be the error itself or, in a search, a shard failure inside a
    ``search_phase_execution_exception`` (its ``root_cause`` and ``caused_by``:
    ``ElasticsearchException.generateThrowableXContent`` in Elasticsearch 7.x and OpenSearch).
    """
    if not isinstance(error, dict):
        return False
    if error.get("type") == "circuit_breaking_exception" and error.get("durability") != "TRANSIENT":
        return True
    return any(permanent(cause) for cause in [*(error.get("root_cause") or []), error.get("caused_by")])


def retryable(exc: TransportError) -> bool:
    """Whether a refused request may go again after a backoff: a 429 that is no permanent circuit breaker."""
    info = exc.info if isinstance(exc.info, dict) else {}
    return exc.status_code == 429 and not permanent(info.get("error"))


class BulkLoader:
    """Sends one build's documents in bulk requests; see the module docstring for what is retried."""

    def __init__(self, client: Elasticsearch, url: str, backoff: Backoff):
        self.client = client
        self.url = url
        self.backoff = backoff
        self.batch_size = CHUNK_SIZE

    def actions(self, index: str, documents: pd.DataFrame, vectors: np.ndarray, skipped: Counter) -> Iterator[dict]:
        rounded = stored_vectors(vectors)
        finite = np.isfinite(rounded).all(axis=1)
        for i, row in enumerate(documents[list(STORED_FIELDS)].itertuples(index=False, name=None)):
            if not finite[i]:
                skipped["non_finite_vector"] += 1
                continue
            source = {name: json_value(value) for name, value in zip(STORED_FIELDS, row)}
            source[VECTOR_FIELD] = rounded[i].tolist()
            yield {"_index": index, "_id": str(source["photo_id"]), "_source": source}

    def _batches(self, actions: Iterable[dict]) -> Iterator[list[dict]]:
        """Actions in batches of the current bulk size (smaller once the server refused a request as too large)."""
        batch: list[dict] = []
        for action in actions:
            batch.append(action)
            if len(batch) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def load(self, index, documents, vectors, progress: BuildProgress | None) -> tuple[set[str], Counter]:
        """Bulk-load every document; returns the ids indexed and the errors by type."""
        total = len(documents)
        errors: Counter = Counter()
        indexed: set[str] = set()
        done = 0
        for batch in self._batches(self.actions(index, documents, vectors, errors)):
            for doc_id, error in self.send(batch):
                if error is None:
                    indexed.add(doc_id)
                else:
                    errors[error] += 1
                done += 1
                if done % CHUNK_SIZE == 0:
                    logger.info("indexed %d of %d documents into %s", done, total, index)
                    if progress is not None:
                        progress(done, total)
        if progress is not None:
            progress(total, total)
        return indexed, errors

    def send(self, batch: list[dict]) -> list[tuple[str, str | None]]:
        """Write ``batch`` and return each document's id and error type (``None``: indexed).

        Documents refused for overload, alone or with their whole request, go again after a
        backoff. A request refused as too large (413: ``http.max_content_length`` or a
        proxy's limit) is split in halves, and later batches go at the size that got through;
        a single document still too large counts as ``request_entity_too_large``.
        """
        outcomes: list[tuple[str, str | None]] = []
        pending = batch
        while pending:
            try:
                response = self._bulk(pending)
            except TransportError as exc:
                if exc.status_code == 413:
                    return outcomes + self._split(pending)
                if not retryable(exc):
                    raise
                logger.info("%s refused a bulk request as overloaded (%s): backing off", self.url, reason(exc))
                self.backoff.wait(f"a bulk request of {len(pending)} documents", reason(exc))
                continue
            refused, why = [], ""
            for action, item in zip(pending, response["items"]):
                result = item.get("index", {})
                status = int(result.get("status", 500))
                if status == 429:
                    refused.append(action)
                    error = result.get("error") or {}
                    why = f"{error.get('type')}: {error.get('reason')}"
                elif status < 300:
                    outcomes.append((action["_id"], None))
                else:
                    outcomes.append((action["_id"], (result.get("error") or {}).get("type", f"http_{status}")))
            pending = refused
            if refused:
                self.backoff.wait(f"{len(refused)} documents", why)
            else:
                self.backoff.reset()
        return outcomes

    def _bulk(self, actions: list[dict]) -> dict[str, Any]:
        lines: list[dict] = []
        for action in actions:
            lines += [{"index": {"_index": action["_index"], "_id": action["_id"]}}, action["_source"]]
        return self.client.bulk(body=lines, request_timeout=_BULK_TIMEOUT_S)

    def _split(self, batch: list[dict]) -> list[tuple[str, str | None]]:
        if len(batch) == 1:
            return [(batch[0]["_id"], "request_entity_too_large")]
        half = len(batch) // 2
        if half < self.batch_size:
            logger.warning(
                "%s refused a bulk request of %d documents as too large (HTTP 413): sending %d per request",
                self.url,
                len(batch),
                half,
            )
            self.batch_size = half
        return self.send(batch[:half]) + self.send(batch[half:])
