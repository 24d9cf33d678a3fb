"""PCK arithmetic: exact answers, the comparison rule, and the two averages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from annotator.jobs.pck import (
    PairScore,
    aggregate,
    correct_counts,
    keypoint_errors,
    pck_table,
    score_pair,
)


def test_errors_and_not_found():
    err = keypoint_errors(np.array([[3.0, 4.0], [np.nan, 0.0], [0, 0]]), np.zeros((3, 2)))
    assert err[0] == 5.0 and math.isinf(err[1]) and err[2] == 0.0
    with pytest.raises(ValueError):
        keypoint_errors(np.zeros((2, 2)), np.zeros((3, 2)))


def test_rule_on_the_threshold():
    err = np.array([5.0, 4.999, 5.001])
    # L = 100, alpha 0.05 -> threshold 5 px exactly
    assert correct_counts(err, 100, [0.05], "lt").tolist() == [1]
    assert correct_counts(err, 100, [0.05], "le").tolist() == [2]
    with pytest.raises(ValueError, match="rule"):
        correct_counts(err, 100, [0.05], "lte")


def test_known_shift_at_each_alpha():
    gt = np.array([[10.0, 10.0], [50.0, 20.0]])
    s = score_pair("p", "c", gt + [6.0, 8.0], gt, 100.0, [0.05, 0.1, 0.15, 0.2])  # error 10
    assert s.correct == (0, 0, 2, 2)  # 10 < 10 is false
    s = score_pair("p", "c", gt + [6.0, 8.0], gt, 100.0, [0.05, 0.1, 0.15], "le")
    assert s.correct == (0, 2, 2)
    assert s.mean_error == pytest.approx(10.0) and s.num_found == 2


def test_per_image_differs_from_per_keypoint():
    a = PairScore("a", "cat", 1, (1,), 10.0, 0.0, 1)   # 1 of 1 correct
    b = PairScore("b", "dog", 3, (0,), 10.0, 9.0, 3)   # 0 of 3 correct
    stats = aggregate([a, b], 1)
    assert stats.per_keypoint == (0.25,) and stats.per_image == (0.5,)
    table = pck_table([a, b], [0.1])
    assert table.per_category["cat"].per_keypoint == (1.0,)
    assert table.category_mean == (0.5,)
    empty = PairScore("e", "cat", 0, (0,), 10.0, float("nan"), 0)
    assert aggregate([a, b, empty], 1).per_image == (0.5,)  # pairs without points skipped


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=6), st.integers(0, 2**31 - 1))
def test_ground_truth_scores_one_and_pooling_bounds(sizes, seed):
    rng = np.random.default_rng(seed)
    scores = []
    for i, k in enumerate(sizes):
        gt = rng.uniform(0, 100, (k, 2))
        scores.append(score_pair(str(i), "c", gt, gt, 50.0, [0.01, 0.1]))
    stats = aggregate(scores, 2)
    assert stats.per_keypoint == (1.0, 1.0) and stats.per_image == (1.0, 1.0)
    noisy = [score_pair(str(i), "c", rng.uniform(0, 100, (k, 2)), rng.uniform(0, 100, (k, 2)),
                        50.0, [0.1]) for i, k in enumerate(sizes)]
    st_ = aggregate(noisy, 1)
    per = [s.correct[0] / s.num_points for s in noisy]
    assert min(per) - 1e-12 <= st_.per_keypoint[0] <= max(per) + 1e-12
