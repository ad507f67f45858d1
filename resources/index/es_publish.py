"""Publishing a build under its alias on a shared cluster: one build at a time, never a stranger's data.

- **One build per alias.** A build holds a lock document ``<alias>`` in the index
  ``<alias>_build_lock``, written with ``op_type=create``: the cluster indexes it only if no
  document has that id, whichever machine asks (Elasticsearch 7.x and OpenSearch
  ``TransportShardBulkAction`` / ``InternalEngine`` answer 409 ``version_conflict_engine_exception``
  otherwise; docs "Index API", ``op_type``). A lock past its expiry is taken over with
  ``if_seq_no``/``if_primary_term`` (optimistic concurrency control, Elasticsearch 6.7+ and every
  OpenSearch): of two builds taking over the same stale lock, one gets a 409.
- **Read back.** ``POST _aliases`` is atomic, but the client resends it after a timeout or a
  502/503/504, and removing an alias that is no longer there answers 404 on OpenSearch
  (whatever ``must_exist`` says, OpenSearch #11210) and Elasticsearch 7.x (200 on
  Elasticsearch 8.14+, elastic #106304), while ``must_exist`` is an unknown field before OpenSearch 2.12 (#2949,
  #11210) and Elasticsearch 7.11 (elastic #62642, #65141): no answer is trusted alone. After
  every publish, and whenever the answer is an error, the alias is read back, and what it
  points to decides.
- **A stranger's index is never deleted, nor their alias moved.** A concrete index named
  like the alias is replaced, and an alias of that name moved, only if ``_meta`` says this
  project built every index concerned.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import secrets
import socket
import time
from typing import Any, Callable

from elasticsearch7 import Elasticsearch
from elasticsearch7.exceptions import ConflictError, TransportError
from elasticsearch7.exceptions import ConnectionError as EsConnectionError

from resources.errors import ClusterError, ImageSearchError, UnavailableError
from resources.index.es_engines import META_KEY
from resources.index.es_transport import absent, reason

logger = logging.getLogger("resources.index.elasticsearch")


def lock_index(alias: str) -> str:
    """The index holding ``alias``'s build lock."""
    return f"{alias}_build_lock"


