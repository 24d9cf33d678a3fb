"""``annotator bench`` on the new presets (tiny configurations; full-size FLOPs in
BENCHMARKS.md): the diy preset's adapter runs in the engine timing, a DINOv2-only preset first
in the list still gets the SD ablations and the transfer part, FLOPs are counted."""

from annotator.bench.models import tiny_configs
from annotator.bench.runner import BenchOptions, format_table, run_bench
from tests.test_bench import SMALL_MAPS
from tests.tiny_models import TINY


def test_bench_runs_diy_and_geoaware_presets():
    presets = {
        "diy": TINY.replace(preset="diy", fusion="dino", adapter="diy-sc", softargmax_window=15),
        "geoaware": TINY.replace(preset="geoaware", timestep=50, freeu=True, fusion="concat",
                                 flip=True, flip_criterion="mutual_nn"),
    }
    opts = BenchOptions(quick=True, device="cpu", presets=presets, configs=tiny_configs(),
                        image_hw=(60, 80), transfer_preset="diy", disk_targets=2,
                        memory_targets=2, targets=100, peak_size=128, peak_seconds=0.2,
                        map_channels=SMALL_MAPS, gui=None)
    res = run_bench(opts, lambda msg: None)
    ext = res["extraction"]
    for name in presets:
        assert ext[name]["engine"]["flops_per_image"] > 0
        assert ext[name]["baseline"]["seconds_per_image"] > 0
    assert ext["diy"]["engine"]["flops_per_image"] < ext["geoaware"]["engine"]["flops_per_image"]
    assert ext["diy"]["baseline"]["tiles"] == 0  # DINOv2 only: no SD tile, no prompt
    assert res["ablations"]["unet_full_sdpa_s"] > 0
    assert res["transfer"]["fusions"]["copca"]["memory"]["targets_measured"] == 2
    table = format_table(res)
    assert "diy" in table and "geoaware" in table
