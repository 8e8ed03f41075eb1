#!/usr/bin/env bash
# The GPU check in one go on a machine with a CUDA GPU (see benchmarks/device_check.py): bench_gpu end
# to end, the Service's compare on the GPU, the VAE's per-block decode; at most 8 minutes, then
# BENCHMARKS.md regenerated from benchmarks/results/. Extra arguments go to device_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
timeout 480 python -m benchmarks.device_check "$@"
python -m benchmarks.report
