"""Search backends: one interface (:mod:`.base`), one class per engine, chosen by ``IMAGE_SEARCH_BACKEND``."""

from __future__ import annotations

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.index.base import SearchBackend

#: What the shadow index of a registered model adds to ``IMAGE_SEARCH_INDEX`` (issue #27).
MODEL_INFIX = "-model-"
#: How to build the index, for every "nothing published yet" message.
BUILD_HINT = "build it with `make demo`, or run the Dagster jobs ingest_release, update_vectors and publish_index"


def open_backend(settings: Settings) -> SearchBackend:
    """The backend ``settings.backend`` names; the Elasticsearch client is imported only when chosen.

    An ``IMAGE_SEARCH_INDEX`` holding ``-model-`` is refused: it could be another deployment's
    model shadow index, whose builds this one's clean-up would then take for its own.
    """
    if settings.backend == "elasticsearch":
        if MODEL_INFIX in settings.index_name:
            raise ImageSearchError(
                f"IMAGE_SEARCH_INDEX={settings.index_name!r} holds {MODEL_INFIX!r}, which names the shadow index of "
                "a registered model: choose a name without it"
            )
        from resources.index.elasticsearch import ElasticsearchBackend

        return ElasticsearchBackend(settings)
    from resources.index.local import LocalBackend

    return LocalBackend(settings)


def model_backend(settings: Settings, model_name: str) -> SearchBackend:
    """The shadow index of registered model ``model_name`` on the configured engine; the service never searches it.

    Local: its own folder ``index/models/<name>/``; Elasticsearch/OpenSearch: its own alias
    ``<IMAGE_SEARCH_INDEX>-model-<name>``. Builds there are published by the model release's
    promotion with :meth:`SearchBackend.adopt` (issue #27). The name is checked here, where it
    becomes a path and an index name, whatever passed it on (CWE-22).
    """
    from resources.models.registry import check_name

    check_name(model_name)
    if settings.backend == "elasticsearch":
        from resources.index.elasticsearch import ElasticsearchBackend

        return ElasticsearchBackend(settings.replace(index_name=f"{settings.index_name}{MODEL_INFIX}{model_name}"))
    from resources.index.local import LocalBackend

    return LocalBackend(settings, root=settings.index_dir / "models" / model_name)
