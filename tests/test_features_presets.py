"""The presets' settings (DESIGN.md section 9), the CleanDIFT switch and the cache keys."""

import torch

from annotator.engine import Engine
from annotator.features.config import (
    DIY,
    GEOAWARE,
    PAPER,
    ModelSource,
    preset,
    sd_dino_fingerprint,
    with_clean_unet,
)
from annotator.features.models import load_sd
from annotator.features.sd_dino import SDDinoExtractor, unet_features
from tests.tiny_models import TINY


def test_preset_settings():
    g = preset("geoaware")
    assert (g.timestep, g.freeu, g.fusion, g.softargmax_window, g.softargmax_temperature,
            g.flip, g.flip_criterion) == (50, True, "concat", 11, 0.02, True, "mutual_nn")
    assert (g.sd_size, g.sd_tile_offsets, g.dino_size, g.grid) == (960, (0, 448), 840, 60)
    d = preset("diy")
    assert (d.fusion, d.adapter, d.softargmax_window, d.softargmax_temperature, d.flip) == \
        ("dino", "diy-sc", 15, 0.02, False)
    assert not d.uses_sd and (d.dino_size, d.grid, d.dino_layer) == (840, 60, 12)
    assert preset("paper") == PAPER and PAPER.flip_criterion == "cycle" and not PAPER.freeu


def test_paper_cache_keys_are_unchanged():
    """New settings stay out of the key at their defaults: existing caches keep working."""
    assert set(PAPER.feature_fields()) == {
        "sd_size", "sd_tile", "sd_tile_offsets", "timestep", "prompt", "seed", "sd_layers",
        "dino_size", "dino_patch", "dino_layer", "grid", "uses_sd", "uses_dino"}
    assert PAPER.feature_fields()["timestep"] == 100


def test_clean_unet_settings_and_prompt():
    c = with_clean_unet(GEOAWARE)
    assert (c.add_noise, c.timestep, c.freeu, c.prompt) == (False, 261, False,
                                                            "a photo of a {category}")
    assert c.prompt_for("dog") == "a photo of a dog" and c.prompt_for(" ") == "a photo of a object"
    assert with_clean_unet(PAPER.replace(prompt="x")).prompt == "x"
    eng = Engine.from_pretrained(preset="geoaware", sd_unet="/some/unet.safetensors",
                                 category="cat")
    assert eng.config.timestep == 261 and eng.config.prompt == "a photo of a cat"
    assert not eng.config.freeu and eng.match_params.flip_criterion == "mutual_nn"
    assert Engine.from_pretrained(preset="diy").match_params.soft_window == 15


def test_fingerprints_change_with_every_new_setting(tmp_path):
    src = ModelSource(sd_model=str(tmp_path / "sd"), dino_model=str(tmp_path / "dino"))
    unet = tmp_path / "u.safetensors"
    unet.write_bytes(b"1234")
    keys = {
        sd_dino_fingerprint(PAPER, src, "fp32"),
        sd_dino_fingerprint(GEOAWARE, src, "fp32"),
        sd_dino_fingerprint(GEOAWARE.replace(freeu=False), src, "fp32"),
        sd_dino_fingerprint(with_clean_unet(GEOAWARE),
                            ModelSource(**{**src.__dict__, "sd_unet": str(unet)}), "fp32"),
        sd_dino_fingerprint(DIY, src, "fp32"),
        sd_dino_fingerprint(DIY.replace(adapter=""), src, "fp32"),
    }
    assert len(keys) == 6
    # the flip rule is matching only: same features
    assert sd_dino_fingerprint(GEOAWARE.replace(flip_criterion="cycle"), src, "fp32") == \
        sd_dino_fingerprint(GEOAWARE, src, "fp32")


@torch.inference_mode()
def test_clean_latent_has_no_noise(tiny_model_dirs):
    sd = load_sd(ModelSource(sd_model=str(tiny_model_dirs[0])), "cpu", torch.float32)
    cfg = with_clean_unet(TINY.replace(fusion="sd")).replace(prompt="a photo of a cat")
    ex = SDDinoExtractor(sd, None, cfg)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    got = ex.sd_tile_features(x)
    lat = sd.vae.encode(x).latent_dist.mean * sd.vae.config.scaling_factor
    want = unet_features(sd.unet, lat, 261, ex.prompt_embedding())
    for k in ("s5", "s4", "s3"):
        torch.testing.assert_close(got[k], want[k])
    noisy = SDDinoExtractor(sd, None, cfg.replace(add_noise=True)).sd_tile_features(x)
    assert not torch.allclose(noisy["s3"], got["s3"])


def test_for_category_shares_the_models(tiny_model_dirs):
    sd_dir, dino_dir = tiny_model_dirs
    unet = str(sd_dir / "unet" / "diffusion_pytorch_model.safetensors")
    eng = Engine.from_pretrained(sd_model=str(sd_dir), dino_model=str(dino_dir),
                                 preset=TINY.replace(fusion="concat"), device="cpu",
                                 sd_unet=unet)
    assert eng.config.prompt == "a photo of a {category}"
    dog = eng.for_category("dog")
    assert dog.config.prompt == "a photo of a dog" and dog.fingerprint != eng.fingerprint
    assert dog.extractor.sd is eng.extractor.sd and dog.extractor.dino is eng.extractor.dino
    assert eng.for_category("cat").fingerprint not in (dog.fingerprint, eng.fingerprint)
    plain = Engine.from_pretrained(sd_model=str(sd_dir), dino_model=str(dino_dir), preset=TINY,
                                   device="cpu")
    assert plain.for_category("dog") is plain and not plain.loaded
