#!/usr/bin/env bash
# GPU part of `annotator bench`, one command on a fresh GPU machine (H100/H200) that has torch
# with CUDA. Run from anywhere:
#
#     bash benchmarks/gpu_bench.sh [--presets fast,paper] [--dtypes bf16,fp16] [--images 32]
#                                  [--batch 8] [--compile reduce-overhead|default|max-autotune|off]
#                                  [--out DIR] [--dry-run]
#
# For every dtype: `annotator bench --quick` on CUDA for the given presets (the engine in that
# dtype, batched, against the fp32 reference-style baseline measured in the same run, with
# torch.cuda.max_memory_allocated per engine, and the dtype's deviation from fp32); then the
# first dtype again with torch.compile of the engine's hook-free modules (--compile; the default
# reduce-overhead also captures CUDA graphs), and the fp32 engine at the first preset, to isolate
# what the lower precision gives. A summary (summary.json, summary.txt) compares each engine run
# with the baseline of the same run and with the targets (paper >= 40 images/s, <= 8 GB, >= 10x
# the baseline).
#
# Dependencies: if diffusers or transformers cannot be imported, they are installed into a
# scratch folder from a local wheel folder ($WHEELS, default benchmarks/wheels, e.g. filled by
# `pip download diffusers transformers --no-deps -d benchmarks/wheels`) with --no-index, or
# else from the package registry.
#
# --dry-run: the same steps on the CPU with scaled-down models, one image, few targets and no
# compile (checks the script end to end without a GPU; tests/test_gpu_bench.py runs it).
set -uo pipefail
cd "$(dirname "$0")/.."
PRESETS="fast,paper"
DTYPES="bf16,fp16"
IMAGES=32
BATCH=8
COMPILE="reduce-overhead"
OUT="${OUT:-$PWD/out/gpu-bench}"
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --presets) PRESETS="$2"; shift 2 ;;
        --dtypes) DTYPES="$2"; shift 2 ;;
        --images) IMAGES="$2"; shift 2 ;;
        --batch) BATCH="$2"; shift 2 ;;
        --compile) COMPILE="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "gpu_bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT"
PY="${PYTHON:-python}"
DEPS="${TMPDIR:-/tmp}/annotator-bench-deps"
WHEELS="${WHEELS:-$PWD/benchmarks/wheels}"
for pkg in diffusers transformers; do
    if ! PYTHONPATH="$DEPS${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "import $pkg" 2>/dev/null; then
        echo "installing $pkg" | tee -a "$OUT/pip.log"
        if [ -d "$WHEELS" ] && ls "$WHEELS"/"$pkg"-*.whl >/dev/null 2>&1; then
            "$PY" -m pip install --quiet --no-deps --no-index --find-links "$WHEELS" \
                --target "$DEPS" "$pkg" >>"$OUT/pip.log" 2>&1 \
                || echo "$pkg: local wheel install failed (see $OUT/pip.log)" >&2
        else
            "$PY" -m pip install --quiet --target "$DEPS" "$pkg" >>"$OUT/pip.log" 2>&1 \
                || echo "$pkg: not importable and not installable (see $OUT/pip.log)" >&2
        fi
    fi
done
export PYTHONPATH="$PWD:$DEPS${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY" = 1 ]; then
    DEVICE=cpu; IMAGES=1; BATCH=1; COMPILE=off
    # fp16 has no CPU path: the dry run keeps the other dtypes (bf16 at least)
    DTYPES=$(echo "$DTYPES" | tr ',' '\n' | grep -v '^fp16$' | paste -sd, -)
    [ -n "$DTYPES" ] || DTYPES=bf16
    EXTRA=(--tiny-models --no-ablations --disk-targets 3 --memory-targets 3)
    LIMIT=600; LIMIT_COMPILE=600
else
    DEVICE=cuda
    EXTRA=()
    LIMIT="${LIMIT:-200}"; LIMIT_COMPILE="${LIMIT_COMPILE:-300}"  # per run, seconds
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv \
        >"$OUT/nvidia-smi.csv" 2>&1
