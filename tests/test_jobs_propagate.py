"""Propagation job: request from the project, cancel, unreadable images, applying results."""

import numpy as np
import pytest
from PIL import Image
from skimage import data

from annotator.domain import ImageStatus, Keypoint, KeypointSchema, Origin, Visibility
from annotator.engine import Engine
from annotator.features.config import preset
from annotator.features.content import ContentExtractor
from annotator.io.project_file import new_project
from annotator.jobs.progress import Cancelled, TaskState
from annotator.jobs.propagate import (
    Prediction,
    PropagateRequest,
    apply_predictions,
    run_propagation,
)

POINTS = [(100.0, 120.0), (260.0, 200.0), (380.0, 90.0)]


@pytest.fixture
def project(tmp_path):
    img = data.chelsea()  # 451 x 300
    for i in range(4):
        shifted = np.zeros_like(img)
        shifted[:, 16 * i:] = img[:, : img.shape[1] - 16 * i]
        Image.fromarray(shifted).save(tmp_path / f"img{i}.png")
    (tmp_path / "zz_broken.png").write_bytes(b"\x89PNG broken")
    schema = KeypointSchema("cat", ("left_eye", "right_eye", "ear"), flip_pairs=((0, 1),))
    p = new_project(tmp_path, schema)
    for k, (x, y) in enumerate(POINTS):
        p.set_keypoint("img0.png", k, Keypoint(x, y, Visibility.VISIBLE))
    return p


def engine() -> Engine:
    cfg = preset("fast", softargmax_window=0)
    return Engine(config=cfg, extractor=ContentExtractor())


def test_request_targets_skip_reviewed_and_references(project):
    project.set_status("img1.png", ImageStatus.REVIEWED)
    req = PropagateRequest.from_project(project)
    assert [r.path for r in req.references] == ["img0.png"]
    assert req.targets == ("img2.png", "img3.png", "zz_broken.png")
    assert req.flip_pairs == ((0, 1),)
    assert req.references[0].valid == (True, True, True)


def test_run_reports_progress_unreadable_and_applies_one_undo_step(project):
    progress = []
    state = TaskState(progress.append)
    req = PropagateRequest.from_project(project)
    preds = list(run_propagation(req, engine(), state))
    assert [p.path for p in preds] == ["img1.png", "img2.png", "img3.png", "zz_broken.png"]
    assert preds[-1].error and "zz_broken.png" in preds[-1].error
    assert [p.done for p in progress][-1] == 4 and progress[-1].total == 4
    for i, pred in enumerate(preds[:3], start=1):
        # content moved right by 16 px per image: one fast-preset cell
        assert np.allclose(pred.points[pred.found], (np.array(POINTS) + [16 * i, 0])[pred.found],
                           atol=14)
        assert pred.found.sum() >= 2
    updated = apply_predictions(project, preds)
    assert updated == ["img1.png", "img2.png", "img3.png"]
    ann = project.annotation("img2.png")
    assert ann.status == ImageStatus.PREDICTED
    kp = ann.instances[0].keypoints[0]
    assert kp.origin == Origin.PREDICTED and 0 <= kp.confidence <= 1
    assert project.image("img2.png").width == 451
    project.undo()  # one step removes all predictions
    assert project.annotation("img2.png").status == ImageStatus.UNLABELLED


def test_cancel_between_images(project):
    state = TaskState()
    req = PropagateRequest.from_project(project)
    it = run_propagation(req, engine(), state)
    first = next(it)
    assert first.path == "img1.png"
    state.cancel()
    with pytest.raises(Cancelled):
        next(it)


def test_no_reference_is_a_clear_error(tmp_path):
    Image.fromarray(data.chelsea()).save(tmp_path / "a.png")
    p = new_project(tmp_path, KeypointSchema("x", ("a",)))
    with pytest.raises(ValueError, match="no reference image"):
        list(run_propagation(PropagateRequest.from_project(p), engine(), TaskState()))


def test_apply_keeps_user_work_and_marks_not_found(project):
    project.move_keypoint("img1.png", 0, 5, 5)  # the user labelled img1 meanwhile
    k = len(project.schema)
    pred = Prediction("img1.png", np.zeros((k, 2)), np.ones(k), np.ones(k, bool), np.zeros(k, bool))
    miss = Prediction("img2.png", np.full((k, 2), np.nan), np.zeros(k), np.zeros(k, bool),
                      np.ones(k, bool))
    assert apply_predictions(project, [pred, miss]) == ["img2.png"]
    assert project.annotation("img1.png").instances[0].keypoints[0].x == 5
    missed = project.annotation("img2.png")
    assert not any(kp.labelled for kp in missed.instances[0].keypoints)
    assert missed.worst_confidence() == 0.0  # not found counts as the worst: reviewed first


def test_propagating_again_keeps_the_users_corrections(project):
    preds = list(run_propagation(PropagateRequest.from_project(project), engine(), TaskState()))
    apply_predictions(project, preds)
    project.move_keypoint("img2.png", 0, 7.0, 8.0)  # corrected, image not yet accepted
    project.set_visibility("img2.png", 2, Visibility.UNLABELLED)  # a wrong prediction deleted
    req = PropagateRequest.from_project(project)
    assert "img2.png" in req.targets  # still to review: predicted again
    again = list(run_propagation(req, engine(), TaskState()))
    apply_predictions(project, again)
    kps = project.annotation("img2.png").instances[0].keypoints
    assert (kps[0].x, kps[0].y, kps[0].origin) == (7.0, 8.0, Origin.REVIEWED)
    assert not kps[2].labelled and kps[2].origin == Origin.REVIEWED  # stays deleted
    assert kps[1].origin == Origin.PREDICTED and kps[1].labelled
