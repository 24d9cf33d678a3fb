"""Zero-shot box detection: a tiny random Owlv2ForObjectDetection saved to disk and loaded
through the product's loader, the detection job, and ``annotator detect`` end to end."""

import json

import numpy as np
import pytest
from PIL import Image

from annotator.cli import main
from annotator.domain import ImageStatus, Keypoint, KeypointSchema, Visibility
from annotator.features.detect import DetectParams, _nms, load_detector
from annotator.features.models import ModelLoadError
from annotator.io.project_file import new_project
from annotator.jobs.detect import (
    BoxResult,
    DetectRequest,
    apply_detections,
    run_detection,
)
from annotator.jobs.progress import Cancelled, TaskState
from tests.test_instances_propagate import OBJ_POINTS, _canvas
from tests.tiny_models import build_tiny_detector


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory):
    return build_tiny_detector(tmp_path_factory.mktemp("owl"))


def test_loader_and_detect_shapes(tiny_detector):
    det = load_detector(str(tiny_detector))
    img = _canvas([(60, 300)])
    out = det.detect(img, "cat", DetectParams(threshold=0.0, max_boxes=4))
    assert 1 <= len(out) <= 4 and out.boxes.shape == (len(out), 4)
    assert np.all(np.diff(out.scores) <= 0)  # best first
    assert np.all((out.scores >= 0) & (out.scores <= 1))
    x, y, w, h = out.boxes.T
    assert np.all(x >= 0) and np.all(y >= 0) and np.all(w >= 1) and np.all(h >= 1)
    assert np.all(x + w <= 640 + 1e-6) and np.all(y + h <= 480 + 1e-6)
    high = det.detect(img, "cat", DetectParams(threshold=float(out.scores[0]) + 1e-6))
    assert len(high) == 0  # the threshold is applied
    with pytest.raises(ValueError, match="prompt is empty"):
        det.detect(img, "  ")


def test_loader_errors_are_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_detector(str(tmp_path / "nope" / "x" / "y"))
    (tmp_path / "dino").mkdir()
    (tmp_path / "dino" / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(ModelLoadError, match="not an open-vocabulary detector"):
        load_detector(str(tmp_path / "dino"))


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], float)
    assert _nms(boxes, np.array([0.5, 0.9, 0.7]), 0.5).tolist() == [1, 2]


@pytest.fixture
def project(tmp_path):
    for name, offs in (("ref.png", [(60, 300)]), ("t1.png", [(400, 50), (90, 330)]),
                       ("t2.png", [(200, 100)])):
        Image.fromarray(_canvas(offs)).save(tmp_path / name)
    (tmp_path / "zz_broken.png").write_bytes(b"broken")
    p = new_project(tmp_path, KeypointSchema("cat", ("a", "b", "c")))
    for k, (x, y) in enumerate(OBJ_POINTS + (60, 300)):
        p.set_keypoint("ref.png", k, Keypoint(x, y, Visibility.VISIBLE))
    return p


def test_apply_detections_replaces_untouched_detections_and_keeps_user_boxes(project):
    req = DetectRequest.from_project(project)
    assert req.prompt == "cat" and "ref.png" not in req.targets
    res = BoxResult("t1.png", ((10.0, 10.0, 50.0, 50.0), (100.0, 100.0, 40.0, 40.0)),
                    (0.9, 0.4), (640, 480))
    assert apply_detections(project, [res, BoxResult("x", error="bad")]) == ["t1.png"]
    ann = project.annotation("t1.png")
    assert [i.box_score for i in ann.instances] == [0.9, 0.4]
    assert ann.status == ImageStatus.PREDICTED and ann.worst_confidence() == 0.4
    ids = [i.ann_id for i in ann.instances]
    assert len(set(ids)) == 2 and None not in ids
    project.set_instance_box("t1.png", 0, (12.0, 12.0, 50.0, 50.0))  # the user moved it
    again = BoxResult("t1.png", ((12.0, 12.0, 50.0, 51.0), (300.0, 300.0, 30.0, 30.0)),
                      (0.8, 0.7), (640, 480))
    apply_detections(project, [again])
    insts = project.annotation("t1.png").instances
    # the moved box stays (a user box), its duplicate is dropped, the old detection replaced
    assert [(i.bbox, i.box_score) for i in insts] == [
        ((12.0, 12.0, 50.0, 50.0), None), ((300.0, 300.0, 30.0, 30.0), 0.7)]
    project.undo()
    assert len(project.annotation("t1.png").instances) == 2
    project.set_status("ref.png", ImageStatus.REFERENCE)
    assert apply_detections(project, [BoxResult("ref.png", ((1.0, 1.0, 5.0, 5.0),), (0.9,),
                                                (640, 480))]) == []


def test_run_detection_progress_unreadable_and_cancel(project, tiny_detector):
    det = load_detector(str(tiny_detector))
    progress = []
    req = DetectRequest.from_project(project)
    out = list(run_detection(req, det, TaskState(progress.append)))
    assert [r.path for r in out] == ["t1.png", "t2.png", "zz_broken.png"]
    assert out[-1].error and progress[-1].done == 3
    state = TaskState()
    it = run_detection(req, det, state)
    next(it)
    state.cancel()
    with pytest.raises(Cancelled):
        next(it)


def test_detect_cli_end_to_end_then_propagate(project, tiny_detector, tmp_path, capsys):
    from annotator.io.coco import ExportChoice, ExportScope, write_coco

    with pytest.raises(SystemExit) as exc:
        main(["detect", "--help"])
    assert exc.value.code == 0 and "open-vocabulary" in capsys.readouterr().out
    src = tmp_path / "in.json"
    write_coco(project, src, ExportChoice(ExportScope.PREDICTIONS))  # targets too
    out = tmp_path / "boxes.json"
    args = ["detect", str(src), "--out", str(out), "--model", str(tiny_detector),
            "--threshold", "0.3", "--max-boxes", "3", "--device", "cpu"]
    assert main(args) == 0
    doc = json.loads(out.read_text())
    ids = {im["file_name"]: im["id"] for im in doc["images"]}
    per_image: dict[int, list] = {}
    for a in doc["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    assert len(per_image[ids["ref.png"]]) == 1  # the reference is not searched
    for name in ("t1.png", "t2.png"):
        anns = per_image[ids[name]]
        assert 1 <= len(anns) <= 3
        for a in anns:
            assert 0.3 <= a["bbox_score"] <= 1 and a["num_keypoints"] == 0
            assert a["bbox"][2] > 0 and a["bbox"][3] > 0
    from pycocotools.coco import COCO

    COCO(str(out))
    # the boxes are boxes to fill: propagate writes one annotation per box
    filled = tmp_path / "filled.json"
    assert main(["propagate", str(out), "--out", str(filled), "--extractor", "content",
                 "--preset", "fast", "--no-flip", "--no-soft-argmax", "--no-cache"]) == 0
    res = json.loads(filled.read_text())
    for name in ("t1.png", "t2.png"):
        got = [a for a in res["annotations"] if a["image_id"] == ids[name]]
        assert len(got) == len(per_image[ids[name]])
        assert [a["bbox"] for a in got] == [a["bbox"] for a in per_image[ids[name]]]
        assert all(all(s is not None for s in a["keypoint_scores"]) for a in got)
    bad = main(["detect", str(src), "--out", str(tmp_path / "x.json"), "--model",
                str(tmp_path / "missing" / "a" / "b")])
    assert bad == 2 and "does not exist" in capsys.readouterr().err