class BuildLock:
    """The cluster-wide lock one build of ``alias`` holds from its first write to its publish."""

    def __init__(
        self, client: Elasticsearch, alias: str, url: str, ttl_s: float, clock: Callable[[], float] = time.time
    ):
        self.client, self.alias, self.url, self.ttl_s, self.clock = client, alias, url, ttl_s, clock
        self.index = lock_index(alias)
        self.token = secrets.token_hex(8)
        self._version: dict[str, int] = {}

    def _document(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "owner": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired_at": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(timespec="seconds"),
            "expires_at": now + self.ttl_s,
        }

    def _ensure_index(self) -> None:
        """Create the lock index unless it exists (two first builds may both try: one is told it exists)."""
        try:
            if not self.client.indices.exists(index=self.index):
                self.client.indices.create(
                    index=self.index,
                    settings={"index": {"number_of_shards": "1", "auto_expand_replicas": "0-1"}},
                    mappings={"dynamic": "false", "_meta": {META_KEY: {"lock_for": self.alias}}},
                )
        except TransportError as exc:
            if exc.error != "resource_already_exists_exception":
                raise

    def _held(self) -> dict[str, Any] | None:
        """Create the lock document; ``None`` once created, else the holder's document as read.

        The holder may give the lock up between the refused create and the read (a 404):
        the create is then tried once more.
        """
        for _ in range(2):
            try:
                self._keep(
                    self.client.create(index=self.index, id=self.alias, document=self._document(), refresh="true")
                )
                return None
            except ConflictError:
                pass
            held = self.client.get(index=self.index, id=self.alias, ignore=404)
            if not absent(held):
                return held
        raise UnavailableError(
            f"the build lock of {self.alias} on {self.url} was taken and given up twice while this build asked for it:"
            " another build is starting; build again"
        )

    def acquire(self) -> None:
        """Take the lock, or raise naming the build that holds it."""
        self._ensure_index()
        held = self._held()
        if held is None:
            return
        source = held.get("_source") or {}
        if source.get("owner") == self.token:  # our own create, resent after a timeout
            self._keep(held)
            return
        expires = float(source.get("expires_at", 0))
        if expires > self.clock():
            until = dt.datetime.fromtimestamp(expires, dt.timezone.utc).isoformat(timespec="seconds")
            raise UnavailableError(
                f"another build of {self.alias} is running on {self.url} (since {source.get('acquired_at')} on"
                f" {source.get('host')}, pid {source.get('pid')}; its lock expires at {until}): wait for it to finish;"
                f" if that build is dead, delete its lock (DELETE /{self.index}/_doc/{self.alias}) and build again"
            )
        try:
            self._keep(
                self.client.index(
                    index=self.index,
                    id=self.alias,
                    document=self._document(),
                    refresh="true",
                    if_seq_no=held["_seq_no"],
                    if_primary_term=held["_primary_term"],
                )
            )
        except ConflictError:
            again = self.client.get(index=self.index, id=self.alias, ignore=404)
            if (again.get("_source") or {}).get("owner") != self.token:
                raise UnavailableError(
                    f"another build of {self.alias} on {self.url} took over the expired lock at the same moment: wait"
                    " for it to finish, then build again"
                ) from None
            self._keep(again)  # our own takeover, resent after a timeout or a 502/503/504
        logger.warning(
            "took over the expired build lock of %s (left by %s, pid %s)",
            self.alias,
            source.get("host"),
            source.get("pid"),
        )

    def _keep(self, response: dict[str, Any]) -> None:
        self._version = {"if_seq_no": response["_seq_no"], "if_primary_term": response["_primary_term"]}

    def check(self) -> None:
        """Raise unless this build still holds the lock and will for a while: called right before publishing."""
        held = self.client.get(index=self.index, id=self.alias, ignore=404)
        source = held.get("_source") or {}
        if absent(held) or source.get("owner") != self.token or float(source.get("expires_at", 0)) <= self.clock():
            raise ClusterError(
                f"this build of {self.alias} lost its lock on {self.url} (it ran past IMAGE_SEARCH_ES_BUILD_TIMEOUT, or"
                " someone removed the lock document): it was not published; build again"
            )

    def release(self) -> None:
        """Give the lock up; a failure is logged (the lock then expires by itself)."""
        if not self._version:
            return
        try:
            self.client.delete(index=self.index, id=self.alias, refresh="true", **self._version)
        except (TransportError, EsConnectionError) as exc:
            logger.warning("could not release the build lock of %s (it expires by itself): %s", self.alias, exc)
        self._version = {}


def made_here(body: dict[str, Any]) -> bool:
    """Whether an index's ``_meta`` carries this project's key at all (what moving an alias off it needs)."""
    return isinstance(((body.get("mappings") or {}).get("_meta") or {}).get(META_KEY), dict)


def built_here(name: str, body: dict[str, Any], alias: str | None = None) -> bool:
    """Whether ``_meta`` says this project built index ``name`` (for ``alias``, when given): what deleting it needs."""
    meta = ((body.get("mappings") or {}).get("_meta") or {}).get(META_KEY)
    if not isinstance(meta, dict) or meta.get("name") != name:
        return False
    return alias is None or meta.get("alias", alias) == alias


def stranger(client: Elasticsearch, alias: str, url: str) -> str | None:
    """A one-line refusal when ``alias``'s name belongs to someone else, else ``None``.

    Someone else's: a concrete index so named that this project did not build, or an alias
    of that name on any index without this project's ``_meta`` (a colleague's alias would
    be moved off their index, and their readers handed this project's photos).
    """
    found = client.indices.get(index=alias, ignore=404)
    if absent(found):
        return None
    if alias in found:
        if built_here(alias, found[alias]):
            return None
        count = client.count(index=alias, ignore=404).get("count", "an unknown number of")
        return (
            f"{url} holds a concrete index named {alias} ({count} documents) that this project did not build, so"
            f" it cannot publish the alias {alias} there and will not delete that index: set IMAGE_SEARCH_INDEX to"
            f" another name, or remove the index yourself (DELETE /{alias}) if nobody needs it"
        )
    foreign = sorted(name for name, body in found.items() if not made_here(body))
    if not foreign:
        return None
    return (
        f"the alias {alias} on {url} points at {', '.join(foreign)}, which this project did not build, so it will not"
        f" move that alias off them: set IMAGE_SEARCH_INDEX to another name, or remove the alias from them yourself"
        f" (POST _aliases with a remove action) if nobody needs it"
    )


