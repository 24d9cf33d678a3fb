import copy
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from annotator.domain import (
    ImageAnnotation,
    ImageStatus,
    Instance,
    Keypoint,
    KeypointSchema,
    Origin,
    Project,
    Visibility,
)
from annotator.io.coco import (
    CocoFormatError,
    ExportChoice,
    ExportScope,
    coco_to_project,
    export_coco,
    import_coco,
    predictions_to_coco_results,
    write_coco,
    write_coco_text,
)
from annotator.io.templates import load_template
from tests.builders import blank_images, one_instance, predicted

RNG = np.random.default_rng(0)
ALL = ExportChoice(ExportScope.PREDICTIONS)


def random_project(tmp_path, schema: KeypointSchema, n_images: int = 4) -> Project:
    root = tmp_path / "imgs"
    root.mkdir(exist_ok=True)
    # sizes unknown to the project: the export reads them from the files
    images = blank_images(root, {f"dir/img{i}.png" if i % 2 else f"img{i}.png": (80, 60 + i)
                                 for i in range(n_images)})
    p = Project(str(root), images, schema)
    k = len(schema)
    for i, rec in enumerate(images[:-1]):  # last image stays unlabelled
        kps = []
        for j in range(k):
            v = Visibility(int(RNG.integers(0, 3))) if j else Visibility.VISIBLE
            if v:
                origin = Origin.PREDICTED if i == 1 else Origin.MANUAL
                conf = float(RNG.uniform()) if origin == Origin.PREDICTED else None
                kps.append(Keypoint(float(RNG.uniform(0, 79)), float(RNG.uniform(0, 59)), v,
                                    origin, conf))
            else:
                kps.append(Keypoint())
        status = ImageStatus.PREDICTED if i == 1 else ImageStatus.REFERENCE
        insts = [Instance(tuple(kps))]
        if i == 2:  # a second instance with a user box and a single point
            one = [Keypoint()] * k
            one[0] = Keypoint(5, 5, Visibility.VISIBLE)
            insts.append(Instance(tuple(one), bbox=(1, 2, 30, 20)))
            insts.append(Instance(tuple(one)))  # single point: box must still have area
        p.set_annotation(rec.path, ImageAnnotation(tuple(insts), status), "x")
    return p


def load_with_pycocotools(path) -> COCO:
    return COCO(str(path))


@pytest.mark.parametrize("template", ["person", "quadruped", "cat_face"])
def test_export_is_valid_coco_and_scores_ap_one(tmp_path, template):
    schema = load_template(template)
    p = random_project(tmp_path, schema)
    out = tmp_path / "gt.json"
    doc = write_coco(p, out, ALL)
    gt = load_with_pycocotools(out)
    assert len(gt.getImgIds()) == 4
    cat = gt.loadCats(1)[0]
    assert cat["keypoints"] == list(schema.keypoints)
    assert min(min(e) for e in cat["skeleton"]) >= 1  # 1-based
    assert max(max(e) for e in cat["skeleton"]) <= len(schema)
    for ann in doc["annotations"]:
        v = ann["keypoints"][2::3]
        assert ann["num_keypoints"] == sum(1 for x in v if x > 0)
        assert ann["area"] > 0 and ann["bbox"][2] > 0 and ann["bbox"][3] > 0
        assert len(ann["keypoints"]) == 3 * len(schema) and ann["id"] >= 1
    assert [a["id"] for a in doc["annotations"]] == list(range(1, len(doc["annotations"]) + 1))
    user_box = [a for a in doc["annotations"] if a["bbox"] == [1, 2, 30, 20]]
    assert user_box and user_box[0]["area"] == 600
    # a perfect prediction file scores AP 1.0 (sigmas of length K, K may differ from 17)
    dt = gt.loadRes(predictions_to_coco_results(doc))
    ev = COCOeval(gt, dt, "keypoints")
    ev.params.kpt_oks_sigmas = np.full(len(schema), 0.05)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    # and a shifted one does not
    shifted = predictions_to_coco_results(doc)
    for r in shifted:
        r["keypoints"] = [x + 15 if i % 3 != 2 else x for i, x in enumerate(r["keypoints"])]
    ev = COCOeval(gt, gt.loadRes(shifted), "keypoints")
    ev.params.kpt_oks_sigmas = np.full(len(schema), 0.05)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] < 0.5


