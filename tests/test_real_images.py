"""Real-image defaults on the real DINOv2-S and DeepLabCut's labelled frames (issue 19).

A few frames each, at the fast preset (448 px): seconds, not a benchmark. The accuracy
figures live in BENCHMARKS.md ("Real images")."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from annotator.domain.project import ProjectSettings
from annotator.io.formats.dlc import read_dlc
from annotator.io.images import load_image
from annotator.jobs.engine_factory import build_engine, resolve
from annotator.jobs.progress import TaskState
from annotator.jobs.propagate import PropagateRequest, ReferenceSpec, run_propagation
from tests.shared_fixtures import shared_fixture

DINO = shared_fixture("dinov2-small", "model.safetensors").parent
OPENFIELD = shared_fixture("dlc-examples", "openfield-Pranav-2018-10-30", "config.yaml").parent
REACHING = shared_fixture("dlc-examples", "Reaching-Mackenzie-2018-08-30", "config.yaml").parent


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("features")


def _settings(cache_dir: Path, **changes: object) -> ProjectSettings:
    return ProjectSettings(preset="fast", fusion="dino", dino_model=str(DINO), device="cpu",
                           cache_dir=str(cache_dir), **changes)


def _labelled(project, path):
    inst = project.annotation(path).instances[0]
    pts = np.array([(kp.x, kp.y) for kp in inst.keypoints], float)
    valid = np.array([kp.labelled for kp in inst.keypoints])
    return pts, valid


def _self_pair(tmp_path: Path, cache_dir: Path, project_dir: Path, frame: str, **changes):
    """Propagate a frame's labels onto a byte copy of itself; (errors (K, 2), valid, cell)."""
    project = read_dlc(project_dir)
    path = next(r.path for r in project.images if r.path.endswith(frame))
    pts, valid = _labelled(project, path)
    root = tmp_path / "images"
    root.mkdir(parents=True)
    src = Path(project.image_root) / path
    shutil.copy(src, root / "ref.png")
    shutil.copy(src, root / "copy.png")
    settings = _settings(cache_dir, **changes)
    engine = build_engine(settings)
    request = PropagateRequest(str(root), (ReferenceSpec("ref.png", tuple(map(tuple, pts)),
                                                         tuple(valid)),),
                               ("copy.png",), (), settings)
    (pred,) = run_propagation(request, engine, TaskState())
    image = load_image(src)
    cell = max(image.shape[:2]) / engine.config.grid  # whole-image cell in pixels
    return np.abs(pred.points - pts), valid & pred.found, cell


@pytest.mark.parametrize("project_dir, frame", [(OPENFIELD, "img0000.png"),
                                                (REACHING, "img005.png")])
def test_byte_copy_target_returns_every_point_within_half_a_cell(tmp_path, cache_dir,
                                                                 project_dir, frame):
    err, found, cell = _self_pair(tmp_path, cache_dir, project_dir, frame, boxes="none")
    _, valid = _labelled(read_dlc(project_dir), next(
        r.path for r in read_dlc(project_dir).images if r.path.endswith(frame)))
    assert found.sum() == valid.sum()  # every labelled point found
    assert np.all(err[found] <= cell / 2 + 1e-6), (err[found], cell)


def test_byte_copy_target_with_a_found_box_stays_within_half_a_cell(tmp_path, cache_dir):
    """The default (a box found from the reference, crop transfer): the crop's cells are
    smaller than the whole image's, so half a whole-image cell is a loose bound."""
    err, found, cell = _self_pair(tmp_path, cache_dir, OPENFIELD, "img0000.png")
    assert found.sum() == 4
    assert np.all(err[found] <= cell / 2 + 1e-6), (err[found], cell)


def test_soft_argmax_would_move_a_byte_copy_off_its_points(tmp_path, cache_dir):
    """Why soft-argmax is off by default: on real DINOv2 features the 11 x 11 window pulls
    exact matches away (the old rule, one reference, whole image)."""
    err_on, found_on, cell = _self_pair(tmp_path / "on", cache_dir, OPENFIELD, "img0000.png",
                                        boxes="none", combine="best", soft_argmax=True)
    err_off, found_off, _ = _self_pair(tmp_path / "off", cache_dir, OPENFIELD, "img0000.png",
                                       boxes="none", combine="best", soft_argmax=False)
    assert np.all(err_off[found_off] <= cell / 2 + 1e-6)
    assert np.abs(err_on[found_on]).max() > cell / 2


def test_soft_argmax_defaults_off_for_paper_and_fast_and_keeps_each_methods_window():
    def window(**kw):
        return resolve(ProjectSettings(**kw))[0].softargmax_window

    assert window() == 0 and window(preset="fast") == 0
    assert window(soft_argmax=True) == 11  # the paper's window when asked for
    assert window(preset="geoaware") == 11 and window(preset="diy") == 15
    assert window(preset="geoaware", soft_argmax=False) == 0


def test_eval_labelled_on_real_frames_scores_engine_and_both_baselines(cache_dir):
    from annotator.jobs.eval_labelled import LabelledEvalConfig, evaluate_labelled, render_table

    project = read_dlc(OPENFIELD)
    settings = _settings(cache_dir)
    result = evaluate_labelled(project, build_engine(settings),
                               LabelledEvalConfig(references=2, boxes="auto", max_targets=2),
                               TaskState(), settings)
    assert len(result.references) == 2 and len(result.targets) == 2
    for method in ("engine", "box copy", "copy"):
        assert len(result.scores[method]) == 8  # 2 targets x 4 labelled keypoints
        assert 0 <= result.scores[method].pck(0.1) <= 100
    # the engine finds the mouse: every point is within a tenth of the image side
    assert result.scores["engine"].pck(0.1, "image") == 100.0
    # copying coordinates from frames where the mouse is elsewhere does not
    assert result.scores["copy"].pck(0.1, "image") < 100.0
    table = render_table(result)
    assert "| engine |" in table and "| box copy |" in table and "| copy |" in table


def test_label_boxes_and_a_dominant_prior_reproduce_the_box_copy(cache_dir):
    """The spatial prior is framed by the object box, as the box-copy baseline is (not by the
    crop, which a border clips): with the prior dominating, the engine puts every point
    exactly where the box copy does."""
    from annotator.jobs.eval_labelled import LabelledEvalConfig, evaluate_labelled

    project = read_dlc(REACHING)
    settings = _settings(cache_dir, prior_weight=50.0)
    result = evaluate_labelled(project, build_engine(settings),
                               LabelledEvalConfig(references=1, boxes="labels", max_targets=3),
                               TaskState(), settings)
    engine, copy = result.scores["engine"], result.scores["box copy"]
    assert len(engine) == len(copy) > 0
    assert np.allclose(engine.errors, copy.errors, atol=0.5), (engine.errors, copy.errors)
