#!/usr/bin/env bash
# GPU part of `annotator bench` for the device machine (H100/H200). Runs in < 5 minutes and
# writes JSON + logs under $OUT. Run from the repository root:
#     OUT=/some/dir bash benchmarks/gpu_bench.sh
# The device machine has torch and transformers but not diffusers: the diffusers wheel carried in
# benchmarks/wheels/ (pip download diffusers==0.42.1 --no-deps) is installed into a scratch
# folder with --no-deps --no-index. Its other requirements (huggingface-hub, safetensors, regex,
# requests, filelock, Pillow, numpy) come with transformers' usual environment.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
DEPS="${TMPDIR:-/tmp}/annotator-bench-deps"
if ! python -c "import diffusers" 2>/dev/null; then
    pip install --quiet --no-deps --no-index --target "$DEPS" benchmarks/wheels/diffusers-*.whl \
        >"$OUT/pip.log" 2>&1 || { echo "diffusers wheel install failed"; cat "$OUT/pip.log"; }
fi
export PYTHONPATH="$PWD:$DEPS${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY' | tee "$OUT/env.txt"
import importlib
for m in ("torch", "transformers", "diffusers", "safetensors", "PIL", "psutil", "platformdirs"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as exc:  # noqa: BLE001
        print(m, "MISSING", exc)
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
PY
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >"$OUT/nvidia-smi.csv" 2>&1
# 1) bf16 engine (the product setting on GPU) vs fp32 baseline, both presets, with the bf16
#    deviation check; 32 images per timing in batches of 8.
timeout 200 python -m annotator bench --quick --device cuda --dtype bf16 --images 32 --batch 8 \
    --no-gui --out "$OUT/gpu-bench-bf16.json" 2>&1 | tee "$OUT/gpu-bench-bf16.log"
# 2) fp32 engine (isolates the gain of bf16), paper preset only, no transfer repeats.
timeout 80 python -m annotator bench --quick --device cuda --dtype fp32 --presets paper \
    --images 16 --batch 8 --no-gui --no-ablations --disk-targets 5 --memory-targets 5 \
    --out "$OUT/gpu-bench-fp32.json" 2>&1 | tee "$OUT/gpu-bench-fp32.log"
ls -la "$OUT"
