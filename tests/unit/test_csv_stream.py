"""resources/release/csv_stream.py against Python's csv module, the reference for the CSV rules the official loaders use.

Random files mix every case the rules cover (quoted tabs, quotes and line breaks, CR LF
and lone CR line ends, blank lines, stray quotes inside unquoted values, a byte-order
mark, a record with too few or too many fields) and are fed in random block sizes, so
block boundaries fall everywhere, including inside a CR LF pair.
"""

from __future__ import annotations

import codecs
import csv
import io
import random
from pathlib import Path

import pytest

from resources.errors import ImageSearchError
from resources.release.csv_stream import FileReport, LineCounter, UnterminatedQuote, read_batches

COLUMNS = ["a", "b", "c"]


def _field(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.3:
        text = "".join(
            rng.choice(["a", '"', "\t", "\n", "\r", "\r\n", " ", "é", "山"]) for _ in range(rng.randint(0, 6))
        )
        return '"' + text.replace('"', '""') + '"'
    if roll < 0.4:
        return "".join(rng.choice('a"b') for _ in range(rng.randint(0, 4)))  # a stray quote is a plain character
    return "".join(rng.choice("abc ") for _ in range(rng.randint(0, 5)))


def _random_file(rng: random.Random) -> str:
    records = ["\t".join(COLUMNS)]
    for _ in range(rng.randint(0, 12)):
        records.append("\t".join(_field(rng) for _ in range(rng.choice([3, 3, 3, 3, 2, 4, 1]))))
    text = "".join(r + rng.choice(["\n", "\r\n", "\n", "\r", "\n\n"]) for r in records)
    return text.rstrip("\r\n") if rng.random() < 0.3 else text


def _ends_inside_quotes(text: str) -> bool:
    """The reference state machine of the rules, character by character."""
    state = "start"
    for char in text:
        if state == "quoted":
            state = "quote in quoted" if char == '"' else "quoted"
        elif state == "field":
            state = "start" if char in "\t\r\n" else "field"
        else:  # at the start of a field (a quote opens a value) or after a quote in one ("" is a quote)
            state = "quoted" if char == '"' else "start" if char in "\t\r\n" else "field"
    return state == "quoted"


def _expected(text: str) -> tuple[list[list[str]], list[tuple[int, int]], int]:
    """Python's csv module on ``text``: good rows, (start line, fields) of bad ones, records over several lines."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    rows, bad, multiline, start, header = [], [], 0, 1, True
    for row in reader:
        if row and header:
            header = False
        elif row:
            multiline += reader.line_num > start
            if len(row) == len(COLUMNS):
                rows.append(row)
            else:
                bad.append((start, len(row)))
        start = reader.line_num + 1
    return rows, bad, multiline


@pytest.mark.parametrize("seed", range(4))
def test_line_counter_agrees_with_pythons_csv_module(seed: int):
    rng = random.Random(seed)
    for _ in range(400):
        text = _random_file(rng)
        data = (codecs.BOM_UTF8 if rng.random() < 0.1 else b"") + text.encode("utf-8")
        counter = LineCounter(len(COLUMNS))
        position = 0
        while position < len(data):
            step = rng.randint(1, 9)
            counter.feed(data[position : position + step])
            position += step
        if _ends_inside_quotes(text):
            with pytest.raises(UnterminatedQuote):
                counter.finish()
            continue
        counter.finish()
        rows, bad, multiline = _expected(text)
        report = counter.report
        assert (counter.records - 1, report.skipped, report.multiline_records) == (
            len(rows) + len(bad),
            len(bad),
            multiline,
        ), repr(text)
        assert report.skipped_lines == bad[:3], repr(text)


@pytest.mark.parametrize("seed", range(2))
def test_read_batches_yields_what_pythons_csv_module_reads(tmp_path: Path, seed: int):
    rng = random.Random(100 + seed)
    path = tmp_path / "part.tsv000"
    for _ in range(150):
        text = _random_file(rng)
        if _ends_inside_quotes(text):
            continue
        path.write_bytes(text.encode("utf-8"))
        report = FileReport()
        got = [
            [row[c] or "" for c in COLUMNS]
            for batch in read_batches(path, COLUMNS, report, block_size=256)
            for row in batch.to_pylist()
        ]
        rows, bad, _ = _expected(text)
        assert got == rows, repr(text)
        assert (report.rows, report.skipped, report.skipped_lines) == (len(rows), len(bad), bad[:3])


def test_a_cr_lf_inside_a_quoted_value_survives_a_block_boundary(tmp_path: Path):
    """pyarrow alone drops the LF when a block ends between the two (apache/arrow issue 51368)."""
    path = tmp_path / "part.tsv000"
    for pad in range(40, 70):
        path.write_bytes(b"a\tb\tc\n" + b"x" * pad + b'\t"ab\r\ncd"\tz\nq\tw\te\n')
        rows = [row for batch in read_batches(path, COLUMNS, FileReport(), block_size=64) for row in batch.to_pylist()]
        assert rows[0]["b"] == "ab\r\ncd", pad


def test_a_file_cut_inside_a_quote_names_the_line_its_record_starts_on(tmp_path: Path):
    path = tmp_path / "photos.tsv000"
    path.write_text('a\tb\tc\n1\t"two\nlines"\t3\n4\t"never closed\n5\t6\t7\n', encoding="utf-8")
    with pytest.raises(
        ImageSearchError, match=r"photos\.tsv000 ends inside a quoted value opened in the record starting at line 4"
    ):
        list(read_batches(path, COLUMNS, FileReport()))
