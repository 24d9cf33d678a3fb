"""Per-instance propagation: crops around boxes, one predicted instance per target box,
keypoints of every reference instance compete, re-propagation keeps the user's instances."""

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from annotator.domain import ImageStatus, Keypoint, KeypointSchema, Origin, Visibility
from annotator.domain.annotation import ImageAnnotation, Instance
from annotator.engine import Engine
from annotator.features.cache import FeatureCache
from annotator.features.config import preset
from annotator.features.content import ContentExtractor
from annotator.features.crop import CropRect, ImageCrop, keypoint_box
from annotator.io.project_file import load_project, new_project, save_project
from annotator.jobs.progress import TaskState
from annotator.jobs.propagate import (
    Prediction,
    PropagateRequest,
    apply_predictions,
    merge_prediction,
    prediction_annotation,
    run_propagation,
)

SIDE = 120  # pasted object size (longest side)
# keypoints on the object, in object pixels (chelsea resized to 120 x 80)
OBJ_POINTS = np.array([[30.0, 25.0], [70.0, 30.0], [95.0, 60.0]])


def _object() -> np.ndarray:
    img = data.chelsea()
    h, w = img.shape[:2]
    return cv2.resize(img, (SIDE, round(SIDE * h / w)), interpolation=cv2.INTER_AREA)


def _canvas(offsets, size=(640, 480)) -> np.ndarray:
    rng = np.random.default_rng(7)
    canvas = (rng.integers(0, 40, (size[1], size[0], 3))).astype(np.uint8)  # dark noise
    obj = _object()
    for x, y in offsets:
        canvas[y:y + obj.shape[0], x:x + obj.shape[1]] = obj
    return canvas


def engine(cache=None) -> Engine:
    return Engine(config=preset("fast", softargmax_window=0, flip=False),
                  extractor=ContentExtractor(), cache=cache)


@pytest.fixture
def scene(tmp_path):
    obj_h = _object().shape[0]
    Image.fromarray(_canvas([(60, 300)])).save(tmp_path / "ref.png")
    Image.fromarray(_canvas([(400, 50), (90, 330)])).save(tmp_path / "two.png")
    schema = KeypointSchema("cat", ("a", "b", "c"))
    p = new_project(tmp_path, schema)
    for k, (x, y) in enumerate(OBJ_POINTS + (60, 300)):
        p.set_keypoint("ref.png", k, Keypoint(x, y, Visibility.VISIBLE))
    boxes = [(400.0, 50.0, float(SIDE), float(obj_h)), (90.0, 330.0, float(SIDE), float(obj_h))]
    for box in boxes:
        p.add_instance("two.png", box)
    return p, boxes


def test_crop_rect_margin_clipping_and_mapping():
    r = CropRect.around((100, 50, 40, 20), 200, 100, margin=0.15)
    assert (r.x0, r.y0, r.x1, r.y1) == (94, 47, 146, 73)  # 6 px and 3 px per side
    edge = CropRect.around((0, 0, 50, 50), 60, 60, margin=0.5)
    assert (edge.x0, edge.y0, edge.x1, edge.y1) == (0, 0, 60, 60)  # clipped to the image
    tiny = CropRect.around((10, 10, 0, 0), 100, 100, margin=0.15)
    assert tiny.width == 16 and tiny.height == 16  # a single point still gets a crop
    pts = np.array([[100.0, 60.0]])
    assert np.allclose(r.to_image(r.to_crop(pts)), pts)
    assert r.contains(np.array([[94, 47], [145, 72], [146, 60], [np.nan, 50]])).tolist() == [
        True, True, False, False]
    img = np.arange(100 * 200 * 3, dtype=np.uint8).reshape(100, 200, 3)
    crop = ImageCrop.of(img, r)
    assert crop.pixels.shape == (26, 52, 3) and (crop.pixels[0, 0] == img[47, 94]).all()
    with pytest.raises(ValueError, match="invalid box"):
        CropRect.around((0, 0, -1, 5), 10, 10)
    assert keypoint_box(np.array([[1.0, 2.0], [np.nan, 0], [5.0, 3.0]])) == (1.0, 2.0, 4.0, 1.0)
    assert keypoint_box(np.zeros((0, 2))) is None