def test_round_trip_export_import_export(tmp_path):
    p = random_project(tmp_path, load_template("quadruped"))
    out = tmp_path / "a.json"
    first = write_coco(p, out, ALL)
    q = import_coco(out, p.image_root)
    assert q.schema.keypoints == p.schema.keypoints
    assert q.schema.skeleton == p.schema.skeleton
    assert q.schema.flip_pairs == p.schema.flip_pairs
    second = export_coco(q, ALL)
    assert second == first
    assert q.annotation("dir/img1.png").status == ImageStatus.PREDICTED
    assert q.annotation("dir/img1.png").instances[0].keypoints[0].origin == Origin.PREDICTED


def test_imports_cvat_style_file(tmp_path):
    # CVAT "COCO Keypoints 1.0": several categories, one with keypoints, extra attributes
    doc = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {"contributor": "", "version": ""},
        "categories": [
            {"id": 1, "name": "cat", "supercategory": "",
             "keypoints": ["nose", "left_eye", "right_eye"], "skeleton": [[1, 2], [1, 3]]},
            {"id": 2, "name": "box", "supercategory": "", "keypoints": [], "skeleton": []},
        ],
        "images": [
            {"id": 1, "width": 640, "height": 480, "file_name": "frame_000.jpg", "license": 0,
             "flickr_url": "", "coco_url": "", "date_captured": 0},
            {"id": 2, "width": 640, "height": 480, "file_name": "frame_001.jpg", "license": 0,
             "flickr_url": "", "coco_url": "", "date_captured": 0},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [], "area": 100.0,
             "bbox": [10.0, 10.0, 10.0, 10.0], "iscrowd": 0,
             "attributes": {"occluded": False}, "keypoints": [12, 13, 2, 15, 11, 1, 0, 0, 0],
             "num_keypoints": 2},
            {"id": 2, "image_id": 2, "category_id": 2, "segmentation": [], "area": 4.0,
             "bbox": [1, 1, 2, 2], "iscrowd": 0},
        ],
    }
    path = tmp_path / "cvat.json"
    path.write_text(json.dumps(doc))
    p = import_coco(path)
    assert p.schema.name == "cat" and p.schema.skeleton == ((0, 1), (0, 2))
    assert p.schema.flip_pairs == ((1, 2),)
    kps = p.annotation("frame_000.jpg").instances[0].keypoints
    assert (kps[0].x, kps[0].y, kps[0].v) == (12, 13, Visibility.VISIBLE)
    assert kps[1].v == Visibility.OCCLUDED and not kps[2].labelled
    assert p.annotation("frame_000.jpg").status == ImageStatus.REFERENCE
    assert p.annotation("frame_001.jpg") == ImageAnnotation()
    assert p.image("frame_000.jpg").width == 640


def base_doc() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10},
                   {"id": 2, "file_name": "b.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                         "keypoints": [1, 2, 2, 3, 4, 1], "bbox": [1, 2, 3, 3]}],
        "categories": [{"id": 1, "name": "x", "keypoints": ["a", "b"], "skeleton": [[1, 2]]}],
    }


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("images"), "missing field 'images'"),
        (lambda d: d["annotations"][0].pop("image_id"),
         "annotation id 1: missing field 'image_id'"),
        (lambda d: d["annotations"][0].update(keypoints=[1, 2, 2]), "3 keypoint numbers"),
        (lambda d: d["annotations"][0]["keypoints"].__setitem__(3, "x"),
         "keypoint 1 x: 'x' is not a number"),
        (lambda d: d["annotations"][0].update(image_id=9), "unknown image_id 9"),
        (lambda d: d["annotations"].append(copy.deepcopy(d["annotations"][0])),
         "duplicate annotation id 1"),
        (lambda d: d["images"][1].update(id=1), r"images\[1\]: duplicate image id 1"),
        (lambda d: d["images"][0].update(file_name="/etc/passwd"), "absolute"),
        (lambda d: d["images"][0].update(file_name="../../x.jpg"), "escapes"),
        (lambda d: d["annotations"][0]["keypoints"].__setitem__(2, 7), "visibility 7"),
        (lambda d: d["categories"][0].update(skeleton=[[0, 1]]), "1-based"),
        (lambda d: d["categories"][0].update(keypoints=[]), "no category defines keypoints"),
        (lambda d: d["annotations"][0].update(category_id=5), "unknown category_id 5"),
        (lambda d: d["categories"].append(dict(d["categories"][0], name="y")),
         r"categories\[1\]: duplicate category id 1"),
    ],
)
def test_malformed_input_names_the_entry(tmp_path, mutate, message):
    doc = base_doc()
    coco_to_project(copy.deepcopy(doc), tmp_path)  # the base is valid
    mutate(doc)
    with pytest.raises(CocoFormatError, match=message):
        coco_to_project(doc, tmp_path, "f.json")


