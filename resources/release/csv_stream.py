"""Streaming a tab-separated CSV file as Arrow batches, with the line on which each bad record starts.

The dialect is the official loaders' (docs/ingestion.md). pyarrow parses the values but
gives no line numbers and drops a last record whose quote never closes, so
:class:`LineCounter` reads the same blocks with numpy to find where each record starts and
whether the file ends inside a quote. Nothing holds more than one block.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from resources.errors import ImageSearchError

DELIMITER = "\t"
QUOTE = '"'
BLOCK_SIZE = 16 << 20
#: How many bad records a report quotes by line number.
EXAMPLES = 3
_TAB, _LF, _CR, _QUOTE = 9, 10, 13, 34
_FIELD_START = np.array([_TAB, _LF, _CR], np.uint8)
_HEADER_BYTES = 1 << 16


class UnterminatedQuote(Exception):
    """The file ends inside a quoted value: its last record, starting on ``line``, is incomplete."""

    def __init__(self, line: int):
        super().__init__(f"the file ends inside a quoted value opened in the record starting at line {line}")
        self.line = line


@dataclass
class FileReport:
    """What reading one file found, beside the rows it yielded."""

    rows: int = 0
    skipped: int = 0
    #: ``(line, fields)`` of the first :data:`EXAMPLES` records skipped for their field count.
    skipped_lines: list[tuple[int, int]] = field(default_factory=list)
    #: Records whose quoted values hold line breaks, so they span several lines.
    multiline_records: int = 0


class LineCounter:
    """Follows the quoting of a tab-separated CSV stream fed in blocks; knows where each record starts.

    ``feed`` every block in order, then ``finish``. Lines are counted as editors count them:
    LF, CR LF and a lone CR each end one, inside quoted values too. The first non-blank
    record is the header; blank records (an empty line) are ignored, as pyarrow does.
    """

    def __init__(self, fields: int, report: FileReport | None = None):
        self.fields = fields
        self.report = report or FileReport()
        self.records = 0  # non-blank records so far, the header included
        self._in_quotes = False
        self._prev = _LF  # the byte before the next block: the file starts at a line start
        self._prev_closing = False  # that byte is a quote that closed a quoted value
        self._breaks = 0  # line breaks before the next block
        self._start_line = 1  # line on which the record still open starts
        self._tabs = 0  # its unquoted tabs so far
        self._bytes = 0  # its bytes so far
        self._pending = b""  # a trailing CR, held until the next byte shows whether an LF follows
        self._first = True

    def feed(self, data: bytes, final: bool = False) -> None:
        """Account for the next ``data`` bytes of the file."""
        if self._pending:
            data, self._pending = self._pending + data, b""
        if self._first and data:
            self._first = False
            if data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8) :]
        if not final and data.endswith(b"\r"):
            data, self._pending = data[:-1], b"\r"
        if data:
            self._block(np.frombuffer(data, np.uint8))

    def finish(self) -> None:
        """End of file: close the last record; raise :class:`UnterminatedQuote` if it is inside a quote."""
        self.feed(b"", final=True)
        if self._in_quotes:
            raise UnterminatedQuote(self._start_line)
        if self._bytes or self._tabs:
            self._close(np.array([self._start_line]), np.array([self._breaks + 1]), np.array([self._tabs]))

    def _toggles(self, a: np.ndarray, quotes: np.ndarray) -> np.ndarray:
        """The quotes of the block that open or close a quoted value (the others are plain characters)."""
        if not len(quotes):
            return quotes
        opening = quotes[((np.arange(len(quotes)) + self._in_quotes) & 1) == 0]
        before = np.where(opening > 0, a[np.maximum(opening - 1, 0)], self._prev)
        # Every quote opens or closes as long as each opening one starts a field, or follows
        # the closing quote of "" inside a value. The official files always look like this.
        ok = np.isin(before, _FIELD_START) | ((before == _QUOTE) & ((opening > 0) | self._prev_closing))
        if ok.all():
            return quotes
        keep = []
        in_quotes, last_close = self._in_quotes, (-1 if self._prev_closing else -2)
        for position in quotes.tolist():
            if in_quotes:
                keep.append(position)
                in_quotes, last_close = False, position
                continue
            byte = a[position - 1] if position else self._prev
            if byte in (_TAB, _LF, _CR) or (byte == _QUOTE and last_close == position - 1):
                keep.append(position)
                in_quotes = True
        return np.array(keep, dtype=quotes.dtype)

    def _block(self, a: np.ndarray) -> None:
        toggles = self._toggles(a, np.flatnonzero(a == _QUOTE))
        parity = int(self._in_quotes)

        def unquoted(positions: np.ndarray) -> np.ndarray:
            if not len(toggles):
                return positions if not parity else positions[:0]
            return positions[((np.searchsorted(toggles, positions) + parity) & 1) == 0]

        breaks = np.flatnonzero(a == _LF)
        crs = np.flatnonzero(a == _CR)
        if len(crs):
            follower = a[np.minimum(crs + 1, len(a) - 1)]
            lone = crs[(crs + 1 == len(a)) | (follower != _LF)]
            if len(lone):
                breaks = np.union1d(breaks, lone)
        ends = unquoted(breaks)
        tabs = unquoted(np.flatnonzero(a == _TAB))
        if len(ends):
            tabs_before = np.searchsorted(tabs, ends)
            tab_counts = np.diff(tabs_before, prepend=0)
            tab_counts[0] += self._tabs
            starts = np.concatenate(([0], ends[:-1] + 1))
            crlf = (ends > 0) & (a[ends] == _LF) & (a[np.maximum(ends - 1, 0)] == _CR)
            sizes = ends - starts - crlf
            sizes[0] += self._bytes
            start_lines = self._breaks + np.searchsorted(breaks, starts) + 1
            start_lines[0] = self._start_line
            end_lines = self._breaks + np.searchsorted(breaks, ends) + 1
            blank = (sizes == 0) & (tab_counts == 0)
            self._close(start_lines[~blank], end_lines[~blank], tab_counts[~blank])
            self._start_line = self._breaks + int(np.searchsorted(breaks, ends[-1])) + 2
            self._tabs = len(tabs) - int(tabs_before[-1])
            self._bytes = len(a) - int(ends[-1]) - 1
        else:
            self._tabs += len(tabs)
            self._bytes += len(a)
        self._breaks += len(breaks)
        self._in_quotes = bool((len(toggles) + parity) & 1)
        self._prev = int(a[-1])
        self._prev_closing = bool(len(toggles)) and toggles[-1] == len(a) - 1 and not self._in_quotes

    def _close(self, start_lines: np.ndarray, end_lines: np.ndarray, tab_counts: np.ndarray) -> None:
        """Count finished non-blank records; the file's first is the header."""
        if self.records == 0 and len(start_lines):
            start_lines, end_lines, tab_counts = start_lines[1:], end_lines[1:], tab_counts[1:]
            self.records = 1
        self.records += len(start_lines)
        report = self.report
        report.multiline_records += int(np.count_nonzero(end_lines > start_lines))
        wrong = np.flatnonzero(tab_counts + 1 != self.fields)
        report.skipped += len(wrong)
        for i in wrong[: max(EXAMPLES - len(report.skipped_lines), 0)]:
            report.skipped_lines.append((int(start_lines[i]), int(tab_counts[i]) + 1))


