"""A document of the release as a typed Parquet table: the storage half of the document assets.

Each document streams with the official loaders' CSV rules (``resources/release/csv_stream.py``)
into ``tables/<name>.parquet``, with the latest release's columns and ``create_tables.sql``'s
types; bad records and values are counted for the asset's metadata, never silently dropped.
"""

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from resources.errors import ImageSearchError
from resources.release.csv_stream import EXAMPLES, FileReport, read_batches, read_header
from resources.release.lite_format import ADDED_IN, COLUMNS, REQUIRED_COLUMNS, canonical_header, has_document
from resources.release.source import document_files
from resources.storage.files import Staged, sweep, write_parquet

_TIMESTAMP = pa.timestamp("us", tz="UTC")
_PATTERNS = {
    pa.int64(): r"^\s*[-+]?[0-9]+\s*$",
    pa.float64(): r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$",
    _TIMESTAMP: r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}(:?\d{2})?)?$",
}
_HAS_ZONE = r"(Z|[+-]\d{2}(:?\d{2})?)$"
#: PostgreSQL's boolean literals (create_tables.sql types these columns boolean); the files hold t/f.
_TRUE, _FALSE = ["t", "true", "y", "yes", "on", "1"], ["f", "false", "n", "no", "off", "0"]
#: Rows of each table kept for its preview in the metadata.
PREVIEW_ROWS = 5


def _fix_utf8(array: pa.Array) -> tuple[pa.Array, int]:
    """``array`` with invalid UTF-8 sequences replaced by U+FFFD, and how many values needed it."""
    try:
        array.validate(full=True)
        return array, 0
    except pa.ArrowInvalid:
        raw = array.cast(pa.binary()).to_pylist()
        fixed = [None if v is None else v.decode("utf-8", errors="replace") for v in raw]
        bad = sum(1 for v in raw if v is not None and v.decode("utf-8", errors="replace").encode("utf-8") != v)
        return pa.array(fixed, pa.string()), bad


def _convert(array: pa.Array, target: pa.DataType) -> tuple[pa.Array, int]:
    """``array`` (strings) as ``target``; values that do not parse become null and are counted."""
    present = pc.is_valid(array)
    if target == pa.bool_():
        lowered = pc.utf8_lower(pc.utf8_trim_whitespace(array))
        true = pc.is_in(lowered, pa.array(_TRUE))
        false = pc.is_in(lowered, pa.array(_FALSE))
        ok = pc.or_(true, false)
        converted = pc.if_else(ok, true, pa.scalar(None, pa.bool_()))
    else:
        ok = pc.fill_null(pc.match_substring_regex(array, _PATTERNS[target]), False)
        kept = pc.if_else(ok, array, pa.scalar(None, pa.string()))
        if target == _TIMESTAMP:
            zoned = pc.fill_null(pc.match_substring_regex(kept, _HAS_ZONE), True)
            kept = pc.if_else(zoned, kept, pc.binary_join_element_wise(kept, pa.scalar("+00:00"), pa.scalar("")))
            kept = pc.replace_substring(kept, " ", "T", max_replacements=1)
        else:
            kept = pc.utf8_trim_whitespace(kept)
        converted = pc.cast(kept, target)
    bad = pc.sum(pc.and_(present, pc.invert(pc.fill_null(ok, False)))).as_py() or 0
    return converted, bad


