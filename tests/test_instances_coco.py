"""COCO with several instances: one annotation per instance, stable ids, boxes to fill, and
``annotator propagate`` filling two boxes per target."""

import json

import numpy as np
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from annotator.cli import main
from annotator.domain import ImageStatus, Keypoint, KeypointSchema, Visibility
from annotator.io.coco import ExportChoice, ExportScope, export_coco, import_coco, write_coco
from annotator.io.project_file import new_project
from tests.builders import blank_images
from tests.test_instances_propagate import OBJ_POINTS, SIDE, _canvas, _object

# every image, boxes to fill included (the default export keeps reviewed/reference images only)
ALL = ExportChoice(ExportScope.PREDICTIONS)


def _project(tmp_path):
    blank_images(tmp_path, {"a.png": (200, 100), "b.png": (200, 100)})
    p = new_project(tmp_path, KeypointSchema("cat", ("x", "y")))
    p.set_keypoint("a.png", 0, Keypoint(10, 20, Visibility.VISIBLE))
    p.set_keypoint("a.png", 1, Keypoint(30, 40, Visibility.VISIBLE))
    i = p.add_instance("a.png", (100.0, 10.0, 50.0, 60.0))
    p.set_keypoint("a.png", 0, Keypoint(120, 30, Visibility.VISIBLE), instance=i)
    p.add_instance("b.png", (5.0, 5.0, 20.0, 30.0))  # a box to fill
    return p


def test_one_annotation_per_instance_with_boxes(tmp_path):
    doc = export_coco(_project(tmp_path), ALL)
    anns = doc["annotations"]
    assert [a["image_id"] for a in anns] == [1, 1, 2]
    assert anns[0]["bbox"] == [10, 20, 20, 20] and anns[0]["bbox_source"] == "keypoints"
    assert anns[1]["bbox"] == [100, 10, 50, 60] and anns[1]["bbox_source"] == "user"
    assert anns[2]["num_keypoints"] == 0 and anns[2]["keypoints"] == [0] * 6
    path = tmp_path / "out.json"
    path.write_text(json.dumps(doc))
    coco = COCO(str(path))
    assert len(coco.getAnnIds(imgIds=[1])) == 2


def test_ids_stable_across_exports_and_reimport(tmp_path):
    p = _project(tmp_path)
    first = [a["id"] for a in export_coco(p, ALL)["annotations"]]
    assert len(set(first)) == 3
    assert [a["id"] for a in export_coco(p, ALL)["annotations"]] == first
    path = tmp_path / "c.json"
    write_coco(p, path, ALL)
    back = import_coco(path)
    assert [a["id"] for a in export_coco(back, ALL)["annotations"]] == first
    # a new instance on the first image does not renumber the others
    back.add_instance("a.png", (1.0, 1.0, 5.0, 5.0))
    again = export_coco(back, ALL)["annotations"]
    assert [a["id"] for a in again if a["bbox"] != [1, 1, 5, 5]] == first
    assert len({a["id"] for a in again}) == 4


def test_import_keeps_instances_and_boxes_to_fill(tmp_path):
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(tmp_path / "a.png")
    doc = {
        "images": [{"id": 5, "file_name": "a.png", "width": 200, "height": 100}],
        "categories": [{"id": 1, "name": "cat", "keypoints": ["x", "y"], "skeleton": []}],
        "annotations": [
            # a detector's output: no keypoints field at all
            {"id": 11, "image_id": 5, "category_id": 1, "bbox": [10, 10, 40, 30],
             "score": 0.8},
            # CVAT-style: all v = 0
            {"id": 12, "image_id": 5, "category_id": 1, "bbox": [60, 10, 40, 30],
             "keypoints": [0, 0, 0, 0, 0, 0], "num_keypoints": 0},
        ],
    }
    path = tmp_path / "det.json"
    path.write_text(json.dumps(doc))
    p = import_coco(path)
    ann = p.annotation("a.png")
    assert [i.bbox for i in ann.instances] == [(10, 10, 40, 30), (60, 10, 40, 30)]
    assert [i.ann_id for i in ann.instances] == [11, 12]
    assert ann.status == ImageStatus.UNLABELLED  # still a target
    from annotator.jobs.propagate import PropagateRequest

    assert dict(PropagateRequest.from_project(p).target_boxes)["a.png"] == (
        (10, 10, 40, 30), (60, 10, 40, 30))


