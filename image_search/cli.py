"""Entry point of the ``image-search`` console script.

Each subcommand lives in its own module and registers itself with :func:`register`;
heavy imports (torch, Dagster) happen inside the handlers, so ``--help`` is instant and
the query path never loads Dagster.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from resources.errors import ImageSearchError

#: OpenBLAS threads spin for a while after each call; on a small machine they then steal the
#: cores torch needs for the next query's text encoding (measured: 112-119 ms per text query
#: end to end with the default, 42-54 ms with this). Read once, when numpy loads its BLAS.
OPENBLAS_THREAD_TIMEOUT = "4"

#: Modules under image_search/ that add their subcommands through ``register(subparsers)``.
COMMANDS = ("sample", "query", "api", "cluster", "materialize", "backfill", "saved_cli", "models_cli")
#: The checkout this package runs from, if it does: benchmarks/ lives there, beside the package.
CHECKOUT = Path(__file__).resolve().parents[1]


def _register_bench(sub: argparse._SubParsersAction) -> None:
    """``bench``: the benchmarks of a checkout, or one line saying they need one (an installed wheel has none)."""
    if (CHECKOUT / "benchmarks" / "harness.py").is_file():
        if str(CHECKOUT) not in sys.path:
            sys.path.append(str(CHECKOUT))
        importlib.import_module("benchmarks.harness").register(sub)
        return

    def missing(_args: argparse.Namespace) -> int:
        raise ImageSearchError(
            "image-search bench runs from a checkout of the repository (benchmarks/ is not installed)"
        )

    parser = sub.add_parser("bench", help="benchmarks (from a checkout of the repository)")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=missing)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="image-search", description="Multilingual CLIP image search over an Unsplash Lite catalog."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"image_search.{name}").register(sub)
    _register_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a user-fixable problem prints one line and exits 2."""
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", OPENBLAS_THREAD_TIMEOUT)
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except ImageSearchError as exc:
        print(f"image-search: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("image-search: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
