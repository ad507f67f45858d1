"""``image-search bench api``: the HTTP API under load, query micro-batching on against off.

Publishes a synthetic local index (the documents and clustered vectors of ``bench query``)
in a temporary folder, starts two real ``image-search api`` processes on 127.0.0.1 over it,
one with ``IMAGE_SEARCH_QUERY_BATCHING`` off and one with it on, and loads them from this
process: a fixed number of text searches at each concurrency level (persistent connections,
one thread per client, each sending its next request when the last one is answered),
reporting requests per second and p50/p99 latency per level. The baseline beside it: ``bench
query``'s text end-to-end figure (the query service called in-process, one query at a time,
no HTTP). The arms take turns in rounds, so a machine that speeds up or slows down during the
run moves all of them alike. Method and latest figures: docs/api.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from benchmarks.harness import add_json_flag, print_figures

LEVELS = (1, 4, 16)
ROUNDS = 4


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench api``."""
    parser = sub.add_parser("api", help="HTTP API throughput and latency at concurrency 1, 4, 16, batching on and off")
    parser.add_argument("--docs", type=int, default=25_000, help="documents in the synthetic index (default 25000)")
    parser.add_argument("--requests", type=int, default=400, help="timed requests per concurrency level (default 400)")
    parser.add_argument(
        "--queries", type=int, default=200, help="timed in-process queries for the baseline (default 200)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS,
        help=f"turns the arms take at each level, each with its share of the requests (default {ROUNDS})",
    )
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def _ms(samples: list[float]) -> dict[str, float]:
    values = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p99_ms": round(float(np.percentile(values, 99)), 2)}


def _texts(n: int) -> list[str]:
    """The queries ``bench query`` times, so both benchmarks encode the same token counts."""
    from benchmarks.query import QUERIES

    return [f"{QUERIES[i % len(QUERIES)]} {i}" for i in range(n)]


def _share(items: list, turn: int, rounds: int) -> list:
    """Round ``turn``'s share of ``items``: the shares of all rounds together are ``items``."""
    return items[turn::rounds]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _path(text: str) -> str:
    return "/search?" + urlencode({"q": text, "k": 10})


def _get(connection: http.client.HTTPConnection, path: str) -> bytes:
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path} answered {response.status}: {body[:300]!r}")
    return body


def _load(port: int, texts: list[str], concurrency: int) -> tuple[float, list[float]]:
    """Send ``texts`` as searches from ``concurrency`` clients: (wall seconds, each request's latency)."""
    next_index = iter(range(len(texts)))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[BaseException] = []
    start_line = threading.Barrier(concurrency + 1)

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            _get(connection, "/health")
            start_line.wait()
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                started = time.perf_counter()
                _get(connection, _path(texts[i]))
                took = time.perf_counter() - started
                with lock:
                    latencies.append(took)
        except BaseException as exc:  # noqa: BLE001 - reported after the threads end
            errors.append(exc)
            start_line.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    try:
        start_line.wait()
    except threading.BrokenBarrierError:
        pass
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return wall, latencies


