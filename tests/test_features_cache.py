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


def _paper_like_maps(seed=0):
    """Layers at three resolutions around a 12-cell grid (one equal, one coarser, one finer)."""
    from annotator.features.extractor import FeatureMaps
    from annotator.features.letterbox import Letterbox

    g = torch.Generator().manual_seed(seed)
    shapes = {"s3": (16, 12, 12), "s4": (24, 6, 6), "s5": (24, 3, 3), "dino": (20, 12, 12)}
    layers = {k: torch.randn(*s, generator=g) for k, s in shapes.items()}
    return FeatureMaps(layers=layers, letterbox=Letterbox.fit(64, 48, 96), grid=12)


def test_entries_keep_per_cell_norms_of_the_stored_values(tmp_path):
    """The norms kept with an entry are those of the stored (float16) layers resized to the
    grid, checked against an explicit F.interpolate of each layer; a fresh reader gets them
    from disk, and they take part in the checksum (a changed byte there is refused)."""
    import torch.nn.functional as F

    key = "ab" * 32
    stored = FeatureCache(tmp_path / "c", memory_bytes=0).put(key, _paper_like_maps())
    read = FeatureCache(tmp_path / "c", memory_bytes=0).get(key)
    assert read is not None and read.norms is not None
    assert set(read.norms) == set(stored.layers)
    for name, x in stored.layers.items():
        assert x.dtype == torch.float16
        up = F.interpolate(x.float()[None], size=(12, 12), mode="bilinear",
                           align_corners=False)[0]
        want = up.square().sum(0).flatten()
        torch.testing.assert_close(read.norms[name], want, atol=1e-4, rtol=1e-5)
        assert torch.equal(read.norms[name], stored.norms[name])
    assert not any(k.startswith("norm2:") for k in read.layers)
    # flip one byte of the stored norms of "s4" (located by its float32 bytes): refused
    path = next((tmp_path / "c").glob("*/*.safetensors"))
    data = bytearray(path.read_bytes())
    at = data.find(stored.norms["s4"].numpy().tobytes())
    assert at > 0
    data[at] ^= 0x40
    path.write_bytes(bytes(data))
    assert FeatureCache(tmp_path / "c", memory_bytes=0).get(key) is None


def test_entries_of_format_2_are_still_read(tmp_path):
    """An entry written by the previous version (sha256 checksum, no norms) is used as it is;
    the transfer then computes the norms itself."""
    import json

    from safetensors.torch import save_file

    import annotator.features.cache as cache_mod

    key = "cd" * 32
    cache = FeatureCache(tmp_path / "c", memory_bytes=0)
    maps = _paper_like_maps(1)
    tensors = {k: v.half().contiguous() for k, v in maps.layers.items()}
    lb = json.dumps(maps.letterbox.__dict__, sort_keys=True)
    meta = {"format": "2", "checksum": cache_mod._checksum(tensors, "12", lb, "2"),
            "grid": "12", "letterbox": lb}
    path = cache._path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    got = FeatureCache(tmp_path / "c", memory_bytes=0).get(key)
    assert got is not None and got.norms is None
    assert torch.equal(got.layers["s4"], tensors["s4"])
    meta["checksum"] = "0" * 64  # and its checksum is still checked
    save_file(tensors, str(path), metadata=meta)
    assert FeatureCache(tmp_path / "c", memory_bytes=0).get(key) is None


def test_layer_names_cannot_collide_with_stored_norms(tmp_path):
    from annotator.features.extractor import FeatureMaps

    maps = _paper_like_maps()
    bad = FeatureMaps(layers={"norm2:s3": maps.layers["s3"]}, letterbox=maps.letterbox, grid=12)
    with pytest.raises(ValueError, match="norm2:"):
        FeatureCache(tmp_path / "c").put("ef" * 32, bad)


def test_transfer_with_stored_norms_equals_computed_norms(tmp_path):
    """The parts fast path gives bitwise the same result whether the target's norms come from
    the cache entry or are computed by the matcher."""
    from annotator.features import fusion
    from annotator.matching.transfer_parts import PartsDescriptor, PartsReference, transfer_parts

    cache = FeatureCache(tmp_path / "c", memory_bytes=0)
    ref = cache.put("01" * 32, _paper_like_maps(2))
    tgt = cache.put("02" * 32, _paper_like_maps(3))
    r = PartsReference("concat", fusion.fuse("concat", {k: v.float() for k, v in
                                                        ref.layers.items()}, 12),
                       ref.layers, 12, ref.norms)
    pts = np.array([[5.0, 7.0], [30.0, 20.0], [60.0, 40.0]])
    with_norms = transfer_parts(r, PartsDescriptor("concat", tgt.layers, 12, tgt.norms), pts,
                                ref.letterbox, tgt.letterbox)
    without = transfer_parts(r, PartsDescriptor("concat", tgt.layers, 12), pts, ref.letterbox,
                             tgt.letterbox)
    for name in ("points", "similarity", "cycle_error", "confidence"):
        np.testing.assert_array_equal(getattr(with_norms, name), getattr(without, name))


@pytest.mark.parametrize("hwc", ['["s5", "s5"]', '["nope"]', '[3]', '"s5"', '{"a": 1}'])
def test_malformed_channel_last_list_is_refused_even_with_a_matching_checksum(tmp_path, hwc):
    """A forged or damaged "hwc" list (duplicates, unknown or non-string names, not a list) is
    refused although its checksum was recomputed to match: never used as layers."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    import annotator.features.cache as cache_mod

    key = "9a" * 32
    cache = FeatureCache(tmp_path / "c", memory_bytes=0)
    cache.put(key, _paper_like_maps(4))
    path = cache._path(key)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["hwc"] = hwc
    meta["checksum"] = cache_mod._checksum(tensors, meta["grid"], meta["letterbox"], "3", hwc)
    save_file(tensors, str(path), metadata=meta)
    assert FeatureCache(tmp_path / "c", memory_bytes=0).get(key) is None
