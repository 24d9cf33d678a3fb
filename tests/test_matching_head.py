"""Keypoint head: training and readout on synthetic grids, files, and the combination rule."""

import numpy as np
import pytest
import torch

from annotator.features.letterbox import Letterbox
from annotator.matching import head as hm
from annotator.matching.combine import (
    HEAD_ONLY_FROM,
    SOURCE_HEAD,
    SOURCE_NONE,
    SOURCE_TRANSFER,
    Calibration,
    combine_head_and_transfer,
    fit_calibration,
)

G, C = 12, 16


def marked(cells: list[tuple[int, int]], seed: int = 0) -> torch.Tensor:
    """(C, G, G) unit-norm noise whose keypoint k's cell (x, y) carries a strong channel k."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(C, G, G, generator=gen) * 0.05
    d[0] += 1.0  # background
    for k, (x, y) in enumerate(cells):
        d[8 + k, y, x] += 2.0
    return torch.nn.functional.normalize(d, dim=0)


def training(n: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    descs, targets = [], []
    for i in range(n):
        cells = [tuple(int(v) for v in rng.integers(1, G - 1, 2)) for _ in range(3)]
        descs.append(marked(cells, seed + i))
        targets.append(cells)
    return torch.stack(descs), torch.tensor(targets, dtype=torch.float32)


@pytest.mark.parametrize("kind", ["linear", "mlp", "prototype"])
def test_head_finds_the_marked_cells_of_an_unseen_grid(kind):
    desc, targets = training()
    head = hm.train_head(desc, targets, torch.ones(4, 3, dtype=torch.bool), [0, 1, 2],
                         hm.HeadParams(kind=kind, steps=150, flip=False, dim=0))
    assert head.num_keypoints == 3 and head.channels == C
    want = [(2, 9), (10, 3), (6, 6)]
    cells, conf = hm.predict(head, marked(want, seed=99))
    assert cells.shape == (3, 2) and conf.shape == (3,)
    assert np.abs(cells.numpy() - np.array(want)).max() < 0.5
    assert ((conf >= 0) & (conf <= 1)).all()


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_confidence_is_lower_where_the_keypoint_is_absent(kind):
    desc, targets = training()
    # a near one-hot target (sigma 0.3): neighbours of a marker look like all background
    head = hm.train_head(desc, targets, torch.ones(4, 3, dtype=torch.bool), [0, 1, 2],
                         hm.HeadParams(kind=kind, steps=150, lr=0.05, sigma=0.3, flip=False,
                                       dim=0))
    present = marked([(2, 9), (10, 3), (6, 6)], seed=5)
    absent = marked([(2, 9), (10, 3)], seed=5)  # keypoint 2's channel never set
    _, c_present = hm.predict(head, present)
    _, c_absent = hm.predict(head, absent)
    assert c_present.min() > 0.8 and c_absent[2] < 0.3


def test_flip_augmentation_mirrors_grids_and_swaps_partners():
    x = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 2, 3, 3)
    targets = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [1.0, 2.0]]])
    valid = torch.tensor([[True, False, True]])
    ax, at, av = hm._augment(x, targets, valid, torch.tensor([1, 0, 2]), 3)
    assert torch.equal(ax[1], x[0].flip(-1)) and torch.equal(ax[0], x[0])
    # keypoint 0 of the mirror is keypoint 1 mirrored (x -> G - 1 - x), and vice versa
    assert at[1].tolist() == [[0.0, 0.0], [2.0, 1.0], [1.0, 2.0]]
    assert av[1].tolist() == [False, True, True]


@pytest.mark.parametrize("kind", ["mlp", "prototype"])
def test_a_keypoint_never_labelled_is_not_predicted(kind, tmp_path):
    desc, targets = training()
    valid = torch.ones(4, 3, dtype=torch.bool)
    valid[:, 1] = False
    head = hm.train_head(desc, targets, valid, [0, 1, 2], hm.HeadParams(kind=kind, steps=20))
    cells, conf = (t.numpy() for t in hm.predict(head, desc[0]))
    assert np.isnan(cells[1]).all() and conf[1] == 0
    assert np.isfinite(cells[[0, 2]]).all()
    path = hm.save_head(head, tmp_path / "h.safetensors", fingerprint="f", keypoints="abc")
    assert np.isnan(hm.predict(hm.load_head(path), desc[0])[0].numpy()[1]).all()


def test_invalid_points_and_bad_shapes_are_refused():
    desc, targets = training(2)
    valid = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="targets must be"):
        hm.train_head(desc, targets[:, :, :1], valid, [0, 1, 2])
    with pytest.raises(ValueError, match="permutation"):
        hm.train_head(desc, targets, valid, [0, 0, 2])
    with pytest.raises(ValueError, match="no labelled"):
        hm.train_head(desc, targets, torch.zeros(2, 3, dtype=torch.bool), [0, 1, 2])
    with pytest.raises(ValueError, match="descriptors must be"):
        hm.train_head(desc[0], targets, valid, [0, 1, 2])
    head = hm.train_head(desc, targets, valid, [0, 1, 2], hm.HeadParams(steps=2, dim=0))
    with pytest.raises(ValueError, match="channels"):
        hm.predict(head, torch.ones(C + 1, G, G))


def test_projection_and_context_keep_a_c_channel_linear_map():
    desc, targets = training()
    head = hm.train_head(desc, targets, torch.ones(4, 3, dtype=torch.bool), [0, 1, 2],
                         hm.HeadParams(steps=150, flip=False, dim=8, context=3))
    assert head.tensors["weight"].shape == (3, 2 * C)
    cells, _ = hm.predict(head, marked([(2, 9), (10, 3), (6, 6)], seed=7))
    assert np.abs(cells.numpy() - [(2, 9), (10, 3), (6, 6)]).max() < 1.0


def test_cells_and_pixels_round_trip_with_the_transfer_convention():
    lb = Letterbox.fit(200, 100, 448)
    pts = np.array([[0.0, 0.0], [199.0, 99.0], [57.3, 12.9]])
    cells = hm.pixels_to_cells(pts, lb, 32)
    np.testing.assert_allclose(hm.cells_to_pixels(cells, lb, 32), pts, atol=1e-9)
    # cell index = floor(u / cell), centre = cell * c + cell / 2 (matching.transfer)
    u = lb.to_canvas(pts)
    np.testing.assert_array_equal(np.floor(cells + 0.5), np.floor(u / (448 / 32)))


def test_save_load_round_trip_and_refusals(tmp_path):
    desc, targets = training()
    head = hm.train_head(desc, targets, torch.ones(4, 3, dtype=torch.bool), [0, 1, 2],
                         hm.HeadParams(kind="mlp", steps=5, hidden=8, dim=0))
    path = hm.save_head(head, tmp_path / "h.safetensors", fingerprint="abc",
                        keypoints=["a", "b", "c"], images=["x.png", "y.png"])
    back = hm.load_head(path, fingerprint="abc", keypoints=["a", "b", "c"])
    assert back.params == head.params and back.meta["num_images"] == 2
    probe = marked([(1, 1), (2, 2), (3, 3)])
    np.testing.assert_allclose(hm.predict(back, probe)[0], hm.predict(head, probe)[0])
    with pytest.raises(hm.HeadFileError, match="other features"):
        hm.load_head(path, fingerprint="other")
    with pytest.raises(hm.HeadFileError, match="keypoints"):
        hm.load_head(path, keypoints=["a", "b"])
    (tmp_path / "bad.safetensors").write_bytes(b"not a head")
    with pytest.raises(hm.HeadFileError):
        hm.load_head(tmp_path / "bad.safetensors")
    with pytest.raises(hm.HeadFileError, match="no trained head"):
        hm.load_head(tmp_path / "missing.safetensors")


# ---- combination -----------------------------------------------------------------------------
def test_combination_takes_the_more_confident_source_per_keypoint():
    tp = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    hp = tp + 100
    identity = {"head_calibration": Calibration(), "transfer_calibration": Calibration()}
    out = combine_head_and_transfer(tp, [0.9, 0.2, 0.5, 0.3], [True, True, False, False],
                                    hp, [0.4, 0.6, 0.1, np.nan], **identity)
    assert out.source.tolist() == [SOURCE_TRANSFER, SOURCE_HEAD, SOURCE_HEAD, SOURCE_NONE]
    np.testing.assert_array_equal(out.points[:3], [tp[0], hp[1], hp[2]])
    assert np.isnan(out.points[3]).all() and out.found.tolist() == [True, True, True, False]
    np.testing.assert_allclose(out.confidence, [0.9, 0.6, 0.1, 0.0])
    assert out.source_names() == ["transfer", "head", "head", "none"]


def test_calibration_decides_between_sources():
    tp, hp = np.zeros((1, 2)), np.ones((1, 2))
    identity = {"head_calibration": Calibration(), "transfer_calibration": Calibration()}
    raw = combine_head_and_transfer(tp, [0.6], [True], hp, [0.3], **identity)
    assert raw.source[0] == SOURCE_TRANSFER
    # the head's 0.3 is right 90 % of the time, the transfer's 0.6 only 40 %
    out = combine_head_and_transfer(tp, [0.6], [True], hp, [0.3],
                                    head_calibration=Calibration((0, 0.3, 1), (0, 0.9, 1)),
                                    transfer_calibration=Calibration((0, 1), (0, 0.667)))
    assert out.source[0] == SOURCE_HEAD and out.confidence[0] == pytest.approx(0.9)


def test_measured_calibrations_prefer_a_confident_head_over_a_confident_transfer():
    # raw 0.6 (head) vs 0.95 (transfer): the fixtures say the head is right more often
    out = combine_head_and_transfer(np.zeros((2, 2)), [0.95, 0.95], [True, True],
                                    np.ones((2, 2)), [0.6, 0.1])
    assert out.source.tolist() == [SOURCE_HEAD, SOURCE_TRANSFER]


def test_a_head_trained_on_enough_images_wins_wherever_it_has_a_point():
    tp, hp = np.zeros((2, 2)), np.ones((2, 2))
    hp[1] = np.nan
    few = combine_head_and_transfer(tp, [0.99, 0.99], [True, True], hp, [0.05, 0.9],
                                    num_images=HEAD_ONLY_FROM - 1)
    many = combine_head_and_transfer(tp, [0.99, 0.99], [True, True], hp, [0.05, 0.9],
                                     num_images=HEAD_ONLY_FROM)
    assert few.source.tolist() == [SOURCE_TRANSFER, SOURCE_TRANSFER]
    assert many.source.tolist() == [SOURCE_HEAD, SOURCE_TRANSFER]  # no head point: transfer


def test_without_a_head_every_point_is_the_transfers():
    tp = np.array([[1.0, 1.0], [np.nan, np.nan]])
    out = combine_head_and_transfer(tp, [0.1, 0.9], [True, False],
                                    transfer_calibration=Calibration())
    assert out.source.tolist() == [SOURCE_TRANSFER, SOURCE_NONE]
    assert out.found.tolist() == [True, False]


def test_fit_calibration_is_monotone_and_tracks_accuracy():
    rng = np.random.default_rng(0)
    conf = rng.random(2000)
    correct = rng.random(2000) < conf ** 2  # true accuracy conf^2
    cal = fit_calibration(conf, correct, bins=10)
    assert np.all(np.diff(cal.ys) >= 0)
    assert cal(np.array([0.9]))[0] == pytest.approx(0.81, abs=0.08)
    assert cal(np.array([0.3]))[0] == pytest.approx(0.09, abs=0.08)
    with pytest.raises(ValueError, match="too few"):
        fit_calibration(conf[:5], correct[:5])
