#!/usr/bin/env bash
# GPU check of OV2VSS (docs/GETTING_STARTED.md, "The GPU check"): R-50 + ViT-B-16 training at crop 480,
# batch 4, with and without SOLVER.AMP.ENABLED, and streaming vs window-by-window evaluation
# of a 40-frame 480x853 video, on generated data with random weights; prints s/iter, peak GPU
# memory and frames/s as a table.
#
#   bash tools/gpu_check.sh                 # on a CUDA machine (a few minutes)
#   bash tools/gpu_check.sh --cpu --tiny    # dry run: tiny config, small frames, CPU
#
# Other options (--iters, --eval-frames, --keep DIR): tools/gpu_check.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" tools/gpu_check.py "$@"
