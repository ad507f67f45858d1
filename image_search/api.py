"""``image-search api``: serve the HTTP JSON API (:mod:`search_app.api`) alone.

Listens on 127.0.0.1:8502 unless told otherwise; beyond loopback it needs
``IMAGE_SEARCH_API_KEY``. Imports only the query side, never Dagster.
"""

from __future__ import annotations

import argparse

DEFAULT_PORT = 8502


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``api`` to the CLI."""
    parser = sub.add_parser(
        "api",
        help="serve the HTTP JSON search API",
        description="Serve the search API (OpenAPI at /docs). Beyond 127.0.0.1 it needs IMAGE_SEARCH_API_KEY, "
        "which callers send in the X-API-Key header.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--no-access-log", dest="access_log", action="store_false", help="log no line per request")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    from resources.config import Settings
    from resources.errors import ImageSearchError
    from search_app.api import serve

    if not 1 <= args.port <= 65535:
        raise ImageSearchError(f"--port {args.port} is not a TCP port: use 1 to 65535")
    serve(Settings.from_env(), args.host, args.port, access_log=args.access_log)
    return 0
