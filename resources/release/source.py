"""The Unsplash Lite release on local disk: downloaded and resumed, or read in place, then extracted.

A URL is downloaded into ``release/downloads/`` and kept while the server's validators say
it has not changed (``resources/http_client.py``); a local zip is read in place; either zip
is extracted into ``release/extracted/``; a folder is read in place. ``release/manifest.json``
tells the document assets where the files are and which release their columns show.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import zipfile
import zlib
from pathlib import Path

import urllib3
from urllib3.exceptions import HTTPError

from resources import http_client
from resources.config import Settings, mask_url
from resources.errors import ImageSearchError
from resources.release.csv_stream import read_header
from resources.release.lite_format import DOCUMENTS, canonical_header, release_of
from resources.storage.files import Staged, sweep, write_text

MANIFEST = "manifest.json"
DOWNLOAD_ATTEMPTS = 5
_CHUNK = 1 << 20
#: What a write error means for the user, by errno; any other one is shown as the system says it.
_DISK_ADVICE = {
    errno.ENOSPC: "the disk is full: free space there",
    errno.EDQUOT: "the disk quota is used up: free space there or raise the quota",
    errno.EFBIG: "a file exceeds the size this process may write: raise the limit (ulimit -f)",
    errno.EACCES: "permission denied: make the folder writable by this user",
    errno.EPERM: "permission denied: make the folder writable by this user",
    errno.EROFS: "the file system is read-only: point IMAGE_SEARCH_HOME at a writable one",
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest_dir: Path, *, timeout: float, log, attempts: int = DOWNLOAD_ATTEMPTS) -> Path:
    """Download ``url`` into ``dest_dir`` and return the finished file's path.

    A ``HEAD`` first: a file downloaded before is kept while the server's validators are
    those recorded with it, as the release sensor decides (:meth:`Validators.changed_from`).
    Bytes go to ``<name>.zip.part``, which outlives a failed run so that the next one
    resumes it: each of ``attempts`` tries (the retry policy of ``resources/http_client.py``)
    asks for the rest with ``Range``, and ``If-Range`` makes the server send the whole file
    if it changed meanwhile. Progress is logged every 10%.
    """
    shown = mask_url(url)
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    final, part = dest_dir / f"{name}.zip", dest_dir / f"{name}.zip.part"
    info_path, part_info_path = dest_dir / f"{name}.json", dest_dir / f"{name}.part.json"
    client = http_client.pool(timeout=timeout, accept="application/zip, */*")
    try:
        # Taken before the download: if the file changes during it, the next run sees new
        # validators and downloads again; the other order could keep a stale file for good.
        try:
            remote = http_client.head(url, timeout=timeout, client=client)
        except http_client.RequestFailed as exc:
            if exc.status is None and final.is_file():
                log.warning(f"{shown}: HEAD failed ({exc}); using the copy downloaded before")
                return final
            remote = None
        if remote is not None and final.is_file() and info_path.is_file():
            saved = http_client.Validators.from_dict(
                json.loads(info_path.read_text(encoding="utf-8")).get("validators")
            )
            if not remote.changed_from(saved):
                log.info(f"{shown}: unchanged since the last download, using {final}")
                return final

        def resuming(state) -> None:
            log.warning(
                f"{shown}: {state.outcome.exception()}; resuming (attempt {state.attempt_number + 1} of {attempts})"
            )

        try:
            http_client.retrying(attempts, before_sleep=resuming)(
                _download_once, client, url, part, part_info_path, log
            )
        except http_client.Transient as exc:
            raise ImageSearchError(
                f"download of {shown} failed {attempts} times (last: {exc}); "
                f"{part.stat().st_size if part.exists() else 0} bytes kept in {part}, materialize again to resume"
            ) from None
    finally:
        client.clear()
    part.replace(final)
    part_info_path.unlink(missing_ok=True)
    validators = remote.as_dict() if remote is not None else None
    write_text(info_path, json.dumps({"url": shown, "validators": validators, "size": final.stat().st_size}, indent=2))
    return final


def _download_once(client: urllib3.PoolManager, url: str, part: Path, part_info_path: Path, log) -> None:
    """One request: append to ``part`` from its current size, unless the file changed since ``part`` was begun."""
    shown = mask_url(url)
    offset = part.stat().st_size if part.exists() else 0
    begun = (
        http_client.Validators.from_dict(json.loads(part_info_path.read_text(encoding="utf-8")))
        if offset and part_info_path.is_file()
        else None
    )
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    if begun is not None and begun.if_range:
        headers["If-Range"] = begun.if_range
    try:
        response = client.request("GET", url, headers=headers, preload_content=False)
    except (HTTPError, ValueError) as exc:
        raise http_client.Transient(str(http_client.cause(exc))) from None
    try:
        status = response.status
        if status == 416 and offset:
            if response.headers.get("Content-Range", "").rpartition("/")[2] == str(offset):
                return
            part.unlink()
            raise http_client.Transient(f"the server refused to resume at byte {offset}; starting over")
        if status in http_client.RETRY_STATUSES:
            retry_after = http_client.parse_retry_after(response.headers.get("Retry-After"))
            raise http_client.Transient(f"HTTP {status}", retry_after)
        if status >= 400:
            raise ImageSearchError(f"download of {shown} failed: HTTP {status}; check IMAGE_SEARCH_DATASET")
        validators = http_client.Validators.of(url, response)
        if status == 206:
            start = response.headers.get("Content-Range", "").removeprefix("bytes ").partition("-")[0]
            if start != str(offset):
                part.unlink()
                raise http_client.Transient(f"the server resumed at {start!r} instead of byte {offset}; starting over")
            mode = "ab"
            log.info(f"{shown}: resuming at byte {offset}")
        else:
            offset, mode = 0, "wb"
            write_text(part_info_path, json.dumps(validators.as_dict()))
        total = int(validators.length) if validators.length.isdigit() else None
        done, next_report = offset, 0.1
        with open(part, mode) as f:
            while chunk := response.read1(_CHUNK):
                f.write(chunk)
                done += len(chunk)
                if total and done / total >= next_report:
                    log.info(f"{shown}: {done / total:.0%} of {total / 1e6:.1f} MB")
                    next_report = int(done / total * 10 + 1) / 10
        if total is not None and done < total:
            raise http_client.Transient(f"connection closed after {done} of {total} bytes")
    except HTTPError as exc:
        response.close()
        raise http_client.Transient(str(http_client.cause(exc))) from None
    except BaseException:
        # The body was not read to its end: this connection cannot carry another request.
        response.close()
        raise
    finally:
        response.release_conn()


class CorruptZip(ImageSearchError):
    """The zip could not be read or a member failed its CRC check."""


def extract(zip_path: Path, dest: Path, sha256: str) -> Path:
    """Extract ``zip_path`` (whose digest is ``sha256``) into ``dest``, replacing it only once the whole zip extracted.

    A zip extracted there last is not extracted again. Member names that would land
    outside ``dest`` are refused. A zip that cannot be read raises :class:`CorruptZip`; a
    folder that cannot be written (full, read-only) raises a one-line error saying what to do.
    """
    marker = dest / ".source.json"
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("sha256") == sha256:
        return dest
    sweep(dest.parent)
    try:
        with Staged(dest, folder=True) as tmp, zipfile.ZipFile(zip_path) as archive:
            for member in archive.infolist():
                target = (tmp / member.filename).resolve()
                if not target.is_relative_to(tmp.resolve()):
                    raise ImageSearchError(
                        f"release zip {zip_path} holds {member.filename!r}, outside the release folder: refusing it"
                    )
                if member.is_dir():
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
            (tmp / ".source.json").write_text(
                json.dumps({"zip": str(zip_path), "sha256": sha256}, indent=2), encoding="utf-8"
            )
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise CorruptZip(f"release zip {zip_path} is corrupt ({exc})") from None
    except OSError as exc:
        advice = _DISK_ADVICE.get(exc.errno, exc.strerror or str(exc))
        raise ImageSearchError(
            f"could not extract release zip {zip_path} into {dest.parent}: {advice}; the zip is kept, materialize again to extract it"
        ) from None
    return dest


def fetch_release(settings: Settings, log) -> dict:
    """Make the release named by ``settings.dataset`` readable locally; return its manifest.

    The manifest (also written to ``release/manifest.json``) holds ``documents_dir``, where
    the document assets look for the TSV files, and what was fetched: source, size, sha256.
    """
    dataset = settings.dataset
    release_dir = settings.release_dir
    release_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"source": mask_url(dataset)}
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
        sha256 = _sha256(zip_path)
        try:
            documents_dir = extract(zip_path, release_dir / "extracted", sha256)
        except CorruptZip as exc:
            if manifest["kind"] == "download":
                zip_path.unlink(missing_ok=True)
                zip_path.with_suffix(".json").unlink(missing_ok=True)
                action = "the download was deleted; materialize again to download it afresh"
            else:
                action = "download the release again"
            raise ImageSearchError(f"{exc}: {action}") from None
        manifest.update(
            documents_dir=str(documents_dir), zip=str(zip_path), size=zip_path.stat().st_size, sha256=sha256
        )
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


def document_files(documents_dir: Path, name: str) -> list[Path]:
    """The files of document ``name``: ``<name>.tsv*`` and ``<name>.csv*`` anywhere under the folder."""
    found = {p for pattern in (f"{name}.tsv*", f"{name}.csv*") for p in documents_dir.rglob(pattern)}
    return sorted(p for p in found if p.is_file() and not p.name.endswith((".tmp", ".part")))
