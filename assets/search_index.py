"""The ``search_index`` asset: catalog ∩ vectors, built into the configured backend and published atomically.

A new build is written beside the published one and switched to only once it validated,
so searches never see half an index and a failed build leaves the previous one serving.
"""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, ResourceParam, asset

from assets.automation import FOLLOW_PARENTS
from resources.config import Settings, mask_url
from resources.errors import ImageSearchError
from resources.index import open_backend
from resources.index.base import BuildInfo
from resources.models.registry import serving_settings
from resources.release.catalog import index_inputs
from resources.storage.locks import holds_store_locks


@asset(
    group_name="search",
    deps=["photo_catalog", "image_embeddings"],
    kinds={"numpy", "faiss", "elasticsearch"},
    code_version="1",
    description="Catalog photos with an image vector, searchable by vector and by keywords in the configured backend.",
    automation_condition=FOLLOW_PARENTS,
)
@holds_store_locks("search_index")
def search_index(context: AssetExecutionContext, settings: ResourceParam[Settings]) -> MaterializeResult:
    """Build the index into the configured backend and publish it atomically."""
    settings = serving_settings(settings)
    documents, vectors = index_inputs(settings)
    if len(documents) == 0:
        raise ImageSearchError(
            f"no catalog photo has a vector for image model {settings.image_model}: materialize image_embeddings first"
        )
    backend = open_backend(settings)
    info = BuildInfo.for_vectors(settings.image_model, settings.text_model, vectors)

    def progress(done: int, total: int) -> None:
        context.log.info(f"search_index build: {done}/{total}")

    context.log.info(f"building the {backend.engine} index from {len(documents)} documents")
    report = backend.build(documents, vectors, info, progress=progress)
    published = backend.info()
    on_es = settings.backend == "elasticsearch"
    metadata = {
        "dagster/row_count": report.count,
        "backend": settings.backend,
        "engine": backend.engine,
        "index": settings.index_name if on_es else str(settings.index_dir),
        "build": report.name,
        "build_seconds": round(report.seconds, 2),
        "image_model": settings.image_model,
        "text_model": settings.text_model,
        "dim": info.dim,
        "published_count": backend.count(),
        "published_build": published.name if published else "",
    }
    if on_es:
        metadata["url"] = MetadataValue.text(mask_url(settings.es_url))
    metadata.update({f"errors/{kind}": n for kind, n in report.errors.items()})
    metadata.update(
        {f"build/{key}": MetadataValue.text(str(value)) for key, value in report.details.items() if value is not None}
    )
    return MaterializeResult(metadata=metadata)
