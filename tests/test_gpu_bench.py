"""benchmarks/gpu_bench.sh end to end on its CPU path (--dry-run: scaled-down models)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_bench_dry_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_bench.sh"), "--dry-run", "--presets", "fast",
         "--dtypes", "bf16,fp16", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "summary.json").read_text())
    # bf16 (fp16 has no CPU path and is dropped in the dry run), then the fp32 engine
    assert [r["run"] for r in rows] == ["gpu-bench-bf16", "gpu-bench-fp32"]
    assert [r["dtype"] for r in rows] == ["bfloat16", "float32"]
    for r in rows:
        assert r["preset"] == "fast" and r["images_per_s"] > 0 and r["x_baseline"] > 0
        assert r["peak_gb"] > 0 and r["first_call_s"] > 0
    bf16 = json.loads((tmp_path / "gpu-bench-bf16.json").read_text())
    assert bf16["machine"]["device"] == "cpu" and not bf16["full_size_models"]
    assert "precision" in bf16  # the bf16 deviation from fp32 is measured in the same run
    assert "paper targets" in (tmp_path / "summary.txt").read_text()


def test_gpu_bench_rejects_unknown_arguments(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_bench.sh"), "--bogus"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown argument --bogus" in proc.stderr
