"""The batched one-to-many path (annotator.matching.transfer_batch) gives what per-target
transfer_parts gives, and the ordered prefetch keeps order, errors and stops cleanly."""

import threading
import time

import numpy as np
import pytest
import torch

from annotator.engine import Engine
from annotator.features import fusion
from annotator.features.letterbox import Letterbox
from annotator.matching.transfer import MatchParams, TransferResult
from annotator.matching.transfer_batch import Prefetch, transfer_parts_batch
from annotator.matching.transfer_parts import (
    PartsDescriptor,
    PartsReference,
    _Layer,
    rows_similarity,
    transfer_parts,
)
from tests.test_matching_parts import PAPER_CH, PAPER_SIZES, SMALL, RandomMaps, _images, _layers


def _exact(a: TransferResult, b: TransferResult) -> None:
    """Equal results: forward similarities are bitwise the per-target ones; the back matching
    only changes rounding, which cannot move a cycle argmax on random data."""
    assert a.flipped == b.flipped
    for name in ("points", "similarity", "found", "needs_review", "cycle_error", "confidence",
                 "reference"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("sizes,grid", [(PAPER_SIZES, 60), ({"s3": 24, "s4": 7, "s5": 5,
                                                               "dino": 20}, 24)])
def test_layer_vectors_from_taps_equal_the_resized_layer(sizes, grid, dtype):
    """``_Layer.at`` gathers at most four taps per cell; the reference is the layer resized by
    F.interpolate (what fusion.resize does) and indexed at every cell, borders included."""
    layers = {k: v.to(dtype) for k, v in _layers(3, sizes, SMALL).items()}
    idx = torch.arange(grid * grid)
    for x in layers.values():
        lay = _Layer(x, grid)
        dense = torch.nn.functional.interpolate(x.float()[None], size=(grid, grid),
                                                mode="bilinear", align_corners=False)[0]
        want = dense.flatten(1)[:, idx].T
        got = lay.at(idx)
        assert got.dtype == torch.float32 and got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("h,w", [(1, 1), (7, 5), (60, 60)])
def test_rows_similarity_is_the_matmul_of_the_rows(h, w, dtype):
    g = torch.Generator().manual_seed(h * 100 + w)
    q = torch.randn(7, 33, generator=g)
    layer = torch.randn(33, h, w, generator=g).to(dtype)
    rows = layer.permute(1, 2, 0).reshape(h * w, 33)
    got = rows_similarity(q, rows, h, w)
    assert got.dtype == torch.float32 and got.shape == (7, h * w)
    torch.testing.assert_close(got, q @ layer.float().reshape(33, -1), atol=2e-5, rtol=1e-5)
    assert rows_similarity(q[:0], rows, h, w).shape == (0, h * w)  # no queries: empty
    with pytest.raises(ValueError, match="do not match"):
        rows_similarity(q[:, :32], rows, h, w)
    with pytest.raises(ValueError, match="do not match"):
        rows_similarity(q, rows, h + 1, w)


def _batch_case(channels, n, fu="concat"):
    ref_l = _layers(1, PAPER_SIZES, channels)
    flip_l = _layers(2, PAPER_SIZES, channels)
    tgts = [_layers(10 + i, PAPER_SIZES, channels) for i in range(n)]
    tgts[1] = ref_l  # a target equal to the reference (cycle 0 everywhere)
    tgts[2] = flip_l  # a mirrored target: the flip branch wins
    ref_lb = Letterbox.fit(640, 480, 840)
    lbs = [Letterbox.fit(480 + 16 * i, 640, 840) for i in range(n)]
    lbs[1] = lbs[2] = ref_lb
    ref = PartsReference(fu, fusion.fuse(fu, ref_l, 60), ref_l, 60)
    fref = PartsReference(fu, fusion.fuse(fu, flip_l, 60), flip_l, 60)
    descs = [PartsDescriptor(fu, t, 60) for t in tgts]
    return ref, fref, descs, ref_lb, lbs


@pytest.mark.parametrize("params", [MatchParams(soft_window=0), MatchParams()])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("fu", ["concat", "sd", "dino"])
def test_batch_equals_per_target(params, flip, fu):
    ref, fref, descs, ref_lb, lbs = _batch_case(SMALL, 5, fu)
    rng = np.random.default_rng(0)
    k = 25
    pts = rng.random((k, 2)) * [639, 479]
    pts[3] = np.nan  # unlabelled
    valid = rng.random(k) > 0.1
    perm = np.arange(k)
    perm[[0, 1, 4, 5]] = [1, 0, 5, 4]
    f = fref if flip else None
    batch = transfer_parts_batch(ref, descs, pts, ref_lb, lbs, params, valid, f, perm)
    single = [transfer_parts(ref, d, pts, ref_lb, lb, params, valid, f, perm)
              for d, lb in zip(descs, lbs)]
    assert len(batch) == len(descs)
    for a, b in zip(single, batch):
        _exact(a, b)
    assert (batch[1].cycle_error[batch[1].found] == 0).all() and not batch[1].flipped
    if flip:
        assert batch[2].flipped


def test_batch_equals_per_target_paper_channels():
    ref, fref, descs, ref_lb, lbs = _batch_case(PAPER_CH, 4)
    pts = np.random.default_rng(2).random((30, 2)) * [639, 479]
    batch = transfer_parts_batch(ref, descs, pts, ref_lb, lbs, MatchParams(), None, fref)
    for d, lb, b in zip(descs, lbs, batch):
        _exact(transfer_parts(ref, d, pts, ref_lb, lb, MatchParams(), None, fref), b)


def test_batch_edges():
    ref, _, descs, ref_lb, lbs = _batch_case(SMALL, 3)
    pts = np.random.default_rng(2).random((4, 2)) * [639, 479]
    assert transfer_parts_batch(ref, [], pts, ref_lb, []) == []
    out = transfer_parts_batch(ref, descs, np.zeros((0, 2)), ref_lb, lbs)
    assert [len(r) for r in out] == [0, 0, 0]
    with pytest.raises(ValueError, match="letterboxes"):
        transfer_parts_batch(ref, descs, pts, ref_lb, lbs[:2])
    small = {k: v[:, : v.shape[1] // 2, : v.shape[2] // 2] for k, v in _layers(5, PAPER_SIZES,
                                                                                SMALL).items()}
    with pytest.raises(ValueError, match="differ in shape"):
        transfer_parts_batch(ref, [descs[0], PartsDescriptor("concat", small, 30)], pts,
                             ref_lb, lbs[:2])
    one = transfer_parts_batch(ref, descs[:1], pts, ref_lb, lbs[:1])  # a batch of one
    _exact(transfer_parts(ref, descs[0], pts, ref_lb, lbs[0]), one[0])


# ---- engine ---------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 3, 16])
def test_engine_prefetch_equals_lockstep(depth):
    ref_a, ref_b, *targets = _images(9)
    rng = np.random.default_rng(1)
    k = 12
    refs = [(ref_a, rng.random((k, 2)) * [63, 47], None),
            (ref_b, rng.random((k, 2)) * [63, 55], rng.random(k) > 0.2)]
    pairs = [(0, 1), (2, 3)]
    ext = RandomMaps()
    eng = Engine(config=ext.config, extractor=ext)  # type: ignore[arg-type]
    lock = list(eng.iter_transfer(refs, targets, pairs))
    pre = list(eng.iter_transfer(refs, iter(targets), pairs, prefetch=depth))
    assert len(pre) == len(targets)
    for a, b in zip(lock, pre):
        _exact(a, b)


def test_engine_prefetch_error_after_earlier_results():
    ref, *targets = _images(5)
    pts = np.random.default_rng(1).random((6, 2)) * [63, 47]

    def gen():
        yield from targets[:3]
        raise OSError("disk gone")

    eng = Engine(config=RandomMaps().config, extractor=RandomMaps())  # type: ignore[arg-type]
    got = []
    with pytest.raises(OSError, match="disk gone"):
        for r in eng.iter_transfer([(ref, pts, None)], gen(), prefetch=4):
            got.append(r)
    assert len(got) == 3  # the targets before the failure are all delivered, in order
    lock = list(eng.iter_transfer([(ref, pts, None)], targets[:3]))
    for a, b in zip(lock, got):
        _exact(a, b)


def test_engine_prefetch_close_stops_the_thread():
    ref, *targets = _images(3)
    pts = np.random.default_rng(1).random((6, 2)) * [63, 47]
    consumed = []

    def endless():
        i = 0
        while True:
            consumed.append(i)
            yield targets[i % 2]
            i += 1

    eng = Engine(config=RandomMaps().config, extractor=RandomMaps())  # type: ignore[arg-type]
    before = threading.active_count()
    it = eng.iter_transfer([(ref, pts, None)], endless(), prefetch=2)
    next(it)
    it.close()
    assert threading.active_count() == before  # joined, not left running
    n = len(consumed)
    time.sleep(0.05)
    assert len(consumed) == n and n <= 8  # bounded read-ahead, nothing read after close


def test_prefetch_order_errors_and_depth():
    assert list(Prefetch(range(20), lambda x: x * x, depth=3)) == [x * x for x in range(20)]
    assert list(Prefetch([], lambda x: x)) == []
    with pytest.raises(ValueError, match="depth"):
        Prefetch([1], lambda x: x, depth=0)

    def fn(x):
        if x == 4:
            raise KeyError("bad item")
        return x

    it = Prefetch(range(10), fn, depth=2)
    assert [next(it) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="bad item"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
