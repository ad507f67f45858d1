"""``image-search saved``: keep searches under a name and see what each refresh of the index brought them.

``add NAME`` takes any search ``image-search query`` takes (words, ``--image``,
``--like``, a composition, with filters, mode and k), runs it and saves it with its
results as the baseline; ``list``, ``show NAME [--new] [--json]``, ``rm NAME`` and
``mark NAME PHOTO_ID good|bad|none`` do what they say (docs/saved-searches.md). Imports
no Dagster.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from image_search.query import add_filter_options
from resources.errors import ImageSearchError


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``saved`` and its subcommands to the CLI."""
    parser = sub.add_parser("saved", help="saved searches: what is new for them after each refresh, and marked answers")
    commands = parser.add_subparsers(dest="saved_command", required=True, metavar="SUBCOMMAND")
    add = commands.add_parser("add", help="run a search and save it under a name")
    add.add_argument("name", help="letters, digits, spaces, '-' and '_'")
    _search_options(add)
    add.set_defaults(handler=_add)
    listing = commands.add_parser("list", help="every saved search with its counts of new and unseen photos")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_list)
    show = commands.add_parser("show", help="a saved search's latest top k (or only what is new) and its marks")
    show.add_argument("name")
    show.add_argument("--new", action="store_true", help="only the photos that entered its top k with the latest build")
    show.add_argument("--json", action="store_true", help="print JSON: name, new (photo_id, score, links), ...")
    show.set_defaults(handler=_show)
    remove = commands.add_parser("rm", help="delete a saved search, its marks and its results")
    remove.add_argument("name")
    remove.set_defaults(handler=_remove)
    mark = commands.add_parser("mark", help="mark a photo a good or bad answer of a saved search (none: unmark)")
    mark.add_argument("name")
    mark.add_argument("photo_id")
    mark.add_argument("mark", choices=("good", "bad", "none"))
    mark.set_defaults(handler=_mark)


def _search_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``image-search query`` that define a search (see image_search/query.py)."""
    what = parser.add_mutually_exclusive_group()
    what.add_argument("text", nargs="?", help="words in any language")
    what.add_argument("--image", metavar="PATH", help="an image file (a copy is saved with the search)")
    what.add_argument("--like", metavar="PHOTO_ID", help="an indexed photo to find more like")
    what.add_argument("--expr", metavar="EXPRESSION", help="a composed query (docs/composition.md)")
    term = "[WEIGHT*]WORDS|photo:ID|image:PATH"
    parser.add_argument("--plus", action="append", default=[], metavar=term, help="also like this (repeatable)")
    parser.add_argument("--minus", action="append", default=[], metavar=term, help="but unlike this (repeatable)")
    parser.add_argument("-k", type=int, default=10, help="how many results it watches (1-1000, default 10)")
    add_filter_options(parser)
    parser.add_argument(
        "--show-duplicates",
        dest="hide_duplicates",
        action="store_false",
        help="keep near-duplicates (hidden by default)",
    )


def _read_image(path: str) -> bytes:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ImageSearchError(f"image file {file} not found: give the path of a JPEG, PNG or WebP file")
    return file.read_bytes()


def search_from(args: argparse.Namespace):
    """The saved search the options describe, and the bytes of the images it names."""
    from image_search.query import composition_from, filters_from
    from resources.saved.store import SavedSearch
    from search_app.saved import filters_dict

    filters = filters_dict(filters_from(args))
    terms = composition_from(args)
    images: list[bytes] = []
    if terms is not None:
        parts = []
        for term in terms:
            if term.kind == "image":
                images.append(_read_image(term.value))
                parts.append({"image": len(images) - 1, "weight": term.weight})
            else:
                parts.append(term.as_dict())
        query = {"parts": parts}
    elif args.image:
        images.append(_read_image(args.image))
        query = {"image": 0}
    elif args.like:
        query = {"like": args.like}
    else:
        query = {"text": args.text}
    search = SavedSearch(
        name=args.name,
        query=query,
        mode=args.mode,
        k=args.k,
        filters=filters,
        min_score=args.min_score,
        hide_duplicates=args.hide_duplicates,
    )
    return search, images


def _context():
    from resources.config import Settings
    from resources.saved.store import SavedStore

    settings = Settings.from_env()
    return settings, SavedStore(settings.home)


def _service(settings):
    from search_app.service import SearchService

    return SearchService.from_settings(settings)


def _add(args: argparse.Namespace) -> int:
    from search_app import saved

    settings, store = _context()
    search, images = search_from(args)
    store.check_free(search.name)
    saved.save(_service(settings), store, search, images)
    print(f"saved {search.name!r}: {search.label()}, watching its top {search.k}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from search_app import saved

    _, store = _context()
    rows, problems = saved.overview(store)
    for problem in problems:
        print(f"image-search: {problem}", file=sys.stderr)
    if args.json:
        _print_json({"searches": rows, "problems": problems})
    elif not rows:
        print("no saved searches yet: save one with `image-search saved add NAME WORDS`")
    else:
        print(f"{'name':<24} {'new':>4} {'unseen':>6}  search")
        for row in rows:
            print(f"{row['name']:<24} {row['new']:>4} {row['unseen']:>6}  {row['search']}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from search_app import saved

    _, store = _context()
    shown = saved.show(store, args.name)
    if args.json:
        _print_json({key: shown[key] for key in ("name", "build", "new")} if args.new else shown)
        return 0
    entries = shown["new"] if args.new else shown["top"]
    fresh = {e["photo_id"] for e in shown["new"]}
    print(f"{shown['name']}: {store.get(args.name).label()}; build {shown['build']}, refreshed {shown['refreshed_at']}")
    if not entries:
        print("nothing new since the previous build" if args.new else "no results yet")
    for rank, e in enumerate(entries, start=1):
        flags = ("new " if e["photo_id"] in fresh else "") + shown["marks"].get(e["photo_id"], "")
        print(f"{rank:>4}  {e['score']:8.4f}  {e['photo_id']:<14} {flags}")
    for photo_id in shown["missing_good"]:
        print(f"marked good but no longer in the top {store.get(args.name).k}: {photo_id}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    _, store = _context()
    store.remove(args.name)
    print(f"removed saved search {args.name!r}")
    return 0


def _mark(args: argparse.Namespace) -> int:
    from search_app import saved

    settings, store = _context()
    value = None if args.mark == "none" else args.mark
    saved.mark(_service(settings), store, args.name, args.photo_id, value)
    print(f"{args.name!r}: {args.photo_id} " + (f"marked {value}" if value else "unmarked"))
    return 0


def _print_json(data) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