def aliased(client: Elasticsearch, alias: str) -> set[str]:
    """The concrete indices ``alias`` points to now (empty when it does not exist)."""
    found = client.indices.get_alias(name=alias, ignore=404)
    return set() if absent(found) else set(found)


class NotPublished(ClusterError):
    """The publish failed; ``unsure`` when the alias could not be read back, so the new build must be kept."""

    def __init__(self, message: str, unsure: bool = False):
        super().__init__(message)
        self.unsure = unsure


def publish(client: Elasticsearch, alias: str, index: str, url: str) -> set[str]:
    """Point ``alias`` at exactly ``index`` in one atomic request, and prove it by reading it back.

    Returns the indices the alias pointed to before. Raises :class:`NotPublished` saying
    truthfully what the alias points to; an answer lost on the wire counts as published
    only if the alias reads back as ``index``.
    """
    refusal = stranger(client, alias, url)
    if refusal:
        raise NotPublished(refusal)
    previous = aliased(client, alias)
    actions: list[dict[str, Any]] = [{"remove": {"index": name, "alias": alias}} for name in sorted(previous)]
    if not previous and client.indices.exists(index=alias):
        logger.warning("replacing %s, a concrete index this project built, by an alias of the same name", alias)
        actions.append({"remove_index": {"index": alias}})
    actions.append({"add": {"index": index, "alias": alias}})
    failure = None
    try:
        client.indices.update_aliases(body={"actions": actions})
    except (TransportError, EsConnectionError) as exc:
        failure = (
            f"HTTP {exc.status_code}: {reason(exc)}"
            if isinstance(exc, TransportError) and isinstance(exc.status_code, int)
            else str(exc)
        )
    try:
        now = aliased(client, alias)
    except (TransportError, EsConnectionError) as exc:
        raise NotPublished(
            f"could not read the alias {alias} back on {url} after publishing {index} ({failure or 'answered OK'};"
            f" reading back: {exc}): it may point at {index} or still at {sorted(previous) or 'nothing'};"
            f" {index} is kept: check GET /_alias/{alias}",
            unsure=True,
        ) from None
    if now == {index}:
        if failure:
            logger.warning(
                "publishing %s as %s answered %s, but the alias reads back as %s: published",
                index,
                alias,
                failure,
                index,
            )
        return previous
    said = f"answered {failure}" if failure else "answered OK"
    raise NotPublished(
        f"publishing {index} as {alias} on {url} {said}, but {alias} now points at {sorted(now) or 'nothing'}"
        + (": another process changed it at the same time; check who builds this alias" if failure is None else "")
    )


def clean_up(client: Elasticsearch, alias: str, keep: set[str]) -> list[str]:
    """Delete this alias's stale builds; a failure here is logged, never raised.

    Only an index named exactly ``<alias>_v<20 digits>`` whose ``_meta`` says this project
    built it for this alias (builds made before the alias was recorded carry their own
    name only) and that carries no alias of its own: a shared cluster's other indices,
    however they are named, are never touched.
    """
    build_name = re.compile(rf"{re.escape(alias)}_v\d{{20}}")
    try:
        found = client.indices.get(index=f"{alias}_v*")
        stale = sorted(
            name
            for name, body in found.items()
            if name not in keep
            and build_name.fullmatch(name)
            and not body.get("aliases")
            and built_here(name, body, alias)
        )
        if stale:
            client.indices.delete(index=",".join(stale))
        return stale
    except TransportError as exc:
        logger.warning("could not remove old builds of %s: %s", alias, reason(exc))
        return []


def check_no_stranger(client: Elasticsearch, alias: str, url: str) -> None:
    """Stop a build before it writes anything when the alias's name belongs to someone else."""
    refusal = stranger(client, alias, url)
    if refusal:
        raise ImageSearchError(refusal)