def test_detected_box_score_round_trips(tmp_path):
    from dataclasses import replace

    p = _project(tmp_path)
    ann = p.annotation("b.png")
    p.set_annotation("b.png", ann.with_instance(0, replace(ann.instances[0], box_score=0.3)), "d")
    path = tmp_path / "c.json"
    write_coco(p, path, ALL)
    assert json.loads(path.read_text())["annotations"][2]["bbox_score"] == 0.3
    assert import_coco(path).annotation("b.png").instances[0].box_score == 0.3


def test_cli_propagate_fills_two_boxes_per_target(tmp_path):
    obj_h = _object().shape[0]
    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(_canvas([(60, 300)])).save(root / "ref.png")
    Image.fromarray(_canvas([(400, 50), (90, 330)])).save(root / "t1.png")
    Image.fromarray(_canvas([(200, 100), (450, 320)])).save(root / "t2.png")
    Image.fromarray(_canvas([(250, 200)])).save(root / "t3.png")  # no box: whole image
    ref = [v for x, y in OBJ_POINTS + (60, 300) for v in (x, y, 2)]
    boxes = {2: [(400, 50), (90, 330)], 3: [(200, 100), (450, 320)]}
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "keypoints": ref, "num_keypoints": 3,
             "bbox": [60, 300, SIDE, obj_h], "area": SIDE * obj_h, "iscrowd": 0}]
    for image_id, offs in boxes.items():
        for x, y in offs:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1,
                         "bbox": [x, y, SIDE, obj_h], "area": SIDE * obj_h, "iscrowd": 0})
    names = ["ref.png", "t1.png", "t2.png", "t3.png"]
    doc = {"images": [{"id": i + 1, "file_name": n, "width": 640, "height": 480}
                      for i, n in enumerate(names)],
           "categories": [{"id": 1, "name": "cat", "keypoints": ["a", "b", "c"],
                           "skeleton": [[1, 2]]}],
           "annotations": anns}
    src = root / "in.json"
    src.write_text(json.dumps(doc))
    out = tmp_path / "out.json"
    args = ["propagate", str(src), "--out", str(out), "--extractor", "content", "--preset",
            "fast", "--no-flip", "--no-soft-argmax", "--no-cache"]
    assert main(args) == 0
    res = json.loads(out.read_text())
    by_image: dict[int, list] = {}
    for a in res["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    ids = {im["file_name"]: im["id"] for im in res["images"]}
    for name, offs in (("t1.png", boxes[2]), ("t2.png", boxes[3])):
        got = by_image[ids[name]]
        assert len(got) == 2
        assert [a["bbox"][:2] for a in got] == [list(o) for o in offs]
        for a, (x, y) in zip(got, offs):
            assert all(s is not None and 0 <= s <= 1 for s in a["keypoint_scores"]), a
            kps = np.array(a["keypoints"], float).reshape(-1, 3)
            seen = kps[:, 2] > 0
            assert seen.sum() >= 2
            truth = OBJ_POINTS + (x, y)
            assert np.linalg.norm(kps[seen, :2] - truth[seen], axis=1).max() < 12
    assert len(by_image[ids["t3.png"]]) == 1  # no box: one whole-image instance
    assert len({a["id"] for a in res["annotations"]}) == len(res["annotations"])
    gt = COCO(str(out))
    from annotator.io.coco import predictions_to_coco_results

    dt = gt.loadRes(predictions_to_coco_results(res))
    ev = COCOeval(gt, dt, "keypoints")
    ev.params.kpt_oks_sigmas = np.full(3, 0.05)
    ev.evaluate()
    ev.accumulate()
