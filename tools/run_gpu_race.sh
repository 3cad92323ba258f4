#!/usr/bin/env bash
# The GPU race: the arms of configs/compare/suites/gpu.yaml (the CPU suite's pre-registered design),
# its tuning stage then its comparison, 16 runs at a time on one GPU, then the per-iteration costs on the GPU
# and the flatness probe; writes docs/RESULTS_GPU.md and its figures. Resumable: run it
# again to continue. Usage: tools/run_gpu_race.sh [OUT] [JOBS]
set -euo pipefail
OUT=${1:-output/race_gpu}
JOBS=${2:-16}
python tools/compare.py --suite configs/compare/suites/gpu.yaml --out "$OUT" --jobs "$JOBS" \
    --report docs/RESULTS_GPU.md
