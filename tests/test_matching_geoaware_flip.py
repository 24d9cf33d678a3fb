"""GeoAware-SC's adaptive pose alignment with hand-made features: the mutual-nearest-neighbour
score, the partner-mirrored queries and the per-pair flip decision."""

import math

import numpy as np
import pytest
import torch

from annotator.features.letterbox import Letterbox
from annotator.matching import transfer_parts as tp
from annotator.matching.transfer import (
    MatchParams,
    mirrored_queries,
    mutual_nn_distance,
    transfer,
)


def test_mutual_nn_distance_by_hand():
    # unit vectors in 2-D; reference cells r0..r2, target cells t0..t2
    ang_r = [0.0, 0.5, 1.4]
    ang_t = [0.1, 0.45, 3.0]
    r = torch.tensor([[math.cos(a), math.sin(a)] for a in ang_r])
    t = torch.tensor([[math.cos(a), math.sin(a)] for a in ang_t])
    sim = r @ t.T
    # nearest target: r0 -> t0 (0.1), r1 -> t1 (0.05), r2 -> t1 (0.95); t1's nearest is r1:
    # mutual pairs (r0, t0) and (r1, t1); r2 is not in one
    d = lambda a: 2 * math.sin(a / 2)  # chord length of an angle  # noqa: E731
    expected = (d(0.1) + d(0.05)) / 2
    assert mutual_nn_distance(sim) == pytest.approx(expected, abs=1e-6)
    # identical sets: every cell is its own mutual neighbour at distance 0
    assert mutual_nn_distance(r @ r.T) == pytest.approx(0.0, abs=1e-3)
    assert mutual_nn_distance(torch.zeros(0, 3)) == math.inf
    with pytest.raises(ValueError):
        mutual_nn_distance(torch.zeros(3))


def test_mirrored_queries_by_hand():
    pts = np.array([[10.0, 5.0], [30.0, 6.0], [50.0, 7.0], [70.0, 8.0]])
    perm = np.array([1, 0, 2, 3])  # 0 <-> 1 partners, 2 and 3 self-symmetric
    q = mirrored_queries(pts, np.ones(4, bool), perm, 100)
    np.testing.assert_array_equal(q, [[69, 6], [89, 5], [49, 7], [29, 8]])
    # partner 1 unlabelled: keypoint 0 is queried at its own mirror
    q = mirrored_queries(pts, np.array([True, False, True, True]), perm, 100)
    np.testing.assert_array_equal(q[0], [89, 5])
    with pytest.raises(ValueError):
        mirrored_queries(pts, np.ones(3, bool), perm, 100)


G, S = 4, 40  # 4 x 4 grid on a 40 px square image: 10 px cells


def _unit(d):
    return d / d.norm(dim=0, keepdim=True)


def _mirror(d):
    return d.flip(-1)


def _scene(seed):
    """Hand-made features of an object = part appearance P (C, G, G) + a pose vector shared by
    all its cells (facing left or right). Returns (reference facing left, its flipped image
    facing right, target facing right (the mirror with a little noise), target facing left)."""
    g = torch.Generator().manual_seed(seed)
    c = 24
    parts = torch.randn(c, G, G, generator=g)
    left, right = (2 * torch.randn(c, 1, 1, generator=g) for _ in range(2))
    noise = lambda: 0.05 * torch.randn(c, G, G, generator=g)  # noqa: E731
    ref = _unit(parts + left)
    flipped = _unit(_mirror(parts) + right)
    return ref, flipped, _unit(_mirror(parts) + right + noise()), _unit(parts + left + noise())


def _cell_centre(col, row):
    return [col * 10 + 4.5, row * 10 + 4.5]


LB = Letterbox.fit(S, S, S)
# keypoint 0 "left eye" at cell (0, 1), keypoint 1 "right eye" at (2, 1), 2 "nose" at (1, 3)
PTS = np.array([_cell_centre(0, 1), _cell_centre(2, 1), _cell_centre(1, 3)])
PERM = np.array([1, 0, 2])
MNN = MatchParams(soft_window=0, flip_criterion="mutual_nn")