def test_bad_json_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(CocoFormatError, match="x.json: not valid JSON"):
        import_coco(path)


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True),
    st.text(max_size=4), st.just("../a.jpg"), st.just("/abs.jpg"),
)
json_value = st.recursive(
    json_leaf,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids,
                                                                       max_size=3)),
    max_leaves=8,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_coco_only_raises_coco_errors(data):
    doc = base_doc()
    paths = [p for p in _paths(doc) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "delete"]))
        try:
            if action == "delete" and isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent[path[-1]] = data.draw(json_value)
        except (KeyError, IndexError, TypeError):
            pass
        paths = [p for p in _paths(doc) if p]
    try:
        project = coco_to_project(doc, "/images")
    except CocoFormatError:
        return
    assert isinstance(project, Project)


def test_a_sliver_user_box_still_exports_a_positive_area(tmp_path):
    doc = base_doc()
    doc["annotations"][0]["bbox"] = [5, 5, 0.004, 8]
    p = coco_to_project(doc, tmp_path)
    out = export_coco(p)
    assert out["annotations"][0]["bbox"][2] >= 1 and out["annotations"][0]["area"] > 0


def test_export_choices_leave_unreviewed_predictions_out_by_default(tmp_path):
    """Issue 9, defect 6: predictions nobody reviewed are not exported as visible labels."""
    schema = KeypointSchema("face", ("a", "b", "c"))
    root = tmp_path / "imgs"
    names = ("ref.png", "rev.png", "pred.png", "todo.png")
    p = Project(str(root), blank_images(root, dict.fromkeys(names, (50, 40))), schema)
    manual = Keypoint(10, 10, Visibility.VISIBLE)
    p.set_annotation("ref.png", one_instance((manual,) * 3, ImageStatus.REFERENCE), "x")
    p.set_annotation("rev.png", one_instance((manual,) * 3, ImageStatus.REVIEWED), "x")
    hi = predicted(20, 20, 0.9)
    lo = Keypoint(30, 30, Visibility.VISIBLE, Origin.PREDICTED, 0.1)
    p.set_annotation("pred.png", ImageAnnotation((Instance((hi, lo, hi)),),
                                                 ImageStatus.PREDICTED), "x")

    def files(doc):  # noqa: ANN001, ANN202
        return [im["file_name"] for im in doc["images"]]

    default = export_coco(p)
    assert files(default) == ["ref.png", "rev.png"]  # no image listed without its labels
    assert len(default["annotations"]) == 2
    assert default["info"]["annotator_export"]["scope"] == "reviewed"

    everything = export_coco(p, ExportChoice(ExportScope.PREDICTIONS))
    assert files(everything) == ["ref.png", "rev.png", "pred.png", "todo.png"]
    pred = everything["annotations"][2]
    assert pred["keypoints"][2::3] == [2, 2, 2] and pred["num_keypoints"] == 3
    assert everything["info"]["annotator_export"]["scope"] == "predictions"

    confident = export_coco(p, ExportChoice(ExportScope.CONFIDENT, 0.5))
    pred = confident["annotations"][2]
    assert pred["keypoints"][2::3] == [2, 0, 2] and pred["num_keypoints"] == 2
    assert pred["keypoint_scores"] == [0.9, 0.1, 0.9]  # the score of the dropped point stays
    info = confident["info"]["annotator_export"]
    assert info["scope"] == "confident" and info["min_confidence"] == 0.5
    assert "0.5" in info["description"]
    with pytest.raises(ValueError, match="min_confidence"):
        ExportChoice(ExportScope.CONFIDENT, 1.5)

    # rendered entry by entry (the GUI's background export), the file is the same bytes
    out, streamed = tmp_path / "out.json", tmp_path / "streamed.json"
    for choice in (ExportChoice(), ExportChoice(ExportScope.CONFIDENT, 0.5)):
        doc = write_coco(p, out, choice)
        assert write_coco_text(p, streamed, choice) == (len(doc["images"]),
                                                         len(doc["annotations"]))
        assert streamed.read_text() == out.read_text() == json.dumps(doc)


