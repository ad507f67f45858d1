"""``image-search bench ingest``: peak memory and time of ingesting a release of Unsplash Lite's size.

Writes a synthetic release with ``image-search sample``'s defaults (quoted values with tabs
and line breaks, CJK, emoji; no images; 25,000 photos, 2.7 M keyword rows and 4 M
conversion rows by default, like Lite 1.0) into a temporary folder, then materializes the
ingestion assets (release, five tables, catalog) in child processes and reports each
child's peak resident memory (``ru_maxrss``) and wall time, in the same run:

- imports only: the same modules, no data, so the difference is what the data costs;
- baseline: the same ingestion with the reader it had before issue 12 (pyarrow's block
  reader with quoting off), which is faster but splits every record holding a quoted line
  break and skips both halves: its skipped records are printed too;
- project: the ingestion as shipped (CSV rules, line numbers of bad records).

The CPU model and its bf16 flags are printed with the figures.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from image_search.bench import cpu_description

_INGEST = """
import json, sys
from dagster import DagsterInstance, materialize
import assets.raw
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

    assets.raw.read_batches = quoting_off
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


def _child(args: list[str]) -> dict:
    """Run the ingestion script in a fresh interpreter; its peak RSS in MB, seconds and what it printed."""
    started = time.perf_counter()
    # ru_maxrss of RUSAGE_CHILDREN is the largest of all waited-for children, so each
    # measurement runs through its own intermediate interpreter.
    probe = (
        "import json, resource, subprocess, sys;"
        "done = subprocess.run(sys.argv[1:], check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True);"
        "print(json.dumps({'peak_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 'out': done.stdout}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-c", _INGEST, *args],
        check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
    )
    figures = json.loads(done.stdout)
    printed = json.loads(figures["out"].strip().splitlines()[-1]) if figures["out"].strip() else {}
    return {"peak_rss_mb": round(figures["peak_kb"] / 1024), "seconds": round(time.perf_counter() - started, 1), **printed}


def run(photos: int, keywords: int, conversions: int, collections: int) -> dict:
    """Generate, ingest three ways and measure; return the figures."""
    from image_search.sample import write_release

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        release = Path(tmp) / "release"
        started = time.perf_counter()
        write_release(release, photos=photos, keywords=keywords, conversions=conversions, collections=collections, images=False)
        generate_s = time.perf_counter() - started
        input_mb = sum(p.stat().st_size for p in release.glob("*.[tc]sv0*")) / 2**20
        imports = _child(["imports"])
        baseline = _child(["baseline", str(Path(tmp) / "baseline"), str(release)])
        project = _child(["project", str(Path(tmp) / "home"), str(release)])
        tables_mb = sum(p.stat().st_size for p in (Path(tmp) / "home").rglob("*.parquet")) / 2**20
    return {
        "cpu": cpu_description(),
        "photos": photos, "keywords": keywords, "conversions": conversions, "collections": collections,
        "input_mb": round(input_mb, 1), "parquet_mb": round(tables_mb, 1), "generate_s": round(generate_s, 1),
        "imports_peak_rss_mb": imports["peak_rss_mb"],
        "baseline_peak_rss_mb": baseline["peak_rss_mb"], "baseline_s": baseline["seconds"],
        "baseline_skipped_records": baseline["skipped_records"],
        "ingest_peak_rss_mb": project["peak_rss_mb"], "ingest_s": project["seconds"],
        "ingest_skipped_records": project["skipped_records"],
    }


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``image-search bench ingest``."""
    parser = sub.add_parser("ingest", help="peak memory and time of ingesting a generated release of the real size")
    parser.add_argument("--photos", type=int, default=25_000)
    parser.add_argument("--keywords", type=int, default=2_700_000)
    parser.add_argument("--conversions", type=int, default=4_000_000)
    parser.add_argument("--collections", type=int, default=1_650_000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_main)


def _main(args: argparse.Namespace) -> int:
    f = run(args.photos, args.keywords, args.conversions, args.collections)
    if args.json:
        print(json.dumps(f))
    else:
        print(
            f"cpu: {f['cpu']}\n"
            f"release: {f['photos']:,} photos, {f['keywords']:,} keyword rows, {f['conversions']:,} conversion rows, "
            f"{f['collections']:,} collection rows = {f['input_mb']} MB (generated in {f['generate_s']} s)\n"
            f"imports only (no data): peak RSS {f['imports_peak_rss_mb']} MB\n"
            f"baseline, reader before issue 12 (pyarrow, quoting off): peak RSS {f['baseline_peak_rss_mb']} MB "
            f"in {f['baseline_s']} s, {f['baseline_skipped_records']:,} records skipped\n"
            f"project (CSV rules, line numbers): peak RSS {f['ingest_peak_rss_mb']} MB in {f['ingest_s']} s, "
            f"{f['ingest_skipped_records']:,} records skipped, {f['parquet_mb']} MB of Parquet written"
        )
    return 0
