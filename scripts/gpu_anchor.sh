#!/usr/bin/env bash
# The GPU anchor: PyTorch on CUDA at fp32 and fp16 against PyTorch on the CPU, every component and
# route, timed (compare_latency) and compared (compare_precision). Run on a machine with a CUDA GPU:
#   bash scripts/gpu_anchor.sh [ENGINES] [OUT]      (defaults: engines/tiny benchmarks/results/gpu_anchor)
# INPUTS=DIR takes the demo's sample inputs from DIR instead of writing them (a machine without an
# MP4 encoder: write them with train.demo.write_sample_inputs elsewhere and bring them).
# Each step gets its own time limit (STEP_LIMIT_S seconds, default 300) and a failed step does not
# stop the next, so one bad precision still leaves the other's numbers; ARCHIVE=F re-packs OUT into the
# tarball F after every step, so a run cut short elsewhere still hands back what finished. The exit
# status is the number of failed steps; 3, with one line, on a machine without a GPU.
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"
require_gpu gpu_anchor
engines=${1:-engines/tiny}
out=${2:-benchmarks/results/gpu_anchor}
mkdir -p "$out"
inputs=()
if [ -n "${INPUTS:-}" ]; then inputs=(--inputs "$INPUTS"); fi
limit=${STEP_LIMIT_S:-300}
for precision in fp32 fp16; do
    step "latency_$precision" "$PYTHON" benchmarks/compare_latency.py --engines "$engines" \
        --backends torch,torch-cuda --precision "$precision" --runs 20 --route-runs 3 --json "$out/latency_$precision.json" "${inputs[@]}"
done
for precision in fp32 fp16; do
    step "precision_$precision" "$PYTHON" benchmarks/compare_precision.py --engines "$engines" \
        --backends torch,torch-cuda --precision "$precision" --json "$out/precision_$precision.json" "${inputs[@]}"
done
exit "$failed"