def test_cli_export_states_its_choice(tmp_path, capsys):
    from annotator.cli import main
    from annotator.io.project_file import save_project

    schema = KeypointSchema("face", ("a", "b"))
    root = tmp_path / "imgs"
    p = Project(str(root), blank_images(root, dict.fromkeys(("ref.png", "pred.png"), (50, 40))),
                schema)
    p.set_keypoint("ref.png", 0, Keypoint(5, 5, Visibility.VISIBLE))
    kp = predicted(9, 9, 0.3)
    p.set_annotation("pred.png", one_instance((kp, kp), ImageStatus.PREDICTED), "x")
    project_file = tmp_path / "p.kpproj.json"
    save_project(p, project_file)
    out = tmp_path / "out.json"
    assert main(["export", str(project_file), "--out", str(out)]) == 0
    assert "reviewed and reference images only" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert [im["file_name"] for im in doc["images"]] == ["ref.png"]
    assert main(["export", str(project_file), "--out", str(out), "--include", "confident",
                 "--min-confidence", "0.2"]) == 0
    doc = json.loads(out.read_text())
    assert doc["info"]["annotator_export"] == {
        "scope": "confident", "min_confidence": 0.2,
        "description": ExportChoice(ExportScope.CONFIDENT, 0.2).describe(),
    }
    assert doc["annotations"][1]["keypoints"][2::3] == [2, 2]
    with pytest.raises(SystemExit, match="only with --include confident"):
        main(["export", str(project_file), "--out", str(out), "--min-confidence", "0.2"])


def test_streamed_export_is_the_rendered_document_for_every_kind_of_content(tmp_path):
    """The background export writes the file entry by entry (images as they are made, the
    annotations spilled and copied after them): the same bytes as one json.dumps of the
    document, for every scope, readable by pycocotools; a cancel leaves the old file and no
    temporary file behind."""
    from annotator.io.coco import render_coco
    from annotator.jobs.progress import Cancelled
    from tests.test_io_store import rich_project

    p = rich_project(tmp_path)
    blank_images(tmp_path, {"reviewed.png": (30, 20)})  # its size is read from the file
    out = tmp_path / "out" / "coco.json"
    for choice in (ExportChoice(), ExportChoice(ExportScope.PREDICTIONS),
                   ExportChoice(ExportScope.CONFIDENT, 0.5)):
        doc = export_coco(p, choice)
        names: list[str] = []
        counts = write_coco_text(p, out, choice, file_names=names)
        assert counts == (len(doc["images"]), len(doc["annotations"])) and counts[1] >= 2
        assert out.read_bytes() == json.dumps(doc).encode("ascii")  # the previous rendering
        assert json.loads(out.read_text()) == doc
        assert render_coco(p, choice) == (json.dumps(doc), *counts)
        assert names == [im["file_name"] for im in doc["images"]]
        coco = COCO(str(out))
        assert len(coco.getAnnIds()) == counts[1] and len(coco.getImgIds()) == counts[0]
    assert "sub/prédit.png" in names  # non-ASCII names escaped as json.dumps does
    assert sorted(f.name for f in out.parent.iterdir()) == ["coco.json"]

    before = out.read_bytes()
    calls = []

    def cancel_late(done: int, total: int) -> None:
        calls.append(done)
        if done == total:
            raise Cancelled()

    with pytest.raises(Cancelled):
        write_coco_text(p, out, ExportChoice(ExportScope.PREDICTIONS), cancel_late)
    assert len(calls) >= 2 and out.read_bytes() == before
    assert sorted(f.name for f in out.parent.iterdir()) == ["coco.json"]
    def frames_fail() -> None:
        raise ValueError("frames")

    with pytest.raises(ValueError, match="frames"):  # an error before the rename
        write_coco_text(p, out, before_rename=frames_fail)
    assert out.read_bytes() == before
    assert sorted(f.name for f in out.parent.iterdir()) == ["coco.json"]
