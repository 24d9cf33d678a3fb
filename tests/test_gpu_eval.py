"""benchmarks/gpu_eval.sh and its driver on the CPU: arguments, runs, per-category CleanDIFT
prompts and the combined table (content descriptor and tiny models on a tiny SPair fixture)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_eval_datasets import make_spair
from tests.tiny_models import TINY

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_eval  # noqa: E402


def test_shell_script_runs_every_preset_and_writes_one_table(tmp_path):
    spair = make_spair(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "SPAIR": str(spair), "OUT": str(out), "DEVICE": "cpu",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_eval.sh"), "--extractor",
                           "content"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads((out / "gpu_eval.json").read_text())
    assert [r["run"] for r in doc["runs"]] == list(gpu_eval.RUNS)
    for r in doc["runs"]:
        assert r["pairs"] == 3 and set(r["per_keypoint"]) == {"0.1", "0.05", "0.01"}
        assert all(0 <= v <= 100 for v in (*r["per_keypoint"].values(),
                                           *r["per_image"].values()))
        assert r["peak_gpu_gib"] is None  # no GPU here
    # the content descriptor's features do not depend on the preset: paper extracts the
    # fixture's 2 distinct images (a = c and b = d pixel for pixel), geoaware adds their
    # mirrors (adaptive pose alignment), the others find everything in the shared feature
    # cache (images/s counts only real extractions)
    got = [(r["images_extracted"], r["images_per_second"] is None) for r in doc["runs"]]
    assert got == [(2, False), (2, False), (0, True), (0, True), (0, True)]
    assert doc["runs"][0]["published"][0] == 64.0
    md = (out / "gpu_eval.md").read_text()
    assert md.count("\n| ") == 1 + len(gpu_eval.RUNS)  # header and one row per run
    assert "70.6" in md and "68.6" in md and (out / "geoaware_cleandift" / "spair.json").is_file()


def test_cleandift_run_uses_one_prompt_per_category(tmp_path, tiny_model_dirs):
    sd_dir, dino_dir = tiny_model_dirs
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({k: getattr(TINY, k) for k in (
        "sd_size", "sd_tile", "sd_tile_offsets", "dino_size", "grid", "pca_dim", "dino_layer")}))
    out = tmp_path / "out"
    rc = gpu_eval.main(["--spair", str(make_spair(tmp_path)), "--out", str(out), "--device",
                        "cpu", "--runs", "geoaware+cleandift", "--sd-model", str(sd_dir),
                        "--dino-model", str(dino_dir), "--sd-unet",
                        str(sd_dir / "unet" / "diffusion_pytorch_model.safetensors"),
                        "--feature-config", str(cfg)])
    assert rc == 0
    (row,) = json.loads((out / "gpu_eval.json").read_text())["runs"]
    assert row["prompts"] == ["a photo of a cat", "a photo of a dog"]
    # reference, its mirror (adaptive pose alignment) and the target of each of the 3 pairs
    assert row["images_extracted"] == 9
    assert row["published"][0] == 70.0


def test_bad_runs_are_refused():
    with pytest.raises(SystemExit):
        gpu_eval.parse_args(["--spair", "x", "--runs", "paper,dinosaur"])
    with pytest.raises(SystemExit):
        gpu_eval.parse_args(["--spair", "x", "--runs", "diy+sam"])
    assert gpu_eval.parse_args(["--spair", "x", "--runs", "fast+cleandift"]).run_list == \
        ["fast+cleandift"]
