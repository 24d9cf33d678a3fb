"""The parts fast path (annotator.matching.transfer_parts) equals transfer() on materialised
fused descriptors, and Engine.iter_transfer gives the same results with and without it."""

import hashlib

import numpy as np
import pytest
import torch

from annotator.engine import Engine
from annotator.features import fusion
from annotator.features.config import preset
from annotator.features.extractor import FeatureMaps
from annotator.features.letterbox import Letterbox
from annotator.matching.transfer import MatchParams, TransferResult, _check_desc, transfer
from annotator.matching.transfer_parts import (
    PartsDescriptor,
    PartsReference,
    parts_fusion,
    transfer_parts,
)

SMALL = {"s3": 12, "s4": 20, "s5": 24, "dino": 16}
PAPER_CH = {"s3": 640, "s4": 1280, "s5": 1280, "dino": 768}
PAPER_SIZES = {"s3": 60, "s4": 30, "s5": 15, "dino": 60}


def _layers(seed, sizes, channels, smooth=True):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, n in sizes.items():
        x = torch.randn(channels[k], n, n, generator=g)
        if smooth:  # neighbouring cells correlated, like real features
            x = x + torch.randn(channels[k], 1, 1, generator=g)
        out[k] = x.half()  # the cache's storage dtype
    return out


def _assert_same(a: TransferResult, b: TransferResult, atol=1e-5):
    assert a.flipped == b.flipped
    np.testing.assert_array_equal(a.found, b.found)
    np.testing.assert_array_equal(a.cycle_error, b.cycle_error)
    np.testing.assert_allclose(a.points, b.points, atol=1e-3, equal_nan=True)  # px
    np.testing.assert_allclose(a.similarity, b.similarity, atol=atol)
    np.testing.assert_allclose(a.confidence, b.confidence, atol=atol)
    np.testing.assert_array_equal(a.needs_review, b.needs_review)


@pytest.mark.parametrize("fu", ["concat", "sd", "dino"])
@pytest.mark.parametrize("sizes,grid", [
    (PAPER_SIZES, 60),
    ({"s3": 32, "s4": 16, "s5": 8, "dino": 32}, 32),  # fast preset
    ({"s3": 24, "s4": 7, "s5": 5, "dino": 20}, 24),  # odd ratios, DINO resized too
])
def test_parts_descriptor_equals_fused(fu, sizes, grid):
    layers = _layers(1, sizes, SMALL)
    d = _check_desc(fusion.fuse(fu, layers, grid), "d").flatten(1)  # (C, N)
    p = PartsDescriptor(fu, layers, grid)
    assert p.channels == d.shape[0]
    q = _check_desc(fusion.fuse(fu, _layers(2, sizes, SMALL), grid), "q").flatten(1)[:, ::37].T
    torch.testing.assert_close(p.similarity(q), q @ d, atol=2e-6, rtol=0)
    idx = torch.tensor([0, 5, grid * grid - 1, grid * 3 + 2, 17])
    torch.testing.assert_close(p.vectors(idx), d[:, idx].T, atol=2e-6, rtol=0)


