import numpy as np
import pytest
import torch

from annotator.features.letterbox import Letterbox
from annotator.matching.transfer import (
    MatchParams,
    TransferResult,
    combine,
    similarity_heatmap,
    transfer,
)

G = 8


def _desc(seed=0, c=32):
    d = torch.randn(c, G, G, generator=torch.Generator().manual_seed(seed))
    return d / d.norm(dim=0, keepdim=True)


HARD = MatchParams(soft_window=0)


def test_identity_transfer_and_cell_centres():
    d = _desc()
    lb = Letterbox.fit(80, 80, 80)  # cell 10 px
    pts = np.array([[3.0, 4.0], [55.0, 71.0], [79.0, 0.0]])
    r = transfer(d, d, pts, lb, lb, HARD)
    # pixel-centre convention: cell c holds pixels 10c..10c+9, centre 10c + 4.5
    np.testing.assert_allclose(r.points, np.floor((pts + 0.5) / 10) * 10 + 4.5)
    assert r.found.all() and (r.cycle_error == 0).all()
    np.testing.assert_allclose(r.similarity, 1.0, atol=1e-6)
    assert ((r.confidence > 0.99) & (r.confidence <= 1)).all() and not r.needs_review.any()


def test_shape_checks_and_empty():
    d = _desc()
    lb = Letterbox.fit(80, 80, 80)
    with pytest.raises(ValueError):
        transfer(d, d, np.zeros((3, 3)), lb, lb)
    with pytest.raises(ValueError):
        transfer(d[:, :4], d, np.zeros((1, 2)), lb, lb)
    with pytest.raises(ValueError):
        transfer(d, _desc(c=16), np.zeros((1, 2)), lb, lb)
    r = transfer(d, d, np.zeros((0, 2)), lb, lb)
    assert r.points.shape == (0, 2) and r.found.shape == (0,) and len(r) == 0


def test_padding_match_not_found():
    d = _desc()
    ref_lb = Letterbox.fit(80, 80, 80)
    tgt_lb = Letterbox.fit(80, 40, 80)  # rows 0..19 and 60..79 are padding
    pts = np.array([[15.0, 5.0], [15.0, 45.0]])  # ref cells row 0 (-> padding) and row 4
    r = transfer(d, d, pts, ref_lb, tgt_lb, HARD)
    assert not r.found[0] and np.isnan(r.points[0]).all() and r.confidence[0] == 0
    assert r.found[1]
    valid = transfer(d, d, pts, ref_lb, tgt_lb, HARD, ref_valid=np.array([True, False]))
    assert not valid.found.any()


def test_soft_argmax_subcell():
    lb = Letterbox.fit(80, 80, 80)
    ref = torch.zeros(2, G, G)
    ref[0] = 1.0
    ref[1, 2, 2] = 5.0  # query cell (2, 2) distinct
    tgt = torch.zeros(2, G, G)
    tgt[0] = 1.0
    tgt[1, 4, 4] = 5.0
    tgt[1, 4, 5] = 4.9  # neighbour almost as similar -> expected x between cells 4 and 5
    pts = np.array([[25.0, 25.0]])
    hard = transfer(ref, tgt, pts, lb, lb, HARD)
    soft = transfer(ref, tgt, pts, lb, lb, MatchParams(soft_window=3, temperature=0.02))
    np.testing.assert_allclose(hard.points[0], [44.5, 44.5])  # centre of cell (4, 4)
    assert 44.5 < soft.points[0, 0] < 54.5 and abs(soft.points[0, 1] - 44.5) < 1e-3


def test_flip_aware_picks_flipped():
    # target equals the mirrored reference's descriptor: the flipped path is exactly consistent,
    # the plain path (an unrelated descriptor) is not, so the flipped result must be kept
    lb = Letterbox.fit(80, 80, 80)
    ref = _desc(5)
    flipped_ref = _desc(6)
    tgt = flipped_ref.clone()
    pts = np.array([[15.0, 35.0], [65.0, 35.0], [35.0, 75.0]])  # left, right, centre
    perm = np.array([1, 0, 2])
    r = transfer(ref, tgt, pts, lb, lb, HARD, flipped_ref_desc=flipped_ref, flip_perm=perm)
    assert r.flipped and (r.cycle_error == 0).all()
    # keypoint k is taken from the mirror position of its partner
    truth = pts[perm].copy()
    truth[:, 0] = 79 - truth[:, 0]
    np.testing.assert_allclose(r.points, np.floor((truth + 0.5) / 10) * 10 + 4.5, atol=1e-6)
    plain = transfer(ref, ref, pts, lb, lb, HARD, flipped_ref_desc=flipped_ref, flip_perm=perm)
    assert not plain.flipped
    with pytest.raises(ValueError):
        transfer(ref, tgt, pts, lb, lb, flipped_ref_desc=flipped_ref, flip_perm=[0, 1])


def test_multi_reference_rule():
    def res(conf, found, x):
        k = len(conf)
        return TransferResult(points=np.full((k, 2), x, float), similarity=np.array(conf),
                              cycle_error=np.zeros(k), confidence=np.array(conf),
                              found=np.array(found), needs_review=np.array(conf) < 0.5)

    a = res([0.9, 0.2, 0.8], [True, True, False], 1.0)
    b = res([0.5, 0.7, 0.1], [True, True, True], 2.0)
    c = combine([a, b])
    np.testing.assert_array_equal(c.reference, [0, 1, 1])
    np.testing.assert_array_equal(c.points[:, 0], [1, 2, 2])
    np.testing.assert_allclose(c.confidence, [0.9, 0.7, 0.1])
    assert c.found.all()
    assert len(combine([TransferResult.empty()])) == 0


def test_heatmap():
    d = _desc()
    h = similarity_heatmap(d, d, np.array([25.0, 35.0]), 10.0)
    assert h.shape == (G, G)
    assert np.unravel_index(h.argmax(), h.shape) == (3, 2)
