"""Saved searches under ``<home>/saved``: one folder per search, each file replaced whole under the search's lock.

A search's folder holds ``search.json`` (what to search: the query, mode, k, filters),
``image-<n>.jpg`` (the images a photo search was made with), ``marks.json`` (photo id ->
good or bad), ``results.json`` (the latest refresh's top k and the build before it) and
``looked.json`` (the top k its user last looked at). One folder per search keeps writers
of different searches apart and confines a damaged file to its own search.

Every change is a read-modify-write under ``<home>/locks/saved/<name>.lock``
(:func:`resources.storage.locks.store_lock`: ``flock``, which also holds between machines sharing
``IMAGE_SEARCH_HOME``) that replaces the file atomically (:mod:`resources.storage.files`), so the
page, the API, the CLI and the pipeline never lose each other's entries. A file that is
not valid JSON is moved aside as ``<file>.corrupt-<time>`` and named in one line; it is
never overwritten.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import unicodedata
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from resources.errors import ImageSearchError, NotFoundError, UnavailableError
from resources.storage import files
from resources.storage.locks import store_lock

#: Letters, digits, spaces, ``-`` and ``_``: no path character, no dot, so a name is always one folder.
NAME = re.compile(r"\w[\w -]{0,62}\w|\w")
QUERY_KINDS = ("text", "like", "image", "parts")
MARKS = ("good", "bad")
#: Seconds a writer waits for another writing the same saved search (each holds it for milliseconds).
LOCK_TIMEOUT_S = 30.0
#: Most saved searches one home holds: each is a partition and a run after every build.
MAX_SAVED_SEARCHES = 500


class CorruptFileError(ImageSearchError):
    """A saved-search file that is not valid JSON; it has been moved aside, untouched."""


def now() -> str:
    """The current UTC time as ISO 8601 (seconds)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def check_name(name: str) -> str:
    """``name`` if it can name a saved search (and its folder and Dagster partition); else one line saying why."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ImageSearchError(
            f"saved search name {name!r} is not usable: use 1 to 64 letters, digits, spaces, '-' or '_' "
            "(no '/', '\\' or '.', no space at either end)"
        )
    return name


@dataclass(frozen=True)
class SavedSearch:
    """A search kept under a name: ``query`` is one of ``{"text": words}``, ``{"like": photo_id}``,
    ``{"image": 0}`` (its stored image) or ``{"parts": [...]}`` (a composed query, an image part naming a
    stored image by its number), searched with ``mode``, ``k``, ``filters`` (ISO dates) and the other options."""

    name: str
    query: dict[str, Any]
    mode: str = "vector"
    k: int = 10
    filters: dict[str, str] = field(default_factory=dict)
    min_score: float | None = None
    hide_duplicates: bool = True
    created_at: str = ""

    def __post_init__(self) -> None:
        check_name(self.name)
        if len(self.query) != 1 or next(iter(self.query)) not in QUERY_KINDS:
            raise ImageSearchError(
                f"saved search {self.name!r}: the query {self.query!r} is not one of {', '.join(QUERY_KINDS)}"
            )
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= 1000:
            raise ImageSearchError(f"saved search {self.name!r}: k={self.k!r} is out of range: use 1 to 1000")

    @property
    def kind(self) -> str:
        """``text``, ``like``, ``image`` or ``parts``."""
        return next(iter(self.query))

    def label(self) -> str:
        """The search in a few words, for lists and headings."""
        value = self.query[self.kind]
        if self.kind == "text":
            return f"“{value}” ({self.mode})"
        if self.kind == "like":
            return f"more like photo {value}"
        if self.kind == "image":
            return "a photo"
        return f"a composed query of {len(value)} parts ({self.mode})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "SavedSearch":
        """The search ``data`` describes; a one-line error when it is not one."""
        try:
            return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})
        except (TypeError, KeyError):
            raise ImageSearchError(f"not a saved search: {str(data)[:80]!r}") from None


class SavedStore:
    """The saved searches under ``home``; safe for concurrent writers in any process on any machine sharing it."""

    def __init__(self, home: Path, lock_timeout: float = LOCK_TIMEOUT_S):
        self.home = Path(home)
        self.root = self.home / "saved"
        self.lock_timeout = lock_timeout

    def folder(self, name: str) -> Path:
        return self.root / check_name(name)

    @contextmanager
    def locked(self, name: str) -> Iterator[Path]:
        """Hold ``name``'s lock; yields its folder."""
        folder = self.folder(name)
        with self._lock(f"{name}.lock", f"saved search {name!r}"):
            yield folder

    @contextmanager
    def _lock(self, file: str, what: str) -> Iterator[None]:
        """Hold ``locks/saved/<file>``; a wait past the timeout is a 503-kind error that names no path or process.

        The lock's own message names its file and holder (pid, host), which the HTTP API must
        not show its callers (CWE-209, CWE-497).
        """
        with ExitStack() as held:
            try:
                held.enter_context(store_lock(self.home / "locks" / "saved" / file, what, self.lock_timeout))
            except ImageSearchError:
                raise UnavailableError(
                    f"{what} is busy: another writer held it for {self.lock_timeout:g} s; try again"
                ) from None
            yield

    # -- searches ----------------------------------------------------------------

    def names(self) -> list[str]:
        """Every saved search's name (each folder holding a ``search.json``), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in os.scandir(self.root)
            if NAME.fullmatch(entry.name) and os.path.isfile(os.path.join(entry.path, "search.json"))
        )

    def searches(self) -> tuple[list[SavedSearch], list[str]]:
        """Every readable saved search, and one line for each one that could not be read."""
        found, problems = [], []
        for name in self.names():
            try:
                found.append(self.get(name))
            except ImageSearchError as exc:
                problems.append(str(exc))
        return found, problems

    def get(self, name: str) -> SavedSearch:
        """The saved search ``name``; :class:`NotFoundError` when there is none."""
        data = self._read(self.folder(name) / "search.json", name)
        if data is None:
            raise NotFoundError(f"no saved search named {name!r}: see `image-search saved list`")
        search = SavedSearch.from_dict(data)
        if search.name != name:
            raise ImageSearchError(f"saved search {name!r}: its search.json names {search.name!r}; save it again")
        return search

    def add(self, search: SavedSearch, images: list[bytes] = (), results: dict | None = None) -> SavedSearch:
        """Save ``search`` with its ``images`` (JPEG bytes) and first ``results``; refuses a name in use."""
        search = SavedSearch(**{**search.to_dict(), "created_at": search.created_at or now()})
        # The names lock first: look-alike names are different locks, and the cap counts every name.
        with self._lock("names.lock", "the saved search names"), self.locked(search.name) as folder:
            self.check_free(search.name)
            if len(self.names()) >= MAX_SAVED_SEARCHES:
                raise ImageSearchError(
                    f"there are {MAX_SAVED_SEARCHES} saved searches already, the most one home holds: remove one first"
                )
            staged = files.Staged(folder, folder=True) if not folder.exists() else None
            target = staged.path if staged else folder
            try:
                for number, data in enumerate(images):
                    files.write_bytes(target / f"image-{number}.jpg", data)
                if results is not None:
                    _write_json(target / "results.json", results)
                    _write_json(target / "looked.json", {"ids": [t["photo_id"] for t in results["top"]], "at": now()})
                _write_json(target / "search.json", search.to_dict())
            except BaseException:
                if staged:
                    staged.discard()
                raise
            if staged:
                staged.commit()
        return search

    def check_free(self, name: str) -> None:
        """A one-line error when a saved search named ``name``, or one differing only in case or width, exists already.

        Such names are one folder on a case-insensitive share (SMB, macOS) and look alike in
        every list (CWE-178; Unicode UTS #39), so they are compared NFKC-normalised and case-folded.
        """
        if (self.folder(name) / "search.json").is_file():
            raise ImageSearchError(
                f"a saved search named {name!r} exists already: pick another name, or remove it first "
                f"(`image-search saved rm {name!r}`)"
            )
        twin = next((other for other in self.names() if _folded(other) == _folded(name)), None)
        if twin is not None:
            raise ImageSearchError(
                f"saved search name {name!r} is too like the saved search {twin!r} (they differ only in case or "
                "letter width): pick another name"
            )

    def remove(self, name: str) -> None:
        """Delete ``name`` with its marks and results; :class:`NotFoundError` when there is none."""
        with self.locked(name) as folder:
            if not folder.is_dir():
                raise NotFoundError(f"no saved search named {name!r}: see `image-search saved list`")
            aside = files.temporary_name(folder)
            os.rename(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)

    def image(self, name: str, number: int) -> bytes:
        """The bytes of the saved search's image ``number``."""
        path = self.folder(name) / f"image-{number}.jpg"
        if not path.is_file():
            raise ImageSearchError(f"saved search {name!r} has no image {number}: save it again with its image")
        return path.read_bytes()

    # -- marks, results, looks -------------------------------------------------------

    def marks(self, name: str) -> dict[str, str]:
        """photo id -> ``good`` or ``bad``."""
        return {pid: entry["mark"] for pid, entry in (self._read(self.folder(name) / "marks.json", name) or {}).items()}

    def mark(self, name: str, photo_id: str, mark: str | None) -> dict[str, str]:
        """Mark ``photo_id`` good or bad for ``name`` (``None`` takes the mark back); returns every mark."""
        if mark is not None and mark not in MARKS:
            raise ImageSearchError(f"mark {mark!r} is not one of {', '.join(MARKS)}: use good or bad")
        with self.locked(name) as folder:
            self._require(folder, name)
            marks = self._read(folder / "marks.json", name) or {}
            if mark is None:
                marks.pop(photo_id, None)
            else:
                marks[photo_id] = {"mark": mark, "at": now()}
            _write_json(folder / "marks.json", marks)
        return {pid: entry["mark"] for pid, entry in marks.items()}

    def results(self, name: str) -> dict | None:
        """The latest refresh's record (see :mod:`resources.saved.refresh`), or ``None`` before the first."""
        return self._read(self.folder(name) / "results.json", name)

    def update_results(self, name: str, update) -> dict:
        """Replace ``name``'s results with ``update(previous results or None)`` under its lock; returns them."""
        with self.locked(name) as folder:
            self._require(folder, name)
            results = update(self._read(folder / "results.json", name))
            _write_json(folder / "results.json", results)
        return results

    def looked(self, name: str) -> set[str]:
        """The photo ids its user last looked at."""
        return set((self._read(self.folder(name) / "looked.json", name) or {}).get("ids", []))

    def look(self, name: str, photo_ids: list[str]) -> None:
        """Remember that its user has now seen ``photo_ids``."""
        with self.locked(name) as folder:
            self._require(folder, name)
            _write_json(folder / "looked.json", {"ids": list(photo_ids), "at": now()})

    # -- files ---------------------------------------------------------------------

    def _require(self, folder: Path, name: str) -> None:
        if not (folder / "search.json").is_file():
            raise NotFoundError(f"no saved search named {name!r}: see `image-search saved list`")

    def _read(self, path: Path, name: str) -> Any:
        """``path``'s JSON, ``None`` when absent; a damaged file is moved aside and named in a :class:`CorruptFileError`."""
        try:
            with open(path, encoding="utf-8") as handle:
                read = os.fstat(handle.fileno())
                text = handle.read()
        except FileNotFoundError:
            return None
        try:
            return json.loads(text)
        except ValueError:
            aside = path.with_name(f"{path.name}.corrupt-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%fZ}")
            if not _move_aside_if_unchanged(path, read, aside):
                raise UnavailableError(
                    f"saved search {name!r}: {path.name} was being replaced while it was read; try again"
                )
            raise CorruptFileError(  # named under the home: the HTTP API shows this line to its callers (CWE-209)
                f"saved search {name!r}: {path.name} is not valid JSON; it was kept aside as "
                f"{aside.relative_to(self.home)} under IMAGE_SEARCH_HOME and the search goes on without it (save or mark again)"
            ) from None


def _move_aside_if_unchanged(path: Path, read: os.stat_result, aside: Path) -> bool:
    """Rename ``path`` to ``aside`` only while it is still the damaged file that was read; whether it is gone.

    Readers hold no lock, so a writer may have replaced the damaged file with a good one
    since it was read (writes are whole-file renames: a new inode); that one stays (CWE-367).
    """
    try:
        now_there = os.stat(path)
    except FileNotFoundError:
        return True  # another reader moved it aside first
    if (now_there.st_dev, now_there.st_ino) != (read.st_dev, read.st_ino):
        return False
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        pass
    return True


def _folded(name: str) -> str:
    """``name`` as compared for look-alikes: NFKC-normalised and case-folded."""
    return unicodedata.normalize("NFKC", name).casefold()


def _write_json(path: Path, data: Any) -> None:
    files.write_text(path, json.dumps(data, ensure_ascii=False, indent=1), durable=True)
