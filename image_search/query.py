"""``image-search query``: search the published index from the command line.

One of ``TEXT``, ``--image PATH`` or ``--like PHOTO_ID``, or a composed query: any of them
with repeated ``--plus``/``--minus`` terms, or an expression with ``--expr`` (see
docs/composition.md). Prints a compact table, or with ``--json`` an object
``{"query", "mode", "filters", "results": [{"photo_id", "score", ...}]}``; a composed query's
``query`` is ``{"parts": [{"text"|"photo_id"|"image": ..., "weight": ...}, ...]}``.
Imports only the query service, never Dagster.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from resources.errors import ImageSearchError
from resources.index.base import MODES, ORIENTATIONS, Filters, check_k


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``query`` to the CLI."""
    parser = sub.add_parser(
        "query",
        help="search the index by text, by an image, or like an indexed photo",
        description="Search the published index. Scores are cosine similarities (BM25 in keyword mode, "
        "reciprocal rank fusion in hybrid mode, with the cosine beside it).",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("text", nargs="?", help="words in any language")
    what.add_argument("--image", metavar="PATH", help="an image file to search with")
    what.add_argument(
        "--like",
        metavar="PHOTO_ID",
        help="an indexed photo to find more like (write --like=ID for an id starting with '-')",
    )
    what.add_argument(
        "--expr",
        metavar="EXPRESSION",
        help="a composed query, e.g. '\"beach\" - people + 0.5*photo:ID' (see docs/composition.md)",
    )
    term = "[WEIGHT*]WORDS|photo:ID|image:PATH"
    parser.add_argument(
        "--plus",
        action="append",
        default=[],
        metavar=term,
        help="also like this: words, an indexed photo or an image file, optionally weighted (repeatable)",
    )
    parser.add_argument("--minus", action="append", default=[], metavar=term, help="but unlike this (repeatable)")
    parser.add_argument("-k", type=int, default=10, help="how many results (1-1000, default 10)")
    add_filter_options(parser)
    duplicates = parser.add_mutually_exclusive_group()
    duplicates.add_argument(
        "--hide-duplicates",
        dest="hide_duplicates",
        action="store_true",
        default=True,
        help="show only the best photo of each near-duplicate group (the default)",
    )
    duplicates.add_argument(
        "--show-duplicates", dest="hide_duplicates", action="store_false", help="show near-duplicates too"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=run)


def add_filter_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that runs a search takes besides its query: score cut-off, mode and filters."""
    parser.add_argument("--min-score", type=float, default=None, help="drop results below this cosine similarity")
    parser.add_argument("--mode", choices=MODES, default="vector", help="text search mode (default vector)")
    parser.add_argument("--orientation", choices=ORIENTATIONS)
    parser.add_argument("--color", help="a colour keyword, e.g. red")
    parser.add_argument("--country", help="country of the photo's location (any case)")
    parser.add_argument("--since", metavar="YYYY-MM-DD", help="submitted on or after this day")
    parser.add_argument("--until", metavar="YYYY-MM-DD", help="submitted on or before this day")


def _day(value: str | None, option: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ImageSearchError(f"{option} {value!r} is not a date: use YYYY-MM-DD") from None


def filters_from(args: argparse.Namespace) -> Filters:
    """The search filters the options ask for."""
    filters = Filters(
        orientation=args.orientation,
        color=args.color,
        country=args.country,
        since=_day(args.since, "--since"),
        until=_day(args.until, "--until"),
    )
    if filters.since and filters.until and filters.since > filters.until:
        raise ImageSearchError(f"--since {filters.since} is after --until {filters.until}: swap them")
    return filters


def composition_from(args: argparse.Namespace) -> list | None:
    """The composed query's terms, or ``None`` for a plain text, image or like search."""
    from search_app.compose import Term, parse_expression, parse_term

    if not (args.text or args.image or args.like or args.expr or args.plus or args.minus):
        raise ImageSearchError("nothing to search for: give words, --image PATH, --like PHOTO_ID, --expr or --plus")
    if args.expr is None and not args.plus and not args.minus:
        return None
    terms = parse_expression(args.expr) if args.expr is not None else []
    if args.text:
        terms.append(Term("words", args.text, 1.0, args.text))
    elif args.image:
        terms.append(Term("image", args.image, 1.0, args.image))
    elif args.like:
        terms.append(Term("photo", args.like, 1.0, args.like))
    terms += [parse_term(value) for value in args.plus] + [parse_term(value, -1.0) for value in args.minus]
    return terms


def run(args: argparse.Namespace) -> int:
    """Run the search and print it."""
    from resources.config import Settings
    from search_app.service import SearchService

    check_k(args.k)
    filters = filters_from(args)
    terms = composition_from(args)
    service = SearchService.from_settings(Settings.from_env())
    if terms is not None:
        from search_app.compose import query_parts

        query, mode = {"parts": [t.as_dict() for t in terms]}, args.mode
        results = service.search_composed(
            query_parts(terms),
            k=args.k,
            min_score=args.min_score,
            mode=args.mode,
            filters=filters,
            collapse_duplicates=args.hide_duplicates,
        )
    elif args.image:
        query, mode = {"image": args.image}, "image"
        results = service.search_image(
            args.image, k=args.k, min_score=args.min_score, filters=filters, collapse_duplicates=args.hide_duplicates
        )
    elif args.like:
        query, mode = {"like": args.like}, "like"
        results = service.more_like_this(
            args.like, k=args.k, min_score=args.min_score, filters=filters, collapse_duplicates=args.hide_duplicates
        )
    else:
        query, mode = {"text": args.text}, args.mode
        results = service.search_text(
            args.text,
            k=args.k,
            min_score=args.min_score,
            mode=args.mode,
            filters=filters,
            collapse_duplicates=args.hide_duplicates,
        )
    if args.json:
        shown = {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in vars(filters).items() if v}
        json.dump(
            {
                "query": query,
                "mode": mode,
                "filters": shown,
                "results": [r.to_dict() for r in results],
                "model": service.answered_by(),
            },
            sys.stdout,
            ensure_ascii=False,
        )
        sys.stdout.write("\n")
    else:
        print_table(results, mode)
    return 0


def print_table(results: list, mode: str) -> None:
    """A compact table: rank, score (and cosine in hybrid mode), photo_id, photographer, keywords."""
    if not results:
        print("no results (try another query, a lower --min-score or fewer filters)")
        return
    score_label = {"keyword": "bm25", "hybrid": "rrf"}.get(mode, "cosine")
    header = (
        f"{'#':>4}  {score_label:>7}  "
        + ("cosine   " if mode == "hybrid" else "")
        + f"{'photo_id':<14} photographer        keywords"
    )
    print(header)
    for rank, r in enumerate(results, start=1):
        cosine = "" if mode != "hybrid" else (f"{r.cosine:7.3f}  " if r.cosine is not None else f"{'-':>7}  ")
        who = (r.photographer_name or r.photographer_username or "")[:18]
        keywords = (r.describe or "")[:48]
        score = f"{r.score:7.4f}" if mode == "hybrid" else f"{r.score:7.3f}"
        print(f"{rank:>4}  {score}  {cosine}{r.photo_id:<14} {who:<19} {keywords}")
