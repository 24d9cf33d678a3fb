#!/usr/bin/env bash
# One command for the presets ablation on SPair-71k (GPU machine with the dataset and weights):
#     SPAIR=/data/SPair-71k OUT=/some/dir bash benchmarks/gpu_eval.sh [gpu_eval.py options]
# Runs the test split for paper, geoaware, geoaware+cleandift, diy and fast and writes
# $OUT/gpu_eval.md (+ .json, + one full report per run): per-keypoint and per-image
# PCK@0.1/0.05/0.01, images/s of feature extraction, peak GPU memory, published figures beside.
# Weights: SD 1.5 and DINOv2 from the Hugging Face cache or SD_MODEL / DINO_MODEL folders;
# CleanDIFT from SD_UNET (default CompVis/cleandift/cleandift_sd15_unet.safetensors on the hub);
# DIY-SC from DIY_CHECKPOINT (default: downloaded once, sha256-checked). Precision DTYPE
# (default fp16 on CUDA), DEVICE (default cuda), RUNS to pick runs, LIMIT for a quick look.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SPAIR:?set SPAIR to the SPair-71k folder (JPEGImages/, ImageAnnotation/, PairAnnotation/)}"
OUT="${OUT:-$PWD/gpu-eval}"
DEVICE="${DEVICE:-cuda}"
DTYPE="${DTYPE:-$([ "$DEVICE" = cpu ] && echo fp32 || echo fp16)}"
mkdir -p "$OUT"
DEPS="${TMPDIR:-/tmp}/annotator-bench-deps"
if ! python -c "import diffusers" 2>/dev/null && ls benchmarks/wheels/diffusers-*.whl >/dev/null 2>&1; then
    pip install --quiet --no-deps --no-index --target "$DEPS" benchmarks/wheels/diffusers-*.whl \
        >"$OUT/pip.log" 2>&1 || { echo "diffusers wheel install failed"; cat "$OUT/pip.log"; }
fi
export PYTHONPATH="$PWD:$DEPS${PYTHONPATH:+:$PYTHONPATH}"
args=(--spair "$SPAIR" --out "$OUT" --device "$DEVICE" --dtype "$DTYPE"
      --cache-dir "${CACHE_DIR:-$OUT/feature-cache}")
[ -n "${RUNS:-}" ] && args+=(--runs "$RUNS")
[ -n "${LIMIT:-}" ] && args+=(--limit "$LIMIT")
[ -n "${SD_MODEL:-}" ] && args+=(--sd-model "$SD_MODEL")
[ -n "${DINO_MODEL:-}" ] && args+=(--dino-model "$DINO_MODEL")
[ -n "${SD_UNET:-}" ] && args+=(--sd-unet "$SD_UNET")
[ -n "${DIY_CHECKPOINT:-}" ] && args+=(--diy-checkpoint "$DIY_CHECKPOINT")
{ nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true; } >"$OUT/gpu.txt"
python benchmarks/gpu_eval.py "${args[@]}" "$@" 2>&1 | tee "$OUT/gpu_eval.log"
