"""``image-search bench download``: photos/s of the project's downloader against the original loop.

Both fetch from a local server (the test suite's, in its own process) in the same run.
Needs a source checkout; the method and the latest figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.harness import add_json_flag, print_figures
from resources.config import Settings
from resources.errors import ImageSearchError
from resources.images.downloader import Downloader

ROOT = Path(__file__).resolve().parents[1]
SERVER_SCRIPT = ROOT / "tests" / "http_fixtures.py"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench download``."""
    parser = sub.add_parser("download", help="photos/s of the downloader against a local server with added latency")
    parser.add_argument("--images", type=int, default=2000, help="photos the downloader fetches (default 2000)")
    parser.add_argument(
        "--baseline-images", type=int, default=100, help="photos the one-by-one baseline fetches (default 100)"
    )
    parser.add_argument("--latency-ms", type=float, default=50.0, help="added to every response (default 50)")
    add_json_flag(parser)
    parser.set_defaults(handler=_main)


def _start_server(images: int, latency_ms: float) -> tuple[subprocess.Popen, str]:
    if not SERVER_SCRIPT.is_file():
        raise ImageSearchError(f"bench download needs {SERVER_SCRIPT}: run it from a source checkout")
    server = subprocess.Popen(
        # Run as a module from the checkout's root, so that it imports its siblings (tests/images.py).
        [sys.executable, "-m", "tests.http_fixtures", "--images", str(images), "--latency-ms", str(latency_ms)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    base_url = server.stdout.readline().strip()
    if not base_url:
        server.kill()
        raise ImageSearchError(f"the benchmark server ({SERVER_SCRIPT}) did not start")
    return server, base_url


def _baseline(urls: list[str], folder: Path) -> float:
    """The original design's loop: one request at a time, no timeout, no checks; returns seconds."""
    started = time.perf_counter()
    for index, url in enumerate(urls):
        with urllib.request.urlopen(url) as response:
            (folder / f"{index}.jpg").write_bytes(response.read())
    return time.perf_counter() - started


def run(images: int, baseline_images: int, latency_ms: float) -> dict:
    """Time both loops against one server; returns the figures."""
    server, base_url = _start_server(max(images, baseline_images), latency_ms)
    try:
        urls = [f"{base_url}/photos/{i}.jpg" for i in range(max(images, baseline_images))]
        with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
            baseline_dir = Path(tmp) / "baseline"
            baseline_dir.mkdir()
            baseline_s = _baseline(urls[:baseline_images], baseline_dir)
            mean_kb = sum(p.stat().st_size for p in baseline_dir.iterdir()) / max(baseline_images, 1) / 1024

            settings = Settings.from_env(home=Path(tmp) / "home")
            with Downloader.from_settings(settings) as downloader:
                started = time.perf_counter()
                results = list(downloader.fetch_all((f"photo{i:06d}", url) for i, url in enumerate(urls[:images])))
                project_s = time.perf_counter() - started
    finally:
        server.kill()
        server.wait()
    baseline_rate = baseline_images / baseline_s
    project_rate = images / project_s
    return {
        "latency_ms": latency_ms,
        "mean_image_kb": round(mean_kb, 1),
        "baseline_images": baseline_images,
        "baseline_s": round(baseline_s, 2),
        "baseline_images_per_s": round(baseline_rate, 1),
        "images": images,
        "concurrency": settings.download_concurrency,
        "project_s": round(project_s, 2),
        "project_images_per_s": round(project_rate, 1),
        "speedup": round(project_rate / baseline_rate, 1),
        "stored": sum(result.ok for result in results),
        "failed": sum(not result.ok for result in results),
        "kept_original": sum(result.kept_original for result in results),
    }


def _main(args: argparse.Namespace) -> int:
    if args.images < 1 or args.baseline_images < 1:
        raise ImageSearchError("--images and --baseline-images must be at least 1")
    return print_figures(args, run(args.images, args.baseline_images, args.latency_ms), _lines)


def _lines(f: dict) -> list[str]:
    return [
        f"server: 640x427 JPEGs of {f['mean_image_kb']} KB on average, +{f['latency_ms']:g} ms per response, "
        "in its own process",
        f"baseline (one by one, urlopen, no checks): {f['baseline_images']} photos in "
        f"{f['baseline_s']} s = {f['baseline_images_per_s']} photos/s",
        f"project (Downloader, concurrency {f['concurrency']}, validated, atomic): "
        f"{f['images']} photos in {f['project_s']} s = {f['project_images_per_s']} photos/s "
        f"({f['speedup']}x), {f['stored']} stored, {f['failed']} failed",
    ]