def _serve(home: Path, batching: bool) -> tuple[subprocess.Popen, int]:
    """A real ``image-search api`` on 127.0.0.1 over ``home``, once it answers."""
    from resources.errors import ImageSearchError

    port = _free_port()
    env = {**os.environ, "IMAGE_SEARCH_HOME": str(home), "IMAGE_SEARCH_QUERY_BATCHING": str(batching).lower()}
    process = subprocess.Popen(
        [sys.executable, "-m", "image_search.cli", "api", "--port", str(port), "--no-access-log"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ImageSearchError(f"the API server exited {process.returncode}: {process.stderr.read()[-500:]}")
        try:
            _get(http.client.HTTPConnection("127.0.0.1", port, timeout=5), "/health")
            return process, port
        except (OSError, RuntimeError):
            time.sleep(0.5)
    process.kill()
    raise ImageSearchError("the API server did not answer /health within 600 s")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run(args: argparse.Namespace) -> int:
    """Publish the synthetic index, then time the baseline and both servers in turns at each level."""
    from benchmarks.query import clustered_vectors, synthetic_documents, timed
    from resources.config import Settings
    from resources.errors import ImageSearchError
    from resources.index.base import BuildInfo
    from resources.index.local import LocalBackend
    from search_app.service import SearchService, _open_encoder

    if args.docs < 100 or args.requests < 50 or args.queries < 10 or not 1 <= args.rounds <= 10:
        raise ImageSearchError("bench api needs --docs >= 100, --requests >= 50, --queries >= 10 and --rounds 1 to 10")
    settings = Settings.from_env()
    figures: dict[str, object] = {"docs": args.docs, "requests_per_level": args.requests, "rounds": args.rounds}
    figures["load_average_at_start"] = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        home = Path(tmp)
        home_settings = settings.replace(home=home, backend="local", query_batching=False)
        encoder = _open_encoder(home_settings)
        encoder.encode_texts(["warm up"])
        figures["image_model"], figures["text_model"] = encoder.image_model_id, encoder.text_model_id
        figures["text_runtime"] = f"{encoder.text_runtime} ({encoder.precision} on {encoder.device})"
        vectors = clustered_vectors(args.docs, encoder.dim, clusters=1024, seed=0)
        backend = LocalBackend(home_settings)
        backend.build(
            synthetic_documents(args.docs, seed=0),
            vectors,
            BuildInfo.for_vectors(encoder.image_model_id, encoder.text_model_id, vectors),
        )
        service = SearchService(backend, home_settings, encoder=encoder)
        service.search_text("warm up", k=10)

        servers: dict[str, tuple[subprocess.Popen, int]] = {}
        try:
            for label, batching in (("batching_off", False), ("batching_on", True)):
                servers[label] = _serve(home, batching)
            baseline: list[float] = []
            levels: dict[str, dict[str, object]] = {label: {} for label in servers}
            for concurrency in LEVELS:
                for _, port in servers.values():
                    _load(port, _texts(2 * concurrency), concurrency)
                walls = {label: 0.0 for label in servers}
                latencies: dict[str, list[float]] = {label: [] for label in servers}
                arms = [*servers, *(["baseline"] if concurrency == 1 else [])]
                requests, queries = _texts(args.requests), _texts(args.queries)
                for turn in range(args.rounds):
                    for arm in arms[turn % len(arms) :] + arms[: turn % len(arms)]:
                        if arm == "baseline":
                            baseline += timed(
                                lambda text: service.search_text(text, k=10), _share(queries, turn, args.rounds)
                            )[0]
                            continue
                        wall, took = _load(servers[arm][1], _share(requests, turn, args.rounds), concurrency)
                        walls[arm] += wall
                        latencies[arm] += took
                for label in servers:
                    levels[label][f"c{concurrency}"] = {
                        "req_per_s": round(len(latencies[label]) / walls[label], 1),
                        **_ms(latencies[label]),
                    }
            for label, (_, port) in servers.items():
                info = json.loads(_get(http.client.HTTPConnection("127.0.0.1", port, timeout=30), "/info"))
                levels[label]["server_batching"] = info["batching"]
        finally:
            for process, _ in servers.values():
                _stop(process)
    figures["baseline_bench_query_text_end_to_end"] = _ms(baseline)
    figures.update(levels)

    on, off = figures["batching_on"], figures["batching_off"]
    figures["c16_speedup_on_vs_off"] = round(on["c16"]["req_per_s"] / off["c16"]["req_per_s"], 2)
    figures["c1_p50_on_vs_baseline"] = round(
        on["c1"]["p50_ms"] / figures["baseline_bench_query_text_end_to_end"]["p50_ms"], 2
    )
    figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
    return print_figures(
        args, figures, lambda shown: (f"{key:<40} {value}" for key, value in shown.items() if key != "cpu")
    )
