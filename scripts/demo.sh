#!/usr/bin/env bash
# `make demo`: materialize every asset on the embedded default, then serve the Dagster UI,
# the Streamlit page and the HTTP API until Ctrl-C. SERVE=0 stops after the materialization; SAMPLE=1
# ingests a fresh synthetic release with tiny random models (no internet needed).
# The terminal shows each stage's progress and a summary; Dagster's own output (every event,
# traces included) goes to $DAGSTER_HOME/logs/image-search.log and the Dagster UI.
set -euo pipefail
VENV=${VENV:-.venv}
BIN=$VENV/bin
HOST=${HOST:-127.0.0.1}
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD/.dagster}
export IMAGE_SEARCH_HOME=${IMAGE_SEARCH_HOME:-$PWD/data}
# Short OpenBLAS spin, so kNN threads do not steal the cores the next query's encoding needs
# (see image_search/cli.py; it halves text-query latency on a 2-core machine).
export OPENBLAS_THREAD_TIMEOUT=${OPENBLAS_THREAD_TIMEOUT:-4}
log=$DAGSTER_HOME/logs/image-search.log
mkdir -p "$(dirname "$log")"

if [[ "${SAMPLE:-0}" == "1" ]]; then
    sample_dir=$IMAGE_SEARCH_HOME/sample-release
    echo "=================================================================="
    echo " SAMPLE=1: SYNTHETIC DATA AND TINY RANDOM MODELS, NOT UNSPLASH."
    echo " Results are meaningless; this only shows the platform working."
    echo " Near-duplicates: only identical images group (random vectors are"
    echo " all alike), unless IMAGE_SEARCH_DUPLICATE_THRESHOLD says otherwise."
    echo " Release: $sample_dir"
    echo "=================================================================="
    rm -rf "$sample_dir"
    "$BIN/image-search" sample "$sample_dir" --photos "${SAMPLE_PHOTOS:-300}" --models >>"$log" 2>&1
    echo "make demo: wrote a synthetic release of ${SAMPLE_PHOTOS:-300} photos and tiny models"
    export IMAGE_SEARCH_DATASET=$sample_dir
    export IMAGE_SEARCH_IMAGE_MODEL=$sample_dir/models/clip
    export IMAGE_SEARCH_TEXT_MODEL=$sample_dir/models/text
    export IMAGE_SEARCH_DUPLICATE_THRESHOLD=${IMAGE_SEARCH_DUPLICATE_THRESHOLD:-0.99999}
fi

# Per-pool limits live in the instance's database: one encoder at a time (see .dagster/dagster.yaml).
"$BIN/dagster" instance concurrency set clip_model 1

# `dagster asset materialize`, after failing any run a crash left "started" and freeing its
# pool slots; a wait for a slot is reported and gives up after IMAGE_SEARCH_LOCK_TIMEOUT.
materialize() {
    echo "make demo: materializing $1"
    if ! "$BIN/image-search" materialize --select "$@"; then
        if [[ "${SAMPLE:-0}" != "1" ]]; then
            echo "make demo: no internet here? SAMPLE=1 make demo builds the demo from a synthetic release and tiny models instead."
        fi
        exit 1
    fi
}
materialize 'group:ingestion'
materialize 'group:vectors' --partition-range b00...b63
materialize 'group:search'

photos=$("$BIN/python" -c "from resources.config import Settings; from resources.index import open_backend; print(open_backend(Settings.from_env()).count())")
echo "make demo: done, $photos photos searchable. Dagster's full log: $log"
if [[ "${SERVE:-1}" != "1" ]]; then
    echo "make demo: SERVE=0, so no servers. Try: $BIN/image-search query \"a dog on the beach\""
    echo "           or serve the Dagster UI and the search page with: make demo"
    exit 0
fi
echo "Dagster UI:     http://$HOST:3000   (every run, event and check)"
echo "Search page:    http://$HOST:8501   (search by words or by a photo)"
echo "HTTP API:       http://$HOST:8502/docs   (search from other applications)"
trap 'kill 0' EXIT INT TERM
"$BIN/dagster" dev -w workspace.yaml -h "$HOST" -p 3000 &
"$BIN/streamlit" run search_app/app.py --server.address "$HOST" --server.port 8501 --server.headless true &
# Beyond 127.0.0.1 the API refuses to start unless IMAGE_SEARCH_API_KEY is set.
"$BIN/image-search" api --host "$HOST" --port 8502 &
wait
