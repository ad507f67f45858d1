"""Search backends: one interface (:mod:`.base`), one class per engine, chosen by ``IMAGE_SEARCH_BACKEND``."""

from __future__ import annotations

from resources.backends.base import SearchBackend
from resources.config import Settings

#: How to build the index, for every "nothing published yet" message.
BUILD_HINT = (
    "build it with `make demo`, or run the Dagster jobs ingest_release, update_vectors and publish_index"
)


def open_backend(settings: Settings) -> SearchBackend:
    """The backend ``settings.backend`` names; the Elasticsearch client is imported only when chosen."""
    if settings.backend == "elasticsearch":
        from resources.backends.elasticsearch import ElasticsearchBackend

        return ElasticsearchBackend(settings)
    from resources.backends.local import LocalBackend

    return LocalBackend(settings)
