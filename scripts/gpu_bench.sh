#!/usr/bin/env bash
# Embedding throughput on one GPU, end to end from JPEG files to unit vectors (issue 3).
#
# Prepares everything it needs on a machine with no internet, then runs
# `image-search bench embed` on CUDA twice: with GPU JPEG decoding (torchvision nvJPEG,
# when torchvision is installed) and with CPU worker processes only, so both figures
# come from the same machine and the same files.
#
#   scripts/gpu_bench.sh                 # defaults below
#   COUNT=20000 WORK=/tmp/gpu-bench scripts/gpu_bench.sh
#   WHEELS=shared/wheels scripts/gpu_bench.sh   # first install missing packages from these wheels, offline
#
# Needs: python3 with a CUDA build of torch; sentence-transformers, transformers, pillow,
# numpy, psutil, wordfreq (installed from $WHEELS when given and missing); torchvision for GPU JPEG
# decoding (optional: without it, only the CPU-worker figure is meaningful).
# Writes: $WORK/models/clip (full-size ViT-B/32, random weights), $WORK/images
# ($COUNT 640x427 JPEGs, kept between runs), $WORK/*.json (the figures).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/image-search-gpu-bench}
COUNT=${COUNT:-20000}
BASELINE=${BASELINE:-500}
BATCH=${BATCH:-512}
WORKERS=${WORKERS:-$(nproc)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$WORK"

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "packages"
if [ -n "${WHEELS:-}" ]; then
    for module_package in sentence_transformers:sentence-transformers transformers:transformers PIL:pillow \
                          numpy:numpy psutil:psutil torchvision:torchvision wordfreq:wordfreq; do
        module=${module_package%%:*} package=${module_package#*:}
        "$PYTHON" -c "import $module" 2>/dev/null \
            || "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" "$package" \
            || echo "could not install $package from $WHEELS"
    done
fi
"$PYTHON" - <<'EOF'
import importlib, sys
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible to torch: this benchmark needs one")
print("GPU:", torch.cuda.get_device_name())
for name in ("torchvision", "transformers", "sentence_transformers", "PIL", "numpy", "psutil"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except ImportError:
        print(f"{name} MISSING" + (" (GPU JPEG decoding off)" if name == "torchvision" else ""))
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

step "model: full-size ViT-B/32 with random weights"
if [ ! -f "$WORK/models/clip/modules.json" ]; then
    "$PYTHON" -c "from pathlib import Path; from image_search.tiny_models import write_tiny_models; write_tiny_models(Path('$WORK/models'), full_size=True)"
fi

run_bench() {  # $1: label, rest: environment assignments
    local label=$1; shift
    step "bench embed, $label"
    env "$@" "$PYTHON" -m benchmarks.embed --images "$WORK/images" --make "$COUNT" \
        --model "$WORK/models/clip" --device cuda --batch-size "$BATCH" --workers "$WORKERS" \
        --baseline-limit "$BASELINE" --json | tee "$WORK/$label.json"
}

run_bench gpu-decode IMAGE_SEARCH_GPU_DECODE=1
run_bench cpu-workers IMAGE_SEARCH_GPU_DECODE=0

step "summary"
"$PYTHON" - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
for label in ("gpu-decode", "cpu-workers"):
    path = Path(sys.argv[1]) / f"{label}.json"
    f = json.loads(path.read_text().strip().splitlines()[-1])
    print(f"{label:12s} {f['images']} images on {f.get('gpu', f['device'])}: project {f['project_img_per_s']} img/s "
          f"(GPU JPEG decode {f['gpu_jpeg_decode']}, {f['precision']}, batch {f['batch_size']}, "
          f"{f['decode_workers']} workers) vs original loop {f['baseline_img_per_s']} img/s = {f['speedup']}x; "
          f"cosine min {f['cosine_min']} mean {f['cosine_mean']}; peak RSS {f['peak_rss_mb']} MB, GPU {f.get('gpu_peak_mb')} MB")
EOF