class _Tap(io.RawIOBase):
    """The file as pyarrow reads it, every block shown to a :class:`LineCounter` on the way.

    No block but the last ends with a CR: pyarrow's reader drops the LF that starts the
    next block when the CR LF pair is inside a quoted value (apache/arrow issue 51368, open
    in pyarrow 26), so a trailing CR waits for the next block.
    """

    def __init__(self, source, counter: LineCounter):
        self._source = source
        self._counter = counter
        self._carry = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._carry + self._source.read(len(buffer) - len(self._carry))
        self._carry = b""
        if len(data) > 1 and data.endswith(b"\r"):
            data, self._carry = data[:-1], data[-1:]
        buffer[: len(data)] = data
        self._counter.feed(data)
        return len(data)


def read_header(path: Path) -> list[str]:
    """The column names of ``path``: its first record, byte-order mark and surrounding spaces removed."""
    with pa.input_stream(str(path), compression="detect") as stream:
        head = stream.read(_HEADER_BYTES)
    text = head.decode("utf-8-sig", errors="replace")
    for row in csv.reader(io.StringIO(text, newline=""), delimiter=DELIMITER, quotechar=QUOTE):
        if any(cell.strip() for cell in row):
            return [cell.strip() for cell in row]
    raise ImageSearchError(f"{path} is empty: it needs a header line and rows; download the release again")


def read_batches(
    path: Path, columns: list[str], report: FileReport, block_size: int = BLOCK_SIZE
) -> Iterator[pa.RecordBatch]:
    """Stream the records of ``path`` after its header as batches of strings named ``columns``.

    Empty fields are null. A record with the wrong number of fields is skipped and counted in
    ``report`` with the line it starts on. A file that ends inside a quoted value raises an
    :class:`ImageSearchError` naming the line where that record starts, once every batch
    before it has been yielded (so the caller must not keep them).
    """
    counter = LineCounter(len(columns), report)
    skipped_by_reader = 0

    def on_invalid_row(row) -> str:
        nonlocal skipped_by_reader
        skipped_by_reader += 1
        return "skip"

    with pa.input_stream(str(path), compression="detect") as source:
        reader = pacsv.open_csv(
            pa.PythonFile(_Tap(source, counter), mode="r"),
            # The header is read as a row and dropped below: skip_rows fails on a file that is only a header.
            read_options=pacsv.ReadOptions(column_names=columns, block_size=block_size, use_threads=False),
            parse_options=pacsv.ParseOptions(
                delimiter=DELIMITER,
                quote_char=QUOTE,
                double_quote=True,
                newlines_in_values=True,
                invalid_row_handler=on_invalid_row,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns},
                check_utf8=False,
                strings_can_be_null=True,
                null_values=[""],
            ),
        )
        header = True
        for batch in reader:
            if header and batch.num_rows:
                batch, header = batch.slice(1), False
            report.rows += batch.num_rows
            yield batch
    try:
        counter.finish()
    except UnterminatedQuote as exc:
        raise ImageSearchError(
            f"{path} ends inside a quoted value opened in the record starting at line {exc.line}: "
            "the file is cut short; download the release again"
        ) from None
    if (report.rows + skipped_by_reader, skipped_by_reader) != (counter.records - 1, report.skipped):
        raise ImageSearchError(
            f"{path}: pyarrow read {report.rows} rows and skipped {skipped_by_reader}, the line counter found "
            f"{counter.records - 1} records and {report.skipped} bad ones; please report this file's layout"
        )
