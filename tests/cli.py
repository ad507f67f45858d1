"""``image-search`` run as a user runs it: a child process at the project root, none of the developer's settings.

:func:`image_search_in_process` gives the same result through the CLI's ``main`` in the test's
own process, for the many cases (bad input, one line and exit 2) where a fresh interpreter
that loads torch would cost seconds each and show nothing more.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).parents[1]


def clean_env(**settings: str | os.PathLike) -> dict[str, str]:
    """This process's environment without any ``IMAGE_SEARCH_*`` variable, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_SEARCH_")}
    env.update({name: str(value) for name, value in settings.items()})
    return env


def tiny_env(home: Path, tiny_models: tuple[Path, Path], **settings: str | os.PathLike) -> dict[str, str]:
    """:func:`clean_env` over ``home`` with the tiny models, plus ``settings``."""
    return clean_env(
        IMAGE_SEARCH_HOME=home,
        IMAGE_SEARCH_IMAGE_MODEL=tiny_models[0],
        IMAGE_SEARCH_TEXT_MODEL=tiny_models[1],
        **settings,
    )


def image_search(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``image-search ARGS`` with ``env``, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "image_search.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


def image_search_in_process(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """:func:`image_search` through ``image_search.cli.main`` in this process: ``env`` is the whole environment
    and the project root the working folder while it runs, its output and exit status captured as a child's are."""
    from image_search.cli import main

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env, clear=True), contextlib.chdir(ROOT):
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit:  # argparse's errors and --help end this way, as in a child
                code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    return subprocess.CompletedProcess(["image-search", *args], code, out.getvalue(), err.getvalue())
