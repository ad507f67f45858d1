"""The raw release and its five documents, as typed Parquet tables.

``unsplash_release`` gets the release named by ``IMAGE_SEARCH_DATASET``: a URL is
downloaded (progress in the logs, resumed with an HTTP ``Range`` request after a cut, size
and sha256 recorded), a local zip is read in place, and either zip is extracted; a folder
is read in place. A manifest under ``release/`` tells the document assets where the files
are and which release version their columns show (1.0.x to 1.4.x).

``photos``, ``keywords``, ``collections``, ``conversions`` and ``colors`` each stream their
document (every part, ``<name>.tsv*`` / ``<name>.csv*``, each with its header) with the
official loaders' CSV rules (``resources/csv_stream.py``) into ``tables/<name>.parquet``,
so the 4 M conversion rows never sit in memory at once. Every table has the columns of the
latest release with the types of ``create_tables.sql`` (``resources/lite_format.py``);
columns an older release lacks are null and listed in the metadata, and a document it
lacks (colors before 1.1.0) is an empty table. Bad records are counted and reported, never
silently dropped: one with the wrong number of fields is skipped and reported with the
line it starts on, a value that does not parse as its column's type becomes null, and
non-UTF-8 bytes are replaced by U+FFFD. A missing or empty document, one without a column
the catalog needs, or a file cut inside a quoted value fails with one line naming the
file. Every table is written under a temporary name and renamed when complete.
"""

import hashlib
import json
import os
import shutil
import time
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    TableColumn,
    TableSchema,
    asset,
)

from resources.config import Settings, mask_url
from resources.csv_stream import EXAMPLES, FileReport, read_batches, read_header
from resources.errors import ImageSearchError
from resources.files import Staged, sweep, write_parquet, write_text
from resources.lite_format import (
    ADDED_IN,
    COLUMNS,
    DOCUMENTS,
    REQUIRED_COLUMNS,
    canonical_header,
    has_document,
    release_of,
)

MANIFEST = "manifest.json"

_TIMESTAMP = pa.timestamp("us", tz="UTC")
_PATTERNS = {
    pa.int64(): r"^\s*[-+]?[0-9]+\s*$",
    pa.float64(): r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$",
    _TIMESTAMP: r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}(:?\d{2})?)?$",
}
_HAS_ZONE = r"(Z|[+-]\d{2}(:?\d{2})?)$"
#: PostgreSQL's boolean literals (create_tables.sql types these columns boolean); the files hold t/f.
_TRUE, _FALSE = ["t", "true", "y", "yes", "on", "1"], ["f", "false", "n", "no", "off", "0"]
_DOWNLOAD_CHUNK = 1 << 20
_DOWNLOAD_ATTEMPTS = 5
PREVIEW_ROWS = 5
PREVIEW_CHARS = 40


# --------------------------------------------------------------------------- the release


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_DOWNLOAD_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _Retryable(Exception):
    """A download attempt ended early for a reason a retry may cure."""


def download(url: str, dest_dir: Path, *, timeout: float, log, attempts: int = _DOWNLOAD_ATTEMPTS) -> Path:
    """Download ``url`` into ``dest_dir`` and return the finished file's path.

    Bytes go to ``<name>.zip.part`` first; a cut connection, a timeout or a 5xx is retried
    up to ``attempts`` times, each resuming where the last stopped (HTTP ``Range``), and so
    does the next run after a crash. A file already downloaded is kept when a ``HEAD``
    request shows the same ``ETag`` and size. Progress is logged every 10%.
    """
    shown = mask_url(url)
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    final = dest_dir / f"{name}.zip"
    part = dest_dir / f"{name}.zip.part"
    info_path = dest_dir / f"{name}.json"
    with httpx.Client(follow_redirects=True, timeout=timeout) as client:
        if final.is_file() and info_path.is_file():
            info = json.loads(info_path.read_text(encoding="utf-8"))
            try:
                head = client.head(url)
                same = head.status_code < 400 and head.headers.get("etag") == info.get("etag") and (
                    int(head.headers.get("content-length", -1)) in (-1, final.stat().st_size)
                )
            except httpx.HTTPError as exc:
                log.warning(f"{shown}: HEAD failed ({type(exc).__name__}); using the copy downloaded before")
                same = True
            if same:
                log.info(f"{shown}: unchanged since the last download, using {final}")
                return final
        etag = None
        for attempt in range(1, attempts + 1):
            try:
                etag = _download_once(client, url, part, log)
                break
            except (_Retryable, httpx.TransportError) as exc:
                if attempt == attempts:
                    raise ImageSearchError(
                        f"download of {shown} failed {attempts} times (last: {exc or type(exc).__name__}); "
                        f"{part.stat().st_size if part.exists() else 0} bytes kept in {part}, materialize again to resume"
                    ) from None
                log.warning(f"{shown}: {exc or type(exc).__name__}; resuming (attempt {attempt + 1} of {attempts})")
                time.sleep(min(2 ** attempt * 0.25, 10))
    os.replace(part, final)
    write_text(info_path, json.dumps({"url": shown, "etag": etag, "size": final.stat().st_size}, indent=2))
    return final