def test_zero_cells_follow_the_eps_rule():
    layers = {k: v.float() for k, v in _layers(3, PAPER_SIZES, SMALL).items()}
    for k in ("s3", "s4", "s5"):
        layers[k][:, : PAPER_SIZES[k] // 3] = 0  # SD part exactly zero on the top rows
    layers["dino"][:, :, :7] = 0
    d = _check_desc(fusion.fuse("concat", layers, 60), "d").flatten(1)
    p = PartsDescriptor("concat", layers, 60)
    q = d[:, ::53].T
    torch.testing.assert_close(p.similarity(q), q @ d, atol=2e-6, rtol=0)
    idx = torch.tensor([0, 61, 3599, 1800])
    torch.testing.assert_close(p.vectors(idx), d[:, idx].T, atol=2e-6, rtol=0)


def _case(channels, seed, k=30, fu="concat", target="random"):
    rng = np.random.default_rng(seed)
    ref_l, tgt_l = _layers(seed, PAPER_SIZES, channels), _layers(seed + 100, PAPER_SIZES, channels)
    flip_l = _layers(seed + 200, PAPER_SIZES, channels)  # any maps serve
    ref_lb, tgt_lb = Letterbox.fit(640, 480, 840), Letterbox.fit(480, 640, 840)  # padding
    if target == "mirror":  # the flipped reference matches perfectly: the flip branch wins
        tgt_l, tgt_lb = flip_l, ref_lb
    elif target == "same":
        tgt_l, tgt_lb = ref_l, ref_lb
    pts = rng.random((k, 2)) * [639, 479]
    valid = rng.random(k) > 0.1
    perm = np.arange(k)
    perm[[0, 1, 2, 3]] = [1, 0, 3, 2]
    return fu, ref_l, tgt_l, flip_l, ref_lb, tgt_lb, pts, valid, perm


def _both(case, params, flip):
    fu, ref_l, tgt_l, flip_l, ref_lb, tgt_lb, pts, valid, perm = case
    rd, td, fd = (fusion.fuse(fu, m, 60) for m in (ref_l, tgt_l, flip_l))
    slow = transfer(rd, td, pts, ref_lb, tgt_lb, params, valid, fd if flip else None, perm)
    fr = PartsReference(fu, fd, flip_l, 60) if flip else None
    fast = transfer_parts(PartsReference(fu, rd, ref_l, 60), PartsDescriptor(fu, tgt_l, 60), pts,
                          ref_lb, tgt_lb, params, valid, fr, perm)
    return slow, fast


@pytest.mark.parametrize("params", [MatchParams(soft_window=0), MatchParams()])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("fu", ["concat", "sd", "dino"])
@pytest.mark.parametrize("target", ["random", "mirror", "same"])
def test_transfer_parts_equals_transfer_small_channels(params, flip, fu, target):
    for seed in range(3):
        slow, fast = _both(_case(SMALL, seed, fu=fu, target=target), params, flip)
        _assert_same(slow, fast)
        if params.soft_window == 0:  # hard argmax: cell centres, exactly equal
            np.testing.assert_array_equal(slow.points, fast.points)
        if target == "mirror" and flip:
            assert fast.flipped
        if target == "same":
            assert not fast.flipped and (fast.cycle_error[fast.found] == 0).all()


@pytest.mark.parametrize("flip", [False, True])
def test_transfer_parts_equals_transfer_paper_channels(flip):
    slow, fast = _both(_case(PAPER_CH, 7), MatchParams(soft_window=0), flip)
    _assert_same(slow, fast)
    np.testing.assert_array_equal(slow.points, fast.points)
    slow, fast = _both(_case(PAPER_CH, 8), MatchParams(), flip)
    _assert_same(slow, fast)


def test_transfer_parts_checks_shapes():
    fu, ref_l, tgt_l, _, ref_lb, tgt_lb, pts, valid, _ = _case(SMALL, 0)
    ref = PartsReference(fu, fusion.fuse(fu, ref_l, 60), ref_l, 60)
    small = {k: v[:, : v.shape[1] // 2, : v.shape[2] // 2] for k, v in tgt_l.items()}
    with pytest.raises(ValueError):
        transfer_parts(ref, PartsDescriptor(fu, small, 30), pts, ref_lb, tgt_lb)
    with pytest.raises(ValueError):
        PartsDescriptor("copca", tgt_l, 60)
    with pytest.raises(ValueError):
        PartsDescriptor("concat", {"s3": tgt_l["s3"]}, 60)
    r = transfer_parts(ref, PartsDescriptor(fu, tgt_l, 60), np.zeros((0, 2)), ref_lb, tgt_lb)
    assert len(r) == 0


# ---- engine ---------------------------------------------------------------------------------
class RandomMaps:
    """Extractor stand-in: seeded random paper-shaped maps per image; describe = fusion.fuse."""

    name = "random-maps"

    def __init__(self, fu="concat", parts=True):
        self.config = preset("paper").replace(fusion=fu)
        self.parts_transfer = parts
        self.described = 0

    @property
    def fingerprint(self):
        return "random-maps"

    def extract(self, images):
        out = []
        for img in images:
            seed = int.from_bytes(hashlib.sha256(np.ascontiguousarray(img).tobytes()).digest()[:4],
                                  "little")
            lb = Letterbox.fit(img.shape[1], img.shape[0], self.config.canvas_size)
            out.append(FeatureMaps(_layers(seed, PAPER_SIZES, SMALL), lb, self.config.grid))
        return out

    def describe(self, maps):
        self.described += 1
        return fusion.fuse(self.config.fusion, maps.layers, maps.grid)

    def describe_pair(self, a, b):
        return self.describe(a), self.describe(b)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("fu", ["concat", "dino"])
def test_engine_iter_transfer_same_with_and_without_parts(fu):
    ref_a, ref_b, *targets = _images(6)
    rng = np.random.default_rng(1)
    k = 12
    refs = [(ref_a, rng.random((k, 2)) * [63, 47], None),
            (ref_b, rng.random((k, 2)) * [63, 55], rng.random(k) > 0.2)]
    pairs = [(0, 1), (2, 3)]
    out = {}
    for fast in (False, True):
        ext = RandomMaps(fu)
        eng = Engine(config=ext.config, extractor=ext)  # type: ignore[arg-type]
        out[fast] = list(eng.iter_transfer(refs, targets, pairs, fast=fast))
        # fast: only the references (and their mirrors) are described
        assert ext.described == (4 if fast else 4 + len(targets))
    for a, b in zip(out[False], out[True]):
        _assert_same(a, b)
        np.testing.assert_array_equal(a.reference, b.reference)


def test_parts_fusion_gating():
    from annotator.features.content import ContentExtractor
    from annotator.features.sd_dino import SDDinoExtractor

    assert parts_fusion(RandomMaps("concat")) == "concat"
    assert parts_fusion(RandomMaps("concat", parts=False)) is None
    assert parts_fusion(RandomMaps("copca")) is None
    assert parts_fusion(ContentExtractor()) is None
    sd = object.__new__(SDDinoExtractor)
    for fu, want in (("concat", "concat"), ("sd", "sd"), ("dino", "dino"), ("copca", None)):
        sd.config = preset("paper").replace(fusion=fu)
        assert parts_fusion(sd) == want
