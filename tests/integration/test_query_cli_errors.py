"""``image-search query``'s bad-input cases through the CLI's ``main`` in this process (``image_search_in_process``:
the same environment, working folder, output and exit status as a child, without an interpreter start-up per
case). One of them stays a real child process, with the rest of the command: test_query_cli."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli import clean_env, image_search_in_process


def _cli_in_process(home: Path, *args: str) -> subprocess.CompletedProcess:
    return image_search_in_process("query", *args, env=clean_env(IMAGE_SEARCH_HOME=home))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image", "/no/such/picture.jpg"], "not found"),
        (["--like", "no-such-photo"], "not in the index"),
        (["cat", "-k", "0"], "out of range"),
        (["cat", "-k", "5000"], "out of range"),
        (["cat", "--since", "2020-13-45"], "not a date"),
        (["cat", "--since", "2021-01-01", "--until", "2020-01-01"], "after"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(search_home: Path, args: list[str], message: str):
    out = _cli_in_process(search_home, *args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("image-search: ")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--expr", '"beach" -'], "cannot read '-' at position 9 of the query: the query ends after this sign"),
        (["--expr", "beach + 0*people"], "cannot read '0*people' at position 9"),
        (["beach", "--plus", "photo:"], "give a photo id after photo:"),
        (["beach", "--plus", "photo:no-such-photo"], "part 2: photo id 'no-such-photo' is not in the index"),
        (["--minus", "people"], "only negative parts"),
        (["--mode", "keyword", "beach", "--plus", "image:/no/such.jpg"], "not found"),
        (["-k", "3"], "nothing to search for"),
    ],
)
def test_bad_compositions_are_one_line_and_exit_2(search_home: Path, args: list[str], message: str):
    out = _cli_in_process(search_home, *args)
    assert out.returncode == 2, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("image-search: ")
