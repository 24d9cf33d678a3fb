"""One-to-many transfer describes each image once for pair-independent fusions."""

import numpy as np

from annotator.engine import Engine
from annotator.features.content import ContentExtractor


class Counting(ContentExtractor):
    def __init__(self, pair_dependent: bool) -> None:
        super().__init__()
        self.pair_dependent = pair_dependent
        self.described = 0

    def describe(self, maps):
        self.described += 1
        return super().describe(maps)


def images(n):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


def test_pair_independent_descriptors_are_reused():
    ref, *targets = images(4)
    pts = np.array([[10.0, 10.0], [40.0, 30.0]])
    runs = {}
    for dependent in (False, True):
        ext = Counting(dependent)
        out = Engine(extractor=ext).transfer_many([(ref, pts, None)], targets, [(0, 1)])
        runs[dependent] = (ext.described, out)
    # reference + its mirror once, then each target once
    assert runs[False][0] == 2 + 3
    # pair-dependent: both images of every pair, direct and mirrored, per target
    assert runs[True][0] == 3 * 4
    for a, b in zip(runs[False][1], runs[True][1]):  # same answers either way
        np.testing.assert_array_equal(a.points, b.points)
