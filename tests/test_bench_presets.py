"""``annotator bench`` measures the new presets: FreeU and the DIY-SC adapter run in the engine
timing, and FLOPs are counted (tiny configurations here; full size in BENCHMARKS.md)."""

from annotator.jobs.bench import _bench_engine, _Models, synthetic_image
from annotator.jobs.bench_models import build_components, tiny_configs
from tests.tiny_models import TINY


def test_engine_timing_of_geoaware_and_diy_presets():
    import torch

    sd, dino = build_components(tiny_configs(), "cpu")
    models = _Models(sd, dino, "cpu", torch.float32)
    imgs = [synthetic_image((60, 80), 1)]
    quiet = lambda msg: None  # noqa: E731
    runs = {name: _bench_engine(models, cfg, imgs, 1, 1, "cpu", quiet) for name, cfg in {
        "paper": TINY,
        "geoaware": TINY.replace(preset="geoaware", timestep=50, freeu=True, fusion="concat"),
        "diy": TINY.replace(preset="diy", fusion="dino", adapter="diy-sc"),
        "dino": TINY.replace(fusion="dino"),
    }.items()}
    for r in runs.values():
        assert r["seconds_per_image"] > 0 and r["flops_per_image"] > 0
    # the adapter adds its convolutions to DINOv2 alone; diy is far cheaper than the SD presets
    assert runs["dino"]["flops_per_image"] < runs["diy"]["flops_per_image"]
    assert runs["diy"]["flops_per_image"] < runs["paper"]["flops_per_image"]
    assert runs["geoaware"]["flops_per_image"] >= runs["dino"]["flops_per_image"]
