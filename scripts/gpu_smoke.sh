#!/usr/bin/env bash
# The GPU path's first run, in under 6 minutes on one GPU (docs/gpu.md):
#   bash scripts/gpu_smoke.sh [OUT]      (default: benchmarks/results/gpu_smoke)
# In order: environment; a TensorRT fp32 build of projector_image, sd_unet and llm beside an ONNX
# Runtime CPU build of the same; TrtEngine checks on the LLM (prefill, decode steps and a chunk, each
# on its optimisation profile, and a refusal); CUDA-graph replay against eager on
# sd_unet; one session per ONNX Runtime GPU provider; a strongly typed fp16 build of projector_image
# (benchmarks/gpu_smoke.py has each step). A step whose library is missing says so in one line and the
# next one runs. Each step's log is OUT/STEP.log (STEP_LIMIT_S seconds each, default 150; ARCHIVE=F
# re-packs OUT into the tarball F after every step). The exit status is the number of failed steps;
# 3, with one line, on a machine without a GPU.
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"
require_gpu gpu_smoke
out=${1:-benchmarks/results/gpu_smoke}
mkdir -p "$out"
limit=${STEP_LIMIT_S:-150}
for name in environment build trt_llm cuda_graph ort_providers fp16; do
    step "$name" "$PYTHON" -m benchmarks.gpu_smoke "$name" --out "$out"
done
exit "$failed"