def _download_once(client: httpx.Client, url: str, part: Path, log) -> str | None:
    """One request: append to ``part`` from its current size. Returns the response's ETag."""
    shown = mask_url(url)
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and offset:
            total = response.headers.get("content-range", "").rpartition("/")[2]
            if total == str(offset):
                return response.headers.get("etag")
            part.unlink()
            raise _Retryable(f"the server refused to resume at byte {offset}; starting over")
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise _Retryable(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise ImageSearchError(f"download of {shown} failed: HTTP {response.status_code}; check IMAGE_SEARCH_DATASET")
        if response.status_code == 206:
            start = response.headers.get("content-range", "").removeprefix("bytes ").partition("-")[0]
            if start != str(offset):
                part.unlink()
                raise _Retryable(f"the server resumed at {start!r} instead of byte {offset}; starting over")
            mode = "ab"
            log.info(f"{shown}: resuming at byte {offset}")
        else:
            offset, mode = 0, "wb"
        length = response.headers.get("content-length")
        total = offset + int(length) if length else None
        done, next_report = offset, 0.1
        with open(part, mode) as f:
            for chunk in response.iter_bytes():
                f.write(chunk)
                done += len(chunk)
                if total and done / total >= next_report:
                    log.info(f"{shown}: {done / total:.0%} of {total / 1e6:.1f} MB")
                    next_report = int(done / total * 10 + 1) / 10
        if total is not None and done < total:
            raise _Retryable(f"connection closed after {done} of {total} bytes")
        return response.headers.get("etag")


class _CorruptZip(Exception):
    """The zip could not be read or a member failed its CRC check."""


def extract(zip_path: Path, dest: Path) -> Path:
    """Extract ``zip_path`` into ``dest`` (replacing it only once the whole zip extracted cleanly).

    A zip whose sha256 matches the one extracted there last is not extracted again. Member
    names that would land outside ``dest`` are refused.
    """
    sha = _sha256(zip_path)
    marker = dest / ".source.json"
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("sha256") == sha:
        return dest
    sweep(dest.parent)
    try:
        with Staged(dest, folder=True) as tmp, zipfile.ZipFile(zip_path) as archive:
            for member in archive.infolist():
                target = (tmp / member.filename).resolve()
                if not target.is_relative_to(tmp.resolve()):
                    raise ImageSearchError(f"release zip {zip_path} holds {member.filename!r}, outside the release folder: refusing it")
                if member.is_dir():
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, _DOWNLOAD_CHUNK)
            (tmp / ".source.json").write_text(json.dumps({"zip": str(zip_path), "sha256": sha}, indent=2), encoding="utf-8")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise _CorruptZip(f"{exc}") from None
    return dest


