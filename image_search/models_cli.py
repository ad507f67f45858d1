"""``image-search models``: register candidate model pairs, compare them, promote one, roll back (docs/models.md).

Compares, promotions and rollbacks are recorded in the Dagster instance of ``DAGSTER_HOME``
as materializations of ``model_release``; without ``DAGSTER_HOME`` the command says it
recorded nothing.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``models`` and its subcommands."""
    parser = sub.add_parser("models", help="candidate model pairs: add, list, rm, compare, promote, rollback")
    models = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    add = models.add_parser(
        "add", help="register a candidate pair; refused when a model cannot load or the sizes differ"
    )
    add.add_argument("name", help="1-40 lowercase letters, digits or '-'")
    add.add_argument(
        "--image-model", required=True, help="sentence-transformers CLIP image model: a name or a local path"
    )
    add.add_argument(
        "--text-model", required=True, help="the text model sharing its vector space: a name or a local path"
    )
    add.set_defaults(handler=run_add)
    listing = models.add_parser("list", help="the configured pair and every registered one, and which serves")
    listing.add_argument("--json", action="store_true", help="print the models as one JSON object")
    listing.set_defaults(handler=run_list)
    remove = models.add_parser("rm", help="unregister a pair and drop its shadow index (its vectors stay on disk)")
    remove.add_argument("name")
    remove.set_defaults(handler=run_rm)
    compare = models.add_parser(
        "compare", help="nDCG@10, recall@10 (95%% intervals), speed, latency and size of every built pair"
    )
    compare.add_argument("--max-queries", type=int, default=1000, help="judged queries used at most (default 1000)")
    compare.add_argument("--json", action="store_true", help="print the comparison as one JSON object")
    compare.set_defaults(handler=run_compare)
    promote = models.add_parser("promote", help="publish a pair's shadow build as the search index, in one atomic step")
    promote.add_argument("name")
    promote.add_argument("--force", action="store_true", help="promote even when the judgements say it answers worse")
    promote.set_defaults(handler=run_promote)
    rollback = models.add_parser("rollback", help="publish the previous pair's build again; encodes nothing")
    rollback.set_defaults(handler=run_rollback)


def _settings():
    from resources.config import Settings

    return Settings.from_env()


def ran_by(action: str) -> str:
    """Who and what ran an action, for the release history."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name: a container's numeric user
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}: image-search models {action}"


def _record(action: str, figures: dict[str, Any]) -> None:
    """Record ``figures`` in the instance of DAGSTER_HOME, or say that nothing was recorded."""
    if not os.environ.get("DAGSTER_HOME"):
        print("image-search: DAGSTER_HOME is not set: the release history in Dagster was not updated", file=sys.stderr)
        return
    from dagster import DagsterInstance

    from assets.models import record_release

    with DagsterInstance.get() as instance:
        record_release(instance, action, figures, ran_by(action))


def _partition(name: str, add: bool) -> None:
    """Add or delete ``name``'s ``models`` partition in the instance of DAGSTER_HOME at once (the sensor also does, within 30 s)."""
    if not os.environ.get("DAGSTER_HOME"):
        return
    from dagster import DagsterInstance

    from assets.models import model_partitions

    with DagsterInstance.get() as instance:
        if add:
            instance.add_dynamic_partitions(model_partitions.name, [name])
        elif instance.has_dynamic_partition(model_partitions.name, name):
            instance.delete_dynamic_partition(model_partitions.name, name)


def run_add(args: argparse.Namespace) -> int:
    from resources.models.registry import Registry, check_name
    from resources.models.release import check_pair

    settings = _settings()
    check_name(args.name)
    dim = check_pair(settings, args.image_model, args.text_model)
    pair = Registry(settings).add(args.name, args.image_model, args.text_model, dim)
    _partition(pair.name, add=True)
    print(
        f"registered {pair.name}: {pair.image_model} + {pair.text_model}, {dim}-d; the next refresh builds it in the shadow"
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from resources.models.registry import Registry

    registry = Registry(_settings())
    serving = registry.serving().name
    rows = [{**asdict(pair), "serving": pair.name == serving} for pair in registry.pairs()]
    if args.json:
        print(json.dumps({"serving": serving, "models": rows}))
        return 0
    for row in rows:
        mark = "*" if row["serving"] else " "
        print(f"{mark} {row['name']:<20} {row['dim'] or '?':>5}  {row['image_model']}  {row['text_model']}")
    return 0


def run_rm(args: argparse.Namespace) -> int:
    from resources.models.promotion import remove

    pair = remove(_settings(), args.name)
    _partition(pair.name, add=False)
    print(f"removed {pair.name}; its shadow index is dropped, its vectors stay under embeddings/ until deleted")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from resources.models.compare import compare

    result = compare(_settings(), max_queries=args.max_queries)
    _record("compare", result)
    if args.json:
        print(json.dumps(result))
        return 0
    for line in compare_lines(result):
        print(line)
    return 0


def compare_lines(result: dict[str, Any]) -> list[str]:
    """The compare result as a table: one row per model, then what the judgements can tell."""

    from resources.models.evaluation import MIN_QUERIES

    def shown(interval: dict | None) -> str:
        return "-" if not interval else f"{interval['mean']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"

    lines = [
        f"{result['queries']} judged queries ({result['judgements']} judged photos; sources {result['sources']}); "
        f"serving: {result['serving']}",
        f"{'model':<16} {'dim':>4} {'nDCG@10 [95%]':>24} {'recall@10 [95%]':>24} {'img/s':>7} {'query ms':>9} {'index MB':>9}  vs serving",
    ]
    for name, m in result["models"].items():
        size = "-" if m["index_bytes"] is None else f"{m['index_bytes'] / 1e6:.1f}"
        lines.append(
            f"{name:<16} {m['dim']:>4} {shown(m['ndcg_at_10']):>24} {shown(m['recall_at_10']):>24} "
            f"{m['encode_images_per_s']:>7} {m['query_ms_p50']:>9} {size:>9}  {m['verdict']['ndcg_at_10']['result']}"
        )
        shown_languages = {lang: f for lang, f in (m.get("by_language") or {}).items() if f["queries"] >= MIN_QUERIES}
        for language, figures in shown_languages.items():
            lines.append(
                f"  {language:<14} {figures['queries']:>4} {shown(figures['ndcg_at_10']):>24} {shown(figures['recall_at_10']):>24}"
            )
    lines.append(f"(languages with at least {MIN_QUERIES} queries shown; every one in --json)")
    if result["not_built"]:
        lines.append(f"not built yet: {', '.join(result['not_built'])}")
    return lines


def run_promote(args: argparse.Namespace) -> int:
    from resources.models.promotion import promote

    record = promote(_settings(), args.name, force=args.force)
    _record("promote", record)
    print(
        f"{args.name} answers searches now (build {record['build']}); `image-search models rollback` returns to {record['previous']}"
    )
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from resources.models.promotion import rollback

    record = rollback(_settings())
    _record("rollback", record)
    print(f"{record['serving']} answers searches again (build {record['build']}); nothing was encoded")
    return 0
