import numpy as np
import pytest
import torch

from annotator.features.cache import FeatureCache
from annotator.features.content import ContentConfig, ContentExtractor


def _imgs(n):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(n)]


class Counting:
    def __init__(self, cfg=None):
        self.inner = ContentExtractor(cfg or ContentConfig(size=64, grid=8))
        self.calls = 0

    def __call__(self, images):
        self.calls += len(images)
        return self.inner.extract(images)


def test_returns_what_was_computed_and_hits(tmp_path):
    cache = FeatureCache(tmp_path)
    comp = Counting()
    fp = comp.inner.fingerprint
    first = cache.get_or_compute(_imgs(2), fp, comp)
    cache.clear_memory()
    second = cache.get_or_compute(_imgs(2), fp, comp)  # from disk
    assert comp.calls == 2
    for a, b in zip(first, second):
        assert torch.equal(a.layers["content"], b.layers["content"])
        assert a.letterbox == b.letterbox and a.grid == b.grid
    direct = comp.inner.extract(_imgs(1))[0].layers["content"]
    torch.testing.assert_close(first[0].layers["content"].float(), direct, atol=2e-3, rtol=2e-3)
    s = cache.stats()
    assert s.misses == 2 and s.disk_hits == 2 and s.disk_entries == 2 and s.disk_bytes > 0


def test_changed_setting_misses(tmp_path):
    cache = FeatureCache(tmp_path)
    a, b = Counting(), Counting(ContentConfig(size=64, grid=8, sigmas=(1.0, 2.0)))
    assert a.inner.fingerprint != b.inner.fingerprint
    cache.get_or_compute(_imgs(1), a.inner.fingerprint, a)
    cache.get_or_compute(_imgs(1), b.inner.fingerprint, b)
    assert (a.calls, b.calls) == (1, 1)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_entry_recomputed(tmp_path, damage):
    cache = FeatureCache(tmp_path)
    comp = Counting()
    fp = comp.inner.fingerprint
    ref = cache.get_or_compute(_imgs(1), fp, comp)[0]
    (path,) = list(tmp_path.glob("*/*.safetensors"))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    cache.clear_memory()
    again = cache.get_or_compute(_imgs(1), fp, comp)[0]
    assert comp.calls == 2 and cache.stats().corrupt == 1
    assert torch.equal(again.layers["content"], ref.layers["content"])
    cache.clear_memory()
    cache.get_or_compute(_imgs(1), fp, comp)
    assert comp.calls == 2  # rewritten entry is valid


def test_eviction_under_caps(tmp_path):
    comp = Counting()
    one = FeatureCache(tmp_path / "probe").put("k", comp.inner.extract(_imgs(1))[0]).nbytes()
    cache = FeatureCache(tmp_path / "c", memory_bytes=2 * one, disk_bytes=2 * one + 2000)
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(4)]
    cache.get_or_compute(imgs, comp.inner.fingerprint, comp)
    s = cache.stats()
    assert s.memory_bytes <= 2 * one
    assert s.disk_entries == 2 and s.disk_bytes <= 2 * one + 2000


def test_fingerprint_follows_the_weights_not_just_the_name(tmp_path, monkeypatch):
    from annotator.features.config import PAPER, ModelSource, sd_dino_fingerprint

    sd, dino = tmp_path / "sd", tmp_path / "dino"
    for folder in (sd / "unet", dino):
        folder.mkdir(parents=True)
    (sd / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"a" * 10)
    (dino / "model.safetensors").write_bytes(b"b" * 10)
    src = ModelSource(sd_model=str(sd), dino_model=str(dino))
    before = sd_dino_fingerprint(PAPER, src, "fp32")
    assert sd_dino_fingerprint(PAPER, src, "fp32") == before
    (dino / "model.safetensors").write_bytes(b"c" * 12)  # other weights, same folder
    assert sd_dino_fingerprint(PAPER, src, "fp32") != before
    # hub ids: the commit the local Hugging Face cache resolves "main" to
    hub = tmp_path / "hub"
    refs = hub / "models--org--dino" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40)
    hub_src = ModelSource(sd_model=str(sd), dino_model="org/dino", cache_dir=str(hub))
    first = sd_dino_fingerprint(PAPER, hub_src, "fp32")
    (refs / "main").write_text("b" * 40)  # upstream moved on and was downloaded
    assert sd_dino_fingerprint(PAPER, hub_src, "fp32") != first


def test_disk_errors_do_not_stop_extraction(tmp_path, monkeypatch):
    import annotator.features.cache as cache_mod

    cache = FeatureCache(tmp_path / "c")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_mod.FeatureCache, "_write", full_disk)
    img = _imgs(1)[0]
    maps = cache.get_or_compute([img], "fp", Counting())
    assert len(maps) == 1
    assert cache.get(cache.key(img, "fp")) is not None  # still served from memory