fi
"$PY" - "$DEVICE" <<'PY' | tee "$OUT/env.txt"
import importlib, sys
for m in ("torch", "transformers", "diffusers", "safetensors", "PIL", "psutil", "platformdirs"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as exc:  # noqa: BLE001
        print(m, "MISSING", exc)
import torch
ok = torch.cuda.is_available()
print("cuda", ok, torch.cuda.get_device_name() if ok else "")
if sys.argv[1] == "cuda" and not ok:
    sys.exit("gpu_bench.sh: CUDA is not available (use --dry-run for the CPU path)")
PY
[ "${PIPESTATUS[0]}" = 0 ] || exit 1

bench() {  # limit, name, then annotator bench arguments
    local limit="$1" name="$2"; shift 2
    echo "== $name: annotator bench $*" | tee "$OUT/$name.log"
    timeout "$limit" "$PY" -m annotator bench --quick --device "$DEVICE" --no-gui \
        --images "$IMAGES" --batch "$BATCH" --out "$OUT/$name.json" "$@" 2>&1 \
        | tee -a "$OUT/$name.log"
}
IFS=',' read -r -a DT <<<"$DTYPES"
IFS=',' read -r -a PR <<<"$PRESETS"
RUNS=()
SMALL=(--no-ablations --disk-targets 5 --memory-targets 5)
for i in "${!DT[@]}"; do  # the first dtype with ablations and the full transfer part
    if [ "$i" = 0 ]; then MORE=(); else MORE=("${SMALL[@]}"); fi
    bench "$LIMIT" "gpu-bench-${DT[$i]}" --dtype "${DT[$i]}" --presets "$PRESETS" \
        "${MORE[@]}" "${EXTRA[@]}"
    RUNS+=("gpu-bench-${DT[$i]}")
done
if [ "$COMPILE" != off ]; then
    bench "$LIMIT_COMPILE" "gpu-bench-${DT[0]}-compile" --dtype "${DT[0]}" \
        --presets "$PRESETS" --compile "$COMPILE" "${SMALL[@]}" "${EXTRA[@]}"
    RUNS+=("gpu-bench-${DT[0]}-compile")
fi
bench "$LIMIT" "gpu-bench-fp32" --dtype fp32 --presets "${PR[0]}" "${SMALL[@]}" "${EXTRA[@]}"
RUNS+=("gpu-bench-fp32")

"$PY" - "$OUT" "${RUNS[@]}" <<'PY' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out, runs = Path(sys.argv[1]), sys.argv[2:]
rows = []
for run in runs:
    p = out / f"{run}.json"
    if not p.is_file():
        rows.append({"run": run, "error": "no result (see the log)"})
        continue
    r = json.loads(p.read_text())
    for preset, e in r["extraction"].items():
        eng, base = e["engine"], e["baseline"]
        rows.append({
            "run": run, "preset": preset, "dtype": eng["dtype"], "compile": r.get("compile"),
            "batch": eng["batch_size"], "images_per_s": eng["images_per_second"],
            "first_call_s": eng.get("first_call_seconds"),
            "baseline_images_per_s": base["images_per_second"], "x_baseline": e["speedup"],
            "peak_gb": eng["memory"]["peak_bytes"] / 1e9,
            "device": r["machine"].get("device_name"),
            "paper_targets_met": None if preset != "paper" else bool(
                eng["images_per_second"] >= 40 and eng["memory"]["peak_bytes"] <= 8e9
                and e["speedup"] >= 10)})
(out / "summary.json").write_text(json.dumps(rows, indent=1))
print(f"{'run':<26}{'preset':<8}{'dtype':<10}{'compile':<17}{'img/s':>8}{'x base':>8}"
      f"{'peak GB':>9}  paper targets")
for w in rows:
    if "error" in w:
        print(f"{w['run']:<26}{w['error']}")
        continue
    print(f"{w['run']:<26}{w['preset']:<8}{w['dtype']:<10}{str(w['compile']):<17}"
          f"{w['images_per_s']:>8.2f}{w['x_baseline']:>8.1f}{w['peak_gb']:>9.2f}  "
          f"{ {None: '-', True: 'met', False: 'not met'}[w['paper_targets_met']] }")
PY
ls -la "$OUT"
