"""``image-search bench ingest``: peak memory and time of ingesting a release of Unsplash Lite's size.

Generates a release with ``image-search sample`` and ingests it in child processes three
ways: imports only, the reader from before issue 12 (the baseline), and the project's.
Method and figures: docs/benchmarks.md.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import add_json_flag, print_figures, run_child

_INGEST = """
import json, sys
from dagster import DagsterInstance, materialize
import resources.release.tables
from assets.catalog import photo_catalog, photo_ids_unique
from assets.raw import collections, colors, conversions, keywords, photos, unsplash_release
from resources.dagster_resources import SettingsResource
mode = sys.argv[1]
if mode == "baseline":
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def quoting_off(path, columns, report):
        def skip(row):
            report.skipped += 1
            if len(report.skipped_lines) < 3:
                report.skipped_lines.append((row.number, row.actual_columns))
            return "skip"

        reader = pacsv.open_csv(
            str(path),
            read_options=pacsv.ReadOptions(column_names=columns, skip_rows=1, block_size=16 << 20),
            parse_options=pacsv.ParseOptions(delimiter="\\t", quote_char=False, invalid_row_handler=skip),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns}, check_utf8=False, strings_can_be_null=True, null_values=[""]
            ),
        )
        for batch in reader:
            report.rows += batch.num_rows
            yield batch

    resources.release.tables.read_batches = quoting_off
if mode != "imports":
    result = materialize(
        [unsplash_release, photos, keywords, collections, conversions, colors, photo_catalog, photo_ids_unique],
        resources={"settings": SettingsResource(home=sys.argv[2], dataset=sys.argv[3])},
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success
    skipped = {
        e.materialization.asset_key.to_user_string(): e.materialization.metadata["skipped_rows"].value
        for e in result.get_asset_materialization_events() if "skipped_rows" in e.materialization.metadata
    }
    print(json.dumps({"skipped_records": sum(skipped.values())}))
"""


def _child(args: list[str], what: str) -> dict:
    """Run the ingestion script in a fresh interpreter; its peak RSS in MB, seconds and what it printed."""
    child = run_child([sys.executable, "-c", _INGEST, *args], what=what, cwd=Path(__file__).resolve().parent.parent)
    printed = json.loads(child.stdout.strip().splitlines()[-1]) if child.stdout.strip() else {}
    return {"peak_rss_mb": child.peak_rss_mb, "seconds": child.seconds, **printed}


def run(photos: int, keywords: int, conversions: int, collections: int) -> dict:
    """Generate, ingest three ways and measure; return the figures."""
    from image_search.sample import write_release

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        release = Path(tmp) / "release"
        started = time.perf_counter()
        write_release(
            release, photos=photos, keywords=keywords, conversions=conversions, collections=collections, images=False
        )
        generate_s = time.perf_counter() - started
        input_mb = sum(p.stat().st_size for p in release.glob("*.[tc]sv0*")) / 2**20
        imports = _child(["imports"], "the imports-only run")
        baseline = _child(["baseline", str(Path(tmp) / "baseline"), str(release)], "the baseline ingestion")
        project = _child(["project", str(Path(tmp) / "home"), str(release)], "the ingestion")
        tables_mb = sum(p.stat().st_size for p in (Path(tmp) / "home").rglob("*.parquet")) / 2**20
    return {
        "photos": photos,
        "keywords": keywords,
        "conversions": conversions,
        "collections": collections,
        "input_mb": round(input_mb, 1),
        "parquet_mb": round(tables_mb, 1),
        "generate_s": round(generate_s, 1),
        "imports_peak_rss_mb": imports["peak_rss_mb"],
        "baseline_peak_rss_mb": baseline["peak_rss_mb"],
        "baseline_s": baseline["seconds"],
        "baseline_skipped_records": baseline["skipped_records"],
        "ingest_peak_rss_mb": project["peak_rss_mb"],
        "ingest_s": project["seconds"],
        "ingest_skipped_records": project["skipped_records"],
    }


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``image-search bench ingest``."""
    parser = sub.add_parser("ingest", help="peak memory and time of ingesting a generated release of the real size")
    parser.add_argument("--photos", type=int, default=25_000)
    parser.add_argument("--keywords", type=int, default=2_700_000)
    parser.add_argument("--conversions", type=int, default=4_000_000)
    parser.add_argument("--collections", type=int, default=1_650_000)
    add_json_flag(parser)
    parser.set_defaults(handler=_main)


def _main(args: argparse.Namespace) -> int:
    return print_figures(args, run(args.photos, args.keywords, args.conversions, args.collections), _lines)


def _lines(f: dict) -> list[str]:
    return [
        f"release: {f['photos']:,} photos, {f['keywords']:,} keyword rows, {f['conversions']:,} conversion rows, "
        f"{f['collections']:,} collection rows = {f['input_mb']} MB (generated in {f['generate_s']} s)",
        f"imports only (no data): peak RSS {f['imports_peak_rss_mb']} MB",
        f"baseline, reader before issue 12 (pyarrow, quoting off): peak RSS {f['baseline_peak_rss_mb']} MB "
        f"in {f['baseline_s']} s, {f['baseline_skipped_records']:,} records skipped",
        f"project (CSV rules, line numbers): peak RSS {f['ingest_peak_rss_mb']} MB in {f['ingest_s']} s, "
        f"{f['ingest_skipped_records']:,} records skipped, {f['parquet_mb']} MB of Parquet written",
    ]