def ingest_document(documents_dir: Path, name: str, out_path: Path, log, release: str | None = None) -> dict:
    """Stream document ``name`` into ``out_path`` (typed Parquet); return counts for the metadata.

    The table has every column of the latest release with its create_tables.sql type, then
    any column unknown here as a string; a column the files lack is null and listed in
    ``absent_columns``. A document that ``release`` (``"1.0.x"``) does not publish becomes an
    empty table. Raises :class:`ImageSearchError` when any other document has no file, a
    file is empty, lacks a required column, has a header unlike the first file's, or ends
    inside a quoted value.
    """
    files = document_files(documents_dir, name)
    known = COLUMNS[name]
    if not files and not has_document(release, name):
        log.info(f"Unsplash Lite {release} has no {name} document: writing an empty table")
        schema = pa.schema(list(known.items()))
        write_parquet(out_path, schema.empty_table(), compression="zstd")
        return _stats(
            schema,
            files=[],
            absent_document=f"Unsplash Lite {release} has no {name} document (added in {ADDED_IN[name]})",
        )
    if not files:
        raise ImageSearchError(
            f"the release in {documents_dir} has no {name} document ({name}.tsv* or {name}.csv*): "
            "check IMAGE_SEARCH_DATASET points at a complete Unsplash Lite release"
        )
    header = canonical_header(name, read_header(files[0]))
    missing = [c for c in REQUIRED_COLUMNS[name] if c not in header]
    if missing:
        raise ImageSearchError(
            f"{files[0]} has no column {', '.join(missing)}, which the catalog needs (its header: {' '.join(header[:12])}); "
            "is this an Unsplash Lite release?"
        )
    schema = pa.schema(list(known.items()) + [(c, pa.string()) for c in header if c not in known])
    stats = _stats(schema, files=[f.name for f in files])
    stats["absent_columns"] = {
        c: f"added in {ADDED_IN[c]}" if c in ADDED_IN else "not in the files" for c in known if c not in header
    }
    sweep(out_path.parent)
    current = files[0]
    try:
        with Staged(out_path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for current in files:
                file_header = canonical_header(name, read_header(current))
                if file_header != header:
                    raise ImageSearchError(
                        f"{current} has columns {' '.join(file_header)}, unlike {files[0]} ({' '.join(header)}): "
                        "mixed releases in one folder? keep one release per folder"
                    )
                report = FileReport()
                for batch in read_batches(current, header, report):
                    typed = _typed(batch, schema, stats)
                    writer.write_table(typed)
                    if stats["preview"] is None and typed.num_rows:
                        stats["preview"] = typed.slice(0, PREVIEW_ROWS)
                    log.info(f"{name}: {stats['rows'] + report.rows:,} rows read from {current.name}")
                stats["rows"] += report.rows
                stats["skipped_rows"] += report.skipped
                stats["multiline_records"] += report.multiline_records
                stats["skipped_examples"] += [
                    f"{current.name} line {line}: {fields} fields, expected {len(header)}"
                    for line, fields in report.skipped_lines
                ]
            if stats["rows"] == 0:
                raise ImageSearchError(
                    f"{name} document ({', '.join(str(f) for f in files)}) has a header but no rows: download the release again"
                )
    except pa.ArrowInvalid as exc:
        raise ImageSearchError(
            f"{current} could not be read as tab-separated text ({str(exc).splitlines()[0]}): download the release again"
        ) from None
    stats["skipped_examples"] = stats["skipped_examples"][:EXAMPLES]
    stats["unparsed_values"] = {k: v for k, v in stats["unparsed_values"].items() if v}
    return stats


def _stats(schema: pa.Schema, files: list[str], absent_document: str | None = None) -> dict:
    """The counts :func:`ingest_document` reports, all zero."""
    return {
        "rows": 0,
        "files": files,
        "schema": schema,
        "preview": None,
        "skipped_rows": 0,
        "skipped_examples": [],
        "multiline_records": 0,
        "non_utf8_values": 0,
        "unparsed_values": Counter(),
        "absent_columns": {},
        "absent_document": absent_document,
    }


def _typed(batch: pa.RecordBatch, schema: pa.Schema, stats: dict) -> pa.Table:
    """``batch`` (strings) as a table of ``schema``: UTF-8 repaired, typed, absent columns null; counts into ``stats``."""
    arrays = {}
    for column, array in zip(batch.schema.names, batch.columns):
        array, fixed = _fix_utf8(array)
        stats["non_utf8_values"] += fixed
        target = schema.field(column).type
        if target != pa.string():
            array, bad = _convert(array, target)
            stats["unparsed_values"][column] += bad
        arrays[column] = array
    return pa.Table.from_arrays([arrays.get(f.name, pa.nulls(batch.num_rows, f.type)) for f in schema], schema=schema)
