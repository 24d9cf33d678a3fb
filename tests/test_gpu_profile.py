"""benchmarks/gpu_profile.py on its CPU path (scaled-down models): the probe runs end to end,
and its ``io`` variant computes the same maps as the engine on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_profile_cpu_path(tmp_path):
    out = tmp_path / "prof.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_profile.py"), "--device", "cpu",
         "--dtype", "fp32", "--tiny", "--preset", "fast", "--batches", "1", "--images", "1",
         "--reps", "1", "--top", "5", "--layouts", "engine,io", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    # the probe's variant is the engine's arithmetic, moved: identical maps on the CPU
    assert res["io_max_abs_difference"] == 0.0
    for layout in ("engine", "io"):
        r = res["layouts"][layout]
        assert r["batches"]["1"]["images_per_s"] > 0
        assert set(r["stages"]) == {"sd_tiles_to_host", "sd_maps_stitched", "dino_to_host",
                                    "extract"}
        prof = r["profile"]
        assert prof["wall_s"] > 0 and len(prof["top_host"]) == 5
