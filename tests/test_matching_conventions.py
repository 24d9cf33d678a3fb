"""Pixel-centre cell convention and flip-aware details of the transfer."""

import numpy as np
import torch

from annotator.features.letterbox import Letterbox
from annotator.matching.transfer import MatchParams, cell_centres, query_cells, transfer


def test_cells_follow_the_pixel_centre_convention():
    # with 14-px cells, cell 0 holds pixels 0..13: centre coordinates -0.5 .. 13.5
    cells = query_cells(np.array([[-0.5, 13.4], [13.6, 27.4]]), 14.0, 60)
    assert cells.tolist() == [[0, 0], [1, 1]]
    assert cell_centres(np.array([[0, 2]]), 14.0).tolist() == [[6.5, 34.5]]


def test_identity_transfer_returns_the_cell_centre_exactly():
    torch.manual_seed(0)
    desc = torch.randn(16, 4, 4)  # a distinct descriptor per cell
    lb = Letterbox.fit(56, 56, 56)  # scale 1, cell 14
    pts = np.array([[6.5, 6.5], [20.5, 48.5], [13.6, 0.0]])
    r = transfer(desc, desc, pts, lb, lb, MatchParams(soft_window=0))
    assert r.found.all()
    assert np.allclose(r.points, [[6.5, 6.5], [20.5, 48.5], [20.5, 6.5]])


def test_flipped_result_keeps_keypoints_whose_partner_is_unlabelled():
    torch.manual_seed(1)
    ref = torch.randn(32, 60, 60)
    tgt = ref + 6.0 * torch.randn_like(ref)  # noisy: the direct match is not cycle-consistent
    fref = tgt.flip(-1)  # the mirrored reference matches the target perfectly
    lb = Letterbox.fit(840, 840, 840)
    pts = np.array([[100.0, 200.0], [700.0, 200.0], [420.0, 600.0], [300.0, 300.0]])
    valid = np.array([True, False, True, True])  # keypoint 1 (partner of 0) not labelled
    perm = np.array([1, 0, 2, 3])
    params = MatchParams(soft_window=0)
    direct = transfer(ref, tgt, pts, lb, lb, params, valid)
    r = transfer(ref, tgt, pts, lb, lb, params, valid, fref, perm)
    assert r.flipped and np.allclose(r.cycle_error[2:], 0)
    assert np.allclose(r.points[2:], pts[2:], atol=7.5)
    # keypoint 0 cannot come from its unlabelled partner: the direct match is kept
    assert r.found[0] and np.array_equal(r.points[0], direct.points[0])
    assert not r.found[1]


def test_flipped_branch_uses_its_own_target_descriptor():
    torch.manual_seed(2)
    ref = torch.randn(8, 10, 10)
    lb = Letterbox.fit(140, 140, 140)
    pts = np.array([[30.0, 40.0], [100.0, 90.0]])
    other = torch.randn(8, 10, 10)  # unrelated target descriptor for the direct pair
    fref = torch.randn(8, 10, 10)
    # in the flipped pair's own basis the target equals the flipped reference
    r = transfer(ref, other, pts, lb, lb, MatchParams(soft_window=0), None, fref,
                 np.array([0, 1]), flipped_tgt_desc=fref)
    assert r.flipped
    assert np.allclose(r.points[:, 0], 139 - pts[:, 0], atol=7.5)
    assert np.allclose(r.cycle_error, 0)
