"""Keypoint prototypes, the spatial prior, detector-free object boxes, and the flip rule of
propagation (issue 19). Synthetic descriptors: exact answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from annotator.matching import localize
from annotator.matching import prototype as proto
from annotator.matching.transfer import cell_centres


def _onehot(g: int, c: int, cells: dict[tuple[int, int], int]) -> torch.Tensor:
    """(C, G, G): channel 0 everywhere, except the named (col, row) cells -> channel k."""
    d = torch.zeros(c, g, g)
    d[0] = 1.0
    for (col, row), k in cells.items():
        d[:, row, col] = 0
        d[k, row, col] = 1.0
    return d


def test_prototypes_average_the_references_and_skip_unlabelled_ones():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    p = proto.build_prototypes([a, b], [np.array([True, True]), np.array([True, False])],
                               [np.array([[0.2, 0.4], [0.5, 0.5]]),
                                np.array([[0.4, 0.4], [0.9, 0.9]])])
    s = float(1 / np.sqrt(2))
    assert torch.allclose(p.vectors[0], torch.tensor([s, s]))  # mean of both, normalised
    assert torch.allclose(p.vectors[1], torch.tensor([0.0, 1.0]))  # b's is not labelled
    assert p.count.tolist() == [2, 1]
    assert np.allclose(p.prior_mean, [[0.3, 0.4], [0.5, 0.5]])
    assert np.allclose(p.prior_std, [[0.1, 0.0], [0.0, 0.0]])


def test_sample_takes_the_cell_under_each_point():
    g, cell = 4, 10.0
    d = _onehot(g, 3, {(2, 1): 1, (0, 3): 2})
    pts = np.array([[cell_centres(np.array([2]), cell)[0] + 4.0, 14.0], [0.0, 39.0]])
    s = proto.sample_descriptors(d, pts, cell)
    assert s.shape == (2, 3)
    assert torch.argmax(s[0]) == 1 and torch.argmax(s[1]) == 2
    assert proto.sample_descriptors(d, np.zeros((0, 2)), cell).shape == (0, 3)


def test_match_finds_the_prototype_and_the_prior_breaks_ties():
    g, cell = 6, 10.0
    # two identical candidate cells for keypoint 0: (1, 1) and (4, 4)
    d = _onehot(g, 2, {(1, 1): 1, (4, 4): 1})
    p = proto.Prototypes(torch.tensor([[0.0, 1.0]]), np.array([1]),
                         prior_mean=np.array([[0.75, 0.75]]), prior_std=np.array([[0.0, 0.0]]))
    content = (-0.5, -0.5, 60.0, 60.0)
    prior = proto.prior_log_density(p, content, g, cell, 0.1)
    with_prior = proto.match_prototypes(p, d, cell, None, prior, 0.05)
    assert np.allclose(with_prior.canvas, cell_centres(np.array([[4, 4]]), cell))
    assert with_prior.found.all() and with_prior.similarity[0] == pytest.approx(1.0)
    # the prior moves the match to the other copy when the references put it there
    p2 = proto.Prototypes(p.vectors, p.count, np.array([[0.2, 0.2]]), p.prior_std)
    prior2 = proto.prior_log_density(p2, content, g, cell, 0.1)
    moved = proto.match_prototypes(p2, d, cell, None, prior2, 0.05)
    assert np.allclose(moved.canvas, cell_centres(np.array([[1, 1]]), cell))


def test_match_stays_on_content_and_unlabelled_keypoints_are_not_found():
    g, cell = 4, 10.0
    d = _onehot(g, 2, {(3, 3): 1, (1, 1): 1})
    content = np.ones((g, g), bool)
    content[3, 3] = False  # a padding cell
    p = proto.Prototypes(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), np.array([2, 0]),
                         np.full((2, 2), 0.5), np.zeros((2, 2)))
    m = proto.match_prototypes(p, d, cell, content)
    assert np.allclose(m.canvas[0], cell_centres(np.array([1, 1]), cell))
    assert m.found.tolist() == [True, False]
    with pytest.raises(ValueError, match="channels"):
        proto.match_prototypes(p, torch.zeros(3, g, g), cell)


def test_found_boxes_join_the_parts_of_one_object_and_keep_two_objects_apart():
    g, cell = 12, 10.0
    fg, bg = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    model = localize.ObjectModel(fg, bg, 0.05)
    d = torch.zeros(3, g, g)
    d[1] = 1.0  # background everywhere
    d[2] = 0.2  # a floor that is a little closer to nothing
    body = [(2, 2), (3, 2), (2, 3), (3, 3)]
    tail = [(5, 3)]  # one cell away: the same object
    other = [(9, 9), (10, 9)]  # far: another object
    for col, row in body + tail + other:
        d[:, row, col] = fg
    score = localize.object_score(model, d)
    content = np.ones((g, g), bool)
    found = localize.find_objects(score, content, cell, max_objects=2)
    assert len(found) == 2
    x0, y0, x1, y1 = found[0].box  # the larger region first, body and tail together
    assert (x0, y0, x1, y1) == (2 * cell - 0.5, 2 * cell - 0.5, 6 * cell - 0.5, 4 * cell - 0.5)
    assert found[1].box == (9 * cell - 0.5, 9 * cell - 0.5, 11 * cell - 0.5, 10 * cell - 0.5)
    assert localize.find_objects(score, content, cell, max_objects=1) == found[:1]
    # nothing like the object: no box
    assert localize.find_objects(-np.abs(score), content, cell) == []


def test_object_model_needs_an_object_cell():
    d = torch.ones(2, 3, 3)
    with pytest.raises(ValueError, match="covers a cell"):
        localize.object_model([d], [np.zeros((3, 3), bool)], [np.ones((3, 3), bool)])


def _mirror_calls(monkeypatch, tmp_path, flip_pairs, flip):
    """How many mirrored references one propagation featurises (content descriptor)."""
    from PIL import Image

    from annotator import engine as engine_module
    from annotator.domain.project import ProjectSettings
    from annotator.engine import Engine
    from annotator.features.config import preset
    from annotator.features.content import ContentExtractor
    from annotator.jobs.progress import TaskState
    from annotator.jobs.propagate import PropagateRequest, ReferenceSpec, run_propagation

    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(tmp_path / name)
    calls = []
    real = engine_module._mirrored

    def spy(image):
        calls.append(image)
        return real(image)

    monkeypatch.setattr(engine_module, "_mirrored", spy)
    settings = ProjectSettings(flip=flip, combine="best", boxes="none", crop="none")
    request = PropagateRequest(str(tmp_path), (ReferenceSpec(
        "a.png", ((10.0, 10.0), (50.0, 20.0), (30.0, 40.0)), (True, True, True)),),
        ("b.png",), flip_pairs, settings)
    eng = Engine(config=preset("fast", softargmax_window=0, flip=True),
                 extractor=ContentExtractor())
    (pred,) = run_propagation(request, eng, TaskState())
    assert pred.error is None
    return len(calls)


def test_propagation_never_flips_a_schema_without_left_right_partners(monkeypatch, tmp_path):
    # flip on, no partners (numbered landmarks, any custom schema): the mirrored reference
    # would only mirror lateral points, so it is never computed
    assert _mirror_calls(monkeypatch, tmp_path, (), True) == 0
    # with partners it is, and turning flip off still wins
    assert _mirror_calls(monkeypatch, tmp_path, ((0, 1),), True) == 1
    assert _mirror_calls(monkeypatch, tmp_path, ((0, 1),), False) == 0
