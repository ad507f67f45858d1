"""The raw release and its five documents, as typed Parquet tables.

``unsplash_release`` makes the release named by ``IMAGE_SEARCH_DATASET`` readable on local
disk (``resources/release/source.py``); ``photos``, ``keywords``, ``collections``, ``conversions``
and ``colors`` each make their document a typed table (``resources/release/tables.py``) and record
what was read and what was skipped.
"""

from pathlib import Path

from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    asset,
)

from assets.metadata import column_schema, preview
from resources.config import Settings
from resources.release.source import fetch_release, read_manifest
from resources.release.tables import ingest_document

# --------------------------------------------------------------------------- the release


@asset(
    group_name="ingestion",
    kinds={"python", "file"},
    code_version="1",
    description="The Unsplash Lite release named by IMAGE_SEARCH_DATASET, downloaded (resumable) or read locally, then extracted.",
)
def unsplash_release(context: AssetExecutionContext, settings: ResourceParam[Settings]) -> MaterializeResult:
    """Fetch and extract the release; record where its documents are, its size and its sha256."""
    manifest = fetch_release(settings, context.log)
    missing = [doc for doc, files in manifest["files"].items() if not files]
    if missing:
        context.log.warning(
            f"the release has no file for {', '.join(missing)} (looked for <name>.tsv* and <name>.csv*)"
        )
    context.log.info(f"the files have the columns of Unsplash Lite {manifest['release'] or 'an unknown release'}")
    metadata = {
        "source": manifest["source"],
        "kind": manifest["kind"],
        "release": manifest["release"] or "unknown",
        "documents_dir": MetadataValue.path(manifest["documents_dir"]),
        "files": MetadataValue.json(manifest["files"]),
    }
    if "sha256" in manifest:
        metadata.update(size_bytes=manifest["size"], sha256=manifest["sha256"])
    return MaterializeResult(metadata=metadata)


# --------------------------------------------------------------------------- the documents


def _document_asset(name: str):
    @asset(
        name=name,
        group_name="ingestion",
        kinds={"parquet"},
        code_version="2",
        deps=[unsplash_release],
        description=f"The release's {name} document as typed Parquet (tables/{name}.parquet).",
    )
    def _asset(context: AssetExecutionContext, settings: ResourceParam[Settings]) -> MaterializeResult:
        manifest = read_manifest(settings)
        out_path = settings.tables_dir / f"{name}.parquet"
        stats = ingest_document(Path(manifest["documents_dir"]), name, out_path, context.log, manifest.get("release"))
        if stats["skipped_rows"]:
            context.log.warning(
                f"{name}: skipped {stats['skipped_rows']} records with the wrong number of fields, e.g. {stats['skipped_examples'][0]}"
            )
        if stats["non_utf8_values"]:
            context.log.warning(f"{name}: replaced invalid UTF-8 bytes in {stats['non_utf8_values']} values")
        if stats["unparsed_values"]:
            context.log.warning(f"{name}: values that did not parse, kept as null: {stats['unparsed_values']}")
        if stats["absent_columns"]:
            context.log.info(f"{name}: the files have no {', '.join(stats['absent_columns'])}; those columns are null")
        metadata = {
            "dagster/row_count": stats["rows"],
            "dagster/column_schema": column_schema(stats["schema"]),
            "path": MetadataValue.path(str(out_path)),
            "files": MetadataValue.json(stats["files"]),
            "skipped_rows": stats["skipped_rows"],
            "skipped_examples": MetadataValue.json(stats["skipped_examples"]),
            "multiline_records": stats["multiline_records"],
            "non_utf8_values": stats["non_utf8_values"],
            "unparsed_values": MetadataValue.json(stats["unparsed_values"]),
            "absent_columns": MetadataValue.json(stats["absent_columns"]),
        }
        if stats["absent_document"]:
            metadata["absent_document"] = stats["absent_document"]
        if stats["preview"] is not None:
            metadata["preview"] = preview(stats["preview"])
        return MaterializeResult(metadata=metadata)

    return _asset


photos = _document_asset("photos")
keywords = _document_asset("keywords")
collections = _document_asset("collections")
conversions = _document_asset("conversions")
colors = _document_asset("colors")
