import numpy as np
import pytest
import torch

from annotator.features import fusion
from annotator.features.config import ModelSource
from annotator.features.models import ModelLoadError, load_dino, load_sd
from annotator.features.sd_dino import SDDinoExtractor, stitch, unet_features
from tests.tiny_models import TINY, TINY_FAST, build_tiny_models


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def parts(tiny_dirs):
    src = ModelSource(sd_model=str(tiny_dirs[0]), dino_model=str(tiny_dirs[1]))
    return load_sd(src, "cpu", torch.float32), load_dino(src, "cpu", torch.float32)


def _img(h=90, w=140, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("cfg,sizes", [(TINY, (3, 6, 12, 12)), (TINY_FAST, (2, 4, 8, 8))])
def test_grids(parts, cfg, sizes):
    ex = SDDinoExtractor(*parts, cfg)
    (m,) = ex.extract([_img()])
    got = tuple(m.layers[k].shape[-1] for k in ("s5", "s4", "s3", "dino"))
    assert got == sizes
    assert m.layers["dino"].shape[0] == 16 and m.layers["s3"].shape[0] == 16
    assert m.grid == cfg.grid and m.letterbox.canvas == cfg.dino_size
    for fu in ("copca", "concat", "dino", "sd"):
        d = fusion.fuse(fu, m.layers, cfg.grid, cfg.pca_dim)
        assert d.shape[1:] == (cfg.grid, cfg.grid)


def test_stitching_matches_direct_tiles(parts):
    ex = SDDinoExtractor(*parts, TINY)
    img = _img()
    (m,) = ex.extract([img])
    lb_canvas = __import__("annotator.features.letterbox", fromlist=["Letterbox"]).Letterbox.fit(
        img.shape[1], img.shape[0], TINY.sd_size).apply(img)
    tiles = ex.tiles(lb_canvas)
    direct = [ex.sd_tile_features(tiles[i:i + 1]) for i in range(4)]  # one tile per forward
    for k, stride in (("s5", 64), ("s4", 32), ("s3", 16)):
        a = m.layers[k]
        n = 64 // stride  # cells of the region only tile (0, 0) covers
        torch.testing.assert_close(a[:, :n, :n], direct[0][k][0][:, :n, :n], atol=1e-4, rtol=1e-4)
        # bottom-right corner only covered by tile (64, 64)
        torch.testing.assert_close(a[:, -n:, -n:], direct[3][k][0][:, -n:, -n:], atol=1e-4,
                                   rtol=1e-4)
        # centre: average of the four tiles
        c = 64 // stride
        h = direct[0][k].shape[-1]
        avg = sum(direct[i][k][0][:, c - (i // 2) * c:h - (i // 2) * c,
                                  c - (i % 2) * c:h - (i % 2) * c][:, :c, :c]
                  for i in range(4)) / 4
        torch.testing.assert_close(a[:, c:2 * c, c:2 * c], avg, atol=1e-4, rtol=1e-4)


def test_stitch_rejects_bad_offsets():
    with pytest.raises(ValueError):
        stitch(torch.zeros(4, 2, 8, 8), (0, 40), 128, 168)
    with pytest.raises(ValueError):
        stitch(torch.zeros(3, 2, 8, 8), (0, 64), 128, 192)


def test_early_stop_equals_full_pass(parts):
    sd = parts[0]
    gen = torch.Generator().manual_seed(1)
    lat = torch.randn(2, 4, 16, 16, generator=gen)
    emb = torch.randn(2, 77, 16, generator=gen)
    with torch.inference_mode():
        early = unet_features(sd.unet, lat, 100, emb, stop_early=True)
        full = unet_features(sd.unet, lat, 100, emb, stop_early=False)
    for k in ("s5", "s4", "s3"):
        assert torch.equal(early[k], full[k])


def test_deterministic_and_batched(parts):
    ex = SDDinoExtractor(*parts, TINY, batch_size=2)
    imgs = [_img(seed=1), _img(120, 80, seed=2)]
    a = ex.extract(imgs)
    b = SDDinoExtractor(*parts, TINY, batch_size=2).extract(imgs)
    for ma, mb in zip(a, b):
        for k in ma.layers:
            assert torch.equal(ma.layers[k], mb.layers[k])
    single = SDDinoExtractor(*parts, TINY, batch_size=1).extract(imgs[1:])[0]
    for k in single.layers:
        torch.testing.assert_close(single.layers[k], a[1].layers[k], atol=1e-4, rtol=1e-4)


def test_noise_and_prompt(parts):
    ex = SDDinoExtractor(*parts, TINY)
    n = ex.noise()
    assert n.shape == (1, 4, 16, 16)
    assert torch.equal(n, torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(42)))
    assert ex.prompt_embedding() is ex.prompt_embedding()  # encoded once


def test_ablation_extractors_skip_models(parts):
    m = SDDinoExtractor(None, parts[1], TINY.replace(fusion="dino")).extract([_img()])[0]
    assert set(m.layers) == {"dino"}
    m = SDDinoExtractor(parts[0], None, TINY.replace(fusion="sd")).extract([_img()])[0]
    assert set(m.layers) == {"s5", "s4", "s3"} and m.letterbox.canvas == TINY.sd_size
    with pytest.raises(ValueError):
        SDDinoExtractor(None, parts[1], TINY)


def test_copca_pair_shapes_and_normalisation(parts):
    ex = SDDinoExtractor(*parts, TINY)
    ma, mb = ex.extract([_img(seed=3), _img(seed=4)])
    da, db = ex.describe_pair(ma, mb)
    assert da.shape == db.shape == (3 * 16 + 16, 12, 12)
    sd = da[:48].norm(dim=0)
    torch.testing.assert_close(sd, torch.ones_like(sd))
    c = fusion.concat(ma.layers, 12)
    torch.testing.assert_close(c.norm(dim=0), torch.ones(12, 12))


# ---- model loading errors ---------------------------------------------------------------
def test_missing_folder():
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_sd(ModelSource(sd_model="/no/such/folder"), "cpu", torch.float32)
    with pytest.raises(ModelLoadError, match="ANNOTATOR_DINO_MODEL"):
        load_dino(ModelSource(dino_model="./no-such-dino"), "cpu", torch.float32)


def test_wrong_model_type(tiny_dirs):
    sd_dir, dino_dir = tiny_dirs
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion") as e:
        load_sd(ModelSource(sd_model=str(dino_dir)), "cpu", torch.float32)
    assert str(dino_dir) in str(e.value)
    with pytest.raises(ModelLoadError, match="not a DINOv2"):
        load_dino(ModelSource(dino_model=str(sd_dir)), "cpu", torch.float32)


def test_missing_subfolder(tiny_dirs, tmp_path):
    import shutil

    broken = tmp_path / "sd"
    shutil.copytree(tiny_dirs[0], broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError, match="vae"):
        load_sd(ModelSource(sd_model=str(broken)), "cpu", torch.float32)


def test_offline_hub_id_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    src = ModelSource.from_env(cache_dir=str(tmp_path / "hub"))
    assert src.local_files_only
    with pytest.raises(ModelLoadError) as e:
        load_sd(src, "cpu", torch.float32)
    msg = str(e.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in msg and str(tmp_path) in msg
    assert "huggingface-cli download" in msg and "unet/diffusion_pytorch_model" in msg
    with pytest.raises(ModelLoadError, match="facebook/dinov2-base"):
        load_dino(src, "cpu", torch.float32)