def test_crop_features_are_cached_under_their_rectangle(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    eng = engine(cache)
    img = _canvas([(60, 300)])
    a = ImageCrop.of(img, CropRect(0, 0, 200, 200))
    eng.features(a)
    eng.features(ImageCrop.of(img, CropRect(0, 0, 200, 200)))  # same rectangle: a hit
    assert (cache.stats().hits, cache.stats().misses) == (1, 1)
    key_crop = cache.key(a.pixels, f"{eng.fingerprint}|{a.key}")
    key_plain = cache.key(a.pixels, eng.fingerprint)
    assert key_crop != key_plain  # the rectangle is part of the key
    eng.features(a.pixels)  # the same pixels as a whole image: its own entry
    assert cache.stats().misses == 2


def test_two_boxes_get_two_instances_at_the_right_places(scene):
    project, boxes = scene
    req = PropagateRequest.from_project(project)
    assert dict(req.target_boxes) == {"two.png": tuple(boxes)}
    [pred] = list(run_propagation(req, engine(), TaskState()))
    insts = pred.instances()
    assert [i.box for i in insts] == boxes
    for inst, (bx, by, _, _) in zip(insts, boxes):
        truth = OBJ_POINTS + (bx, by)
        assert inst.found.sum() >= 2
        err = np.linalg.norm(inst.points[inst.found] - truth[inst.found], axis=1)
        assert err.max() < 12, err  # each instance lands on its own copy
    apply_predictions(project, [pred])
    ann = project.annotation("two.png")
    assert len(ann.instances) == 2 and [i.bbox for i in ann.instances] == boxes
    assert all(i.ann_id is not None for i in ann.instances)  # kept from the drawn instances
    assert ann.instances[1].keypoints[0].origin == Origin.PREDICTED


def test_points_outside_the_target_crop_are_not_found(scene):
    project, boxes = scene
    # a third box on empty background, far from any cat: whatever is matched must lie in it
    project.add_instance("two.png", (300.0, 300.0, 60.0, 60.0))
    [pred] = list(run_propagation(PropagateRequest.from_project(project), engine(), TaskState()))
    third = pred.instances()[2]
    rect = CropRect.around(third.box, 640, 480, 0.15)
    assert rect.contains(third.points[third.found]).all()
    assert np.isnan(third.points[~third.found]).all()


def test_whole_image_transfer_with_crop_none_filters_by_box(scene):
    project, boxes = scene
    from dataclasses import replace

    project.set_settings(replace(project.settings, crop="none"))
    [pred] = list(run_propagation(PropagateRequest.from_project(project), engine(), TaskState()))
    insts = pred.instances()
    assert len(insts) == 2
    for inst in insts:
        rect = CropRect.around(inst.box, 640, 480, 0.15)
        assert rect.contains(inst.points[inst.found]).all()


def test_reference_instances_compete_per_keypoint(tmp_path):
    """Two reference instances, each labelling a different keypoint: the target gets both."""
    obj_h = _object().shape[0]
    Image.fromarray(_canvas([(40, 40), (400, 300)])).save(tmp_path / "ref.png")
    Image.fromarray(_canvas([(250, 150)])).save(tmp_path / "tgt.png")
    p = new_project(tmp_path, KeypointSchema("cat", ("a", "b", "c")))
    p.set_keypoint("ref.png", 0, Keypoint(*(OBJ_POINTS[0] + (40, 40)), Visibility.VISIBLE))
    p.set_keypoint("ref.png", 2, Keypoint(*(OBJ_POINTS[2] + (400, 300)), Visibility.VISIBLE),
                   instance=1)
    p.set_instance_box("ref.png", 0, (40.0, 40.0, float(SIDE), float(obj_h)))
    p.set_instance_box("ref.png", 1, (400.0, 300.0, float(SIDE), float(obj_h)))
    p.add_instance("tgt.png", (250.0, 150.0, float(SIDE), float(obj_h)))
    req = PropagateRequest.from_project(p)
    assert len(req.references) == 2
    [pred] = list(run_propagation(req, engine(), TaskState()))
    truth = OBJ_POINTS + (250, 150)
    assert pred.found[0] and pred.found[2]
    assert np.linalg.norm(pred.points[[0, 2]] - truth[[0, 2]], axis=1).max() < 12


def test_reference_without_box_uses_its_keypoints(scene):
    project, boxes = scene
    # the reference instance has no box: its keypoints' box plus margin is the crop
    assert project.annotation("ref.png").instances[0].bbox is None
    [pred] = list(run_propagation(PropagateRequest.from_project(project), engine(), TaskState()))
    assert all(i.found.sum() >= 2 for i in pred.instances())


def test_target_without_boxes_is_one_whole_image_instance(scene, tmp_path):
    project, _ = scene
    Image.fromarray(_canvas([(300, 200)])).save(tmp_path / "plain.png")
    project2 = new_project(tmp_path, project.schema)
    for k, kp in enumerate(project.annotation("ref.png").instances[0].keypoints):
        project2.set_keypoint("ref.png", k, kp)
    preds = list(run_propagation(
        PropagateRequest.from_project(project2, targets=["plain.png"]), engine(), TaskState()))
    assert len(preds[0].instances()) == 1 and preds[0].box is None
    ann = prediction_annotation(preds[0], 3)
    assert ann is not None and ann.instances[0].bbox is None


def test_repropagation_keeps_user_edited_instances_and_boxes(scene):
    project, boxes = scene
    run = lambda: list(run_propagation(  # noqa: E731
        PropagateRequest.from_project(project), engine(), TaskState()))
    apply_predictions(project, run())
    project.move_keypoint("two.png", 0, 401.0, 52.0, instance=1)  # corrected point
    moved = (95.0, 335.0, float(SIDE), boxes[1][3])
    project.set_instance_box("two.png", 0, moved)  # the user moved the first box
    project.add_instance("two.png")  # and added an instance without box, with a point
    project.set_keypoint("two.png", 1, Keypoint(10, 10, Visibility.VISIBLE), instance=2)
    apply_predictions(project, run())
    insts = project.annotation("two.png").instances
    assert len(insts) == 3
    assert insts[0].bbox == moved and insts[0].keypoints[0].origin == Origin.PREDICTED
    kp = insts[1].keypoints[0]
    assert (kp.x, kp.y, kp.origin) == (401.0, 52.0, Origin.REVIEWED)
    assert insts[2].keypoints[1].x == 10 and insts[2].bbox is None


def test_merge_drops_a_stale_whole_image_prediction_once_boxes_exist():
    k = 2
    stale = Instance(tuple(Keypoint(1, 1, Visibility.VISIBLE, Origin.PREDICTED, 0.5)
                           for _ in range(k)))
    boxed = Instance.empty(k).with_box((0, 0, 10, 10))
    old = ImageAnnotation((stale, boxed), ImageStatus.PREDICTED)
    pred = Prediction("x", np.ones((k, 2)), np.full(k, 0.9), np.ones(k, bool), np.zeros(k, bool),
                      box=(0.0, 0.0, 10.0, 10.0))
    merged = merge_prediction(old, prediction_annotation(pred, k))
    assert len(merged.instances) == 1 and merged.instances[0].bbox == (0, 0, 10, 10)
    assert merged.instances[0].keypoints[0].confidence == 0.9
    # a whole-image prediction arriving after the user drew a box changes nothing
    whole = Prediction("x", np.ones((k, 2)), np.full(k, 0.9), np.ones(k, bool), np.zeros(k, bool))
    assert merge_prediction(merged, prediction_annotation(whole, k)).instances == merged.instances


def test_instances_round_trip_through_the_project_file(scene, tmp_path):
    project, boxes = scene
    path = tmp_path / "p.kpproj.json"
    detected = Instance(Instance.empty(3).keypoints, boxes[0], box_score=0.4, ann_id=7)
    project.set_annotation("two.png", ImageAnnotation((detected,), ImageStatus.PREDICTED), "x")
    save_project(project, path)
    inst = load_project(path).annotation("two.png").instances[0]
    assert (inst.bbox, inst.box_score, inst.ann_id) == (boxes[0], 0.4, 7)


def test_worst_confidence_spans_instances_and_detected_boxes():
    from dataclasses import replace

    def inst(conf, score=None):
        kp = Keypoint(1, 1, Visibility.VISIBLE, Origin.PREDICTED, conf)
        return Instance((kp, kp), (0, 0, 5, 5) if score is not None else None, score)

    ann = ImageAnnotation((inst(0.9), inst(0.4), inst(0.8, score=0.6)), ImageStatus.PREDICTED)
    assert ann.worst_confidence() == 0.4  # the worst instance
    assert ann.worst_confidence() == 0.4  # cached, same answer
    better = replace(ann, instances=(ann.instances[0], ann.instances[2]))
    assert better.worst_confidence() == 0.6  # a detected box's score counts until accepted
    accepted = replace(better, instances=(better.instances[0],
                                          better.instances[1].with_box((0, 0, 5, 5))))
    assert accepted.worst_confidence() == 0.8
    assert accepted == replace(accepted)  # the cache is not part of equality


@pytest.mark.parametrize("fusion", ["copca", "concat"])
def test_crops_through_the_sd_dino_engine_on_tiny_models(scene, tmp_path, fusion):
    """The product engine (SD + DINOv2, tiny random weights, both fusions: per-pair PCA and
    the cached parts path) runs crops end to end: one instance per box, cache keyed by crop."""
    from tests.tiny_models import TINY, build_tiny_models

    project, boxes = scene
    sd, dino = build_tiny_models(tmp_path / "models")
    cache = FeatureCache(tmp_path / "cache")
    eng = Engine.from_pretrained(sd_model=str(sd), dino_model=str(dino),
                                 preset=TINY.replace(fusion=fusion), device="cpu",
                                 feature_cache=cache)
    req = PropagateRequest.from_project(project)
    [pred] = list(run_propagation(req, eng, TaskState()))
    insts = pred.instances()
    assert [i.box for i in insts] == boxes
    for inst in insts:
        rect = CropRect.around(inst.box, 640, 480, 0.15)
        assert rect.contains(inst.points[inst.found]).all()
        assert np.all((inst.confidence >= 0) & (inst.confidence <= 1))
    misses = cache.stats().misses
    list(run_propagation(req, eng, TaskState()))  # the same crops again: all from the cache
    assert cache.stats().misses == misses


def test_project_instance_edits_are_undoable_and_merge_drags(scene):
    project, boxes = scene
    assert project.next_annotation_id() == 3  # the two drawn boxes have ids 1 and 2
    with pytest.raises(IndexError, match="no instance 5"):
        project.delete_instance("two.png", 5)
    with pytest.raises(IndexError, match="no instance 2"):
        project.set_instance_box("two.png", 2, (0, 0, 1, 1))
    steps = len(project.history._done)
    for dx in (1.0, 2.0, 3.0):  # one drag
        project.set_instance_box("two.png", 0, (400.0 + dx, 50.0, 120.0, 80.0), drag_id=7)
    assert len(project.history._done) == steps + 1
    project.undo()
    assert project.annotation("two.png").instances[0].bbox == boxes[0]
    project.delete_instance("two.png", 0)
    assert [i.bbox for i in project.annotation("two.png").instances] == [boxes[1]]
    project.undo()
    assert [i.bbox for i in project.annotation("two.png").instances] == boxes
    with pytest.raises(ValueError, match="w, h > 0"):
        Instance(Instance.empty(3).keypoints, (0, 0, 0, 5))
    with pytest.raises(ValueError, match="needs a box"):
        Instance(Instance.empty(3).keypoints, None, 0.5)