def test_opposite_pose_takes_the_flipped_reference_and_partner_positions():
    ref, fref, tgt_right, _ = _scene(0)
    assert mutual_nn_distance(fref.flatten(1).T @ tgt_right.flatten(1)) < \
        mutual_nn_distance(ref.flatten(1).T @ tgt_right.flatten(1))
    r = transfer(ref, tgt_right, PTS, LB, LB, MNN, None, fref, PERM)
    assert r.flipped
    # keypoint a is queried at its partner's mirrored position in the flipped reference, so
    # it lands where the mirror of its partner's appearance is in the target
    np.testing.assert_allclose(r.points[0], [S - 1 - PTS[1, 0], PTS[1, 1]])
    np.testing.assert_allclose(r.points[1], [S - 1 - PTS[0, 0], PTS[0, 1]])
    np.testing.assert_allclose(r.points[2], [S - 1 - PTS[2, 0], PTS[2, 1]])
    # the direct match follows each keypoint's own appearance instead
    direct = transfer(ref, tgt_right, PTS, LB, LB, MNN)
    np.testing.assert_allclose(direct.points[0], [S - 1 - PTS[0, 0], PTS[0, 1]])


def test_same_pose_keeps_the_direct_match():
    ref, fref, _, tgt_left = _scene(1)
    r = transfer(ref, tgt_left, PTS, LB, LB, MNN, None, fref, PERM)
    assert not r.flipped
    np.testing.assert_allclose(r.points, PTS)


def test_keypoints_without_a_labelled_partner_keep_the_direct_match():
    ref, fref, tgt, _ = _scene(2)
    valid = np.array([True, False, True])
    r = transfer(ref, tgt, PTS, LB, LB, MNN, valid, fref, PERM)
    direct = transfer(ref, tgt, PTS, LB, LB, MNN, valid)
    assert r.flipped and not r.found[1]
    np.testing.assert_allclose(r.points[0], direct.points[0])  # partner unlabelled
    np.testing.assert_allclose(r.points[2], [S - 1 - PTS[2, 0], PTS[2, 1]])  # self-symmetric


def test_decision_comes_from_the_score_not_the_keypoints():
    """One decision per pair from ``flip_score``: the same keypoint matches flip or not as
    the score says."""
    ref, fref, _, tgt = _scene(3)
    calls = []

    def spy(flipped):
        calls.append(flipped)
        return {True: 0.1, False: 0.2}[flipped]

    from annotator.matching.transfer import _match, transfer_with

    def match(cells, cell, flipped):
        return _match(fref if flipped else ref, tgt, cells, cell, MNN)

    r = transfer_with(match, G, PTS, LB, LB, MNN, None, True, PERM, spy)
    assert r.flipped and set(calls) == {True, False}  # same-pose target, but the score says so
    r = transfer_with(match, G, PTS, LB, LB, MNN, None, True, PERM, lambda f: float(f))
    assert not r.flipped
    with pytest.raises(ValueError, match="flip_score"):
        transfer_with(match, G, PTS, LB, LB, MNN, None, True, PERM, None)


def test_parts_fast_path_makes_the_same_decision():
    ref, fref, tgt, _ = _scene(5)
    layers, flipped_layers, tgt_layers = ({"dino": 3 * x} for x in (ref, fref, tgt))
    from annotator.features.fusion import fuse

    ref_d, fref_d, tgt_d = (fuse("dino", x, G) for x in (layers, flipped_layers, tgt_layers))
    plain = transfer(ref_d, tgt_d, PTS, LB, LB, MNN, None, fref_d, PERM)
    fast = tp.transfer_parts(tp.PartsReference("dino", ref_d, layers, G),
                             tp.PartsDescriptor("dino", tgt_layers, G), PTS, LB, LB, MNN, None,
                             tp.PartsReference("dino", fref_d, flipped_layers, G), PERM)
    assert plain.flipped and fast.flipped
    np.testing.assert_allclose(fast.points, plain.points)


def test_bad_criterion_is_refused():
    with pytest.raises(ValueError, match="flip_criterion"):
        MatchParams(flip_criterion="vote")
