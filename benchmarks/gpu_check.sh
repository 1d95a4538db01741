#!/usr/bin/env bash
# The GPU check, on the GPU machine (the device tool), in one command; carry build/gpu_check, made
# here by `python benchmarks/gpu_check.py prepare`. Its python3 holds torch; the record goes to $OUT/gpu.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
python3 benchmarks/gpu_check.py run --results "${OUT:-benchmarks/results}/gpu" "$@"