def fetch_release(settings: Settings, log) -> dict:
    """Make the release named by ``settings.dataset`` readable locally; return its manifest.

    The manifest (also written to ``release/manifest.json``) holds ``documents_dir``, where
    the document assets look for the TSV files, and what was fetched: source, size, sha256.
    """
    dataset = settings.dataset
    shown = mask_url(dataset)
    release_dir = settings.release_dir
    release_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"source": shown}
    if dataset.startswith(("http://", "https://")):
        zip_path = download(dataset, release_dir / "downloads", timeout=settings.download_timeout, log=log)
        manifest["kind"] = "download"
    else:
        path = Path(dataset).expanduser()
        if path.is_dir():
            manifest.update(kind="folder", documents_dir=str(path.resolve()))
            zip_path = None
        elif path.is_file():
            zip_path = path.resolve()
            manifest["kind"] = "zip"
        else:
            raise ImageSearchError(
                f"IMAGE_SEARCH_DATASET={dataset}: no such file or folder; point it at a release zip, a folder of TSV files or a URL"
            )
    if zip_path is not None:
        try:
            documents_dir = extract(zip_path, release_dir / "extracted")
        except _CorruptZip as exc:
            if manifest["kind"] == "download":
                zip_path.unlink(missing_ok=True)
                zip_path.with_suffix(".json").unlink(missing_ok=True)
                action = "the download was deleted; materialize again to download it afresh"
            else:
                action = "download the release again"
            raise ImageSearchError(f"release zip {zip_path} is corrupt ({exc}): {action}") from None
        manifest.update(documents_dir=str(documents_dir), zip=str(zip_path), size=zip_path.stat().st_size, sha256=_sha256(zip_path))
    documents_dir = Path(manifest["documents_dir"])
    files = {doc: document_files(documents_dir, doc) for doc in DOCUMENTS}
    manifest["files"] = {doc: [p.name for p in paths] for doc, paths in files.items()}
    manifest["release"] = _release_of(files)
    write_text(release_dir / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


def _release_of(files: dict[str, list[Path]]) -> str | None:
    """The release whose columns the first file of each document has (``"1.2.x"``); an unreadable one is left out."""
    headers = {}
    for doc, paths in files.items():
        if paths:
            try:
                headers[doc] = canonical_header(doc, read_header(paths[0]))
            except ImageSearchError:
                continue
    return release_of(headers)


def read_manifest(settings: Settings) -> dict:
    """The manifest ``unsplash_release`` wrote last."""
    path = settings.release_dir / MANIFEST
    if not path.is_file():
        raise ImageSearchError(f"no release manifest at {path}: materialize unsplash_release first")
    return json.loads(path.read_text(encoding="utf-8"))


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
        context.log.warning(f"the release has no file for {', '.join(missing)} (looked for <name>.tsv* and <name>.csv*)")
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


def document_files(documents_dir: Path, name: str) -> list[Path]:
    """The files of document ``name``: ``<name>.tsv*`` and ``<name>.csv*`` anywhere under the folder."""
    found = {p for pattern in (f"{name}.tsv*", f"{name}.csv*") for p in documents_dir.rglob(pattern)}
    return sorted(p for p in found if p.is_file() and not p.name.endswith((".tmp", ".part")))


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


def _column_schema(schema: pa.Schema) -> TableSchema:
    return TableSchema(columns=[TableColumn(name=f.name, type=str(f.type)) for f in schema])


def _preview(table: pa.Table, columns: list[str] | None = None) -> str:
    """A few rows as a markdown table, long values cut, so metadata stays small."""
    columns = columns or table.column_names[:8]
    head = table.select(columns).slice(0, PREVIEW_ROWS).to_pylist()

    def cell(value) -> str:
        text = "" if value is None else str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in head]
    return "\n".join(lines)


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
        return _stats(schema, files=[], absent_document=f"Unsplash Lite {release} has no {name} document (added in {ADDED_IN[name]})")
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
    stats["absent_columns"] = {c: f"added in {ADDED_IN[c]}" if c in ADDED_IN else "not in the files" for c in known if c not in header}
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
                    f"{current.name} line {line}: {fields} fields, expected {len(header)}" for line, fields in report.skipped_lines
                ]
            if stats["rows"] == 0:
                raise ImageSearchError(f"{name} document ({', '.join(str(f) for f in files)}) has a header but no rows: download the release again")
    except pa.ArrowInvalid as exc:
        raise ImageSearchError(f"{current} could not be read as tab-separated text ({str(exc).splitlines()[0]}): download the release again") from None
    stats["skipped_examples"] = stats["skipped_examples"][:EXAMPLES]
    stats["unparsed_values"] = {k: v for k, v in stats["unparsed_values"].items() if v}
    return stats


def _stats(schema: pa.Schema, files: list[str], absent_document: str | None = None) -> dict:
    """The counts :func:`ingest_document` reports, all zero."""
    return {
        "rows": 0, "files": files, "schema": schema, "preview": None, "skipped_rows": 0, "skipped_examples": [],
        "multiline_records": 0, "non_utf8_values": 0, "unparsed_values": Counter(), "absent_columns": {},
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
            context.log.warning(f"{name}: skipped {stats['skipped_rows']} records with the wrong number of fields, e.g. {stats['skipped_examples'][0]}")
        if stats["non_utf8_values"]:
            context.log.warning(f"{name}: replaced invalid UTF-8 bytes in {stats['non_utf8_values']} values")
        if stats["unparsed_values"]:
            context.log.warning(f"{name}: values that did not parse, kept as null: {stats['unparsed_values']}")
        if stats["absent_columns"]:
            context.log.info(f"{name}: the files have no {', '.join(stats['absent_columns'])}; those columns are null")
        metadata = {
            "dagster/row_count": stats["rows"],
            "dagster/column_schema": _column_schema(stats["schema"]),
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
            metadata["preview"] = MetadataValue.md(_preview(stats["preview"]))
        return MaterializeResult(metadata=metadata)

    return _asset


photos = _document_asset("photos")
keywords = _document_asset("keywords")
collections = _document_asset("collections")
conversions = _document_asset("conversions")
colors = _document_asset("colors")
