"""``image-search`` run as a user runs it: a child process at the project root, none of the developer's settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def clean_env(**settings: str | os.PathLike) -> dict[str, str]:
    """This process's environment without any ``IMAGE_SEARCH_*`` variable, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_SEARCH_")}
    env.update({name: str(value) for name, value in settings.items()})
    return env


def tiny_env(home: Path, tiny_models: tuple[Path, Path], **settings: str | os.PathLike) -> dict[str, str]:
    """:func:`clean_env` over ``home`` with the tiny models, plus ``settings``."""
    return clean_env(
        IMAGE_SEARCH_HOME=home, IMAGE_SEARCH_IMAGE_MODEL=tiny_models[0], IMAGE_SEARCH_TEXT_MODEL=tiny_models[1], **settings
    )


def image_search(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``image-search ARGS`` with ``env``, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "image_search.cli", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout
    )
