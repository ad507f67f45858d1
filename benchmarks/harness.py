"""``image-search bench ...``: benchmarks that print their figures beside a baseline run in the same process.

The harness every benchmark shares lives here: the CPU line, the ``--json`` flag and its
printer, and the one way peak memory is measured (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from resources.errors import ImageSearchError

#: Modules under benchmarks/ that each add one benchmark through ``register(subparsers)``.
BENCHMARKS: tuple[str, ...] = ("query", "api", "ingest", "download", "relevance", "embed", "scale")


def cpu_description() -> str:
    """The CPU model, the flags that decide precision and runtime, and the CPU count: figures compare only on the same CPU."""
    from resources.encoder.devices import MATRIX_FLAGS, cpu_info

    cpu = cpu_info()
    return f"{cpu.model}, flags {' '.join(cpu.flags) or 'none of ' + '/'.join(MATRIX_FLAGS)}, {os.cpu_count()} CPUs"


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """The ``--json`` option every benchmark takes."""
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def print_figures(args: argparse.Namespace, figures: dict, lines: Callable[[dict], Iterable[str]] | None = None) -> int:
    """Print ``figures`` with the CPU they were measured on; returns the exit status 0.

    With ``--json``: one JSON object, the CPU under ``cpu``. Otherwise ``lines(figures)``
    (by default one ``key value`` row per figure), then ``cpu: ...``.
    """
    figures = {**figures, "cpu": cpu_description()}
    if args.json:
        print(json.dumps(figures))
        return 0
    rows = lines(figures) if lines else (f"{key:<32} {value}" for key, value in figures.items() if key != "cpu")
    for line in rows:
        print(line)
    print(f"cpu: {figures['cpu']}")
    return 0


def peak_rss_mb() -> int:
    """This process's peak resident memory so far, in MB (``ru_maxrss``, which never goes down)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


@dataclass(frozen=True)
class ChildRun:
    """What :func:`run_child` measured: the child's output, peak resident memory and wall time."""

    stdout: str
    peak_rss_mb: int
    seconds: float


#: Runs its arguments as a command and prints that child's ``ru_maxrss``. ``RUSAGE_CHILDREN``
#: is the largest of all waited-for children, so each measurement has an interpreter of its own.
_PROBE = (
    "import json, resource, subprocess, sys;"
    "done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True);"
    "print(json.dumps({'rc': done.returncode, 'peak_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
    " 'out': done.stdout, 'err': done.stderr}))"
)


def run_child(argv: list[str], *, what: str, cwd: Path, env: dict[str, str] | None = None) -> ChildRun:
    """Run ``argv`` in a fresh process; its peak resident memory (``ru_maxrss``), wall time and stdout.

    A child that fails raises one line naming ``what`` and quoting its last line of stderr.
    """
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    seconds = time.perf_counter() - started
    measured = json.loads(done.stdout)
    if measured["rc"] != 0:
        tail = (measured["err"].strip().splitlines() or ["no output"])[-1]
        raise ImageSearchError(f"{what} failed (exit status {measured['rc']}): {tail}")
    return ChildRun(measured["out"], round(measured["peak_kb"] / 1024), round(seconds, 1))


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its subcommands (one module each)."""
    parser = sub.add_parser("bench", help="benchmarks (each prints its baseline beside it)")
    bench_sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name in BENCHMARKS:
        importlib.import_module(f"benchmarks.{name}").register(bench_sub)
