"""Interchange formats: round trips per format, the documented losses, the YOLO pose and
DLC layouts read back by sleap-io, and clear errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from annotator.cli import main as cli_main
from annotator.domain.annotation import ImageAnnotation, ImageStatus, Keypoint, Origin, Visibility
from annotator.domain.project import ImageRecord, Project
from annotator.domain.schema import KeypointSchema
from annotator.io.formats import (
    ExportOptions,
    FormatError,
    detect_format,
    export_project,
    import_dataset,
)
from tests.builders import annotation, blank_images, one_instance, predicted

V, O = Visibility.VISIBLE, Visibility.OCCLUDED  # noqa: E741
MISSING = Keypoint()
# the flip pair (1, 2) cannot be guessed from the names: only formats that store partners
# (YOLO flip_idx, SLEAP symmetries) keep it
SCHEMA = KeypointSchema("cat", ("nose", "ear_a", "ear_b", "tail"), ((0, 1), (0, 2), (0, 3)),
                        ((1, 2),))
SIZES = {"a.png": (80, 60), "sub/b.png": (120, 90), "c.jpg": (64, 48), "d.png": (50, 40),
         "e.png": (50, 40)}

# image -> [(keypoints as (x, y, v) or None, user box or None)]
LABELS = {
    "a.png": [
        ([(10.5, 20.25, V), (12.0, 22.0, O), None, (30.0, 40.0, V)], None),
        ([(50.0, 30.0, V), None, (55.125, 35.5, O), (60.0, 50.0, V)], (45.0, 25.0, 30.0, 30.0)),
    ],
    "sub/b.png": [
        ([(100.0, 80.0, V), (90.0, 70.0, V), (95.0, 71.0, V), None], None),
        ([None, (5.0, 6.0, O), (7.0, 8.0, O), (9.0, 10.0, V)], None),
        ([(0.0, 0.0, V), None, None, None], None),  # a point at the corner
    ],
}


def kp(spec):
    return MISSING if spec is None else Keypoint(spec[0], spec[1], spec[2])


@pytest.fixture
def project(tmp_path) -> Project:
    root = tmp_path / "imgs"
    p = Project(str(root), blank_images(root, SIZES, 90), SCHEMA)
    for name, status, what in (("a.png", ImageStatus.REVIEWED, "a"),
                               ("sub/b.png", ImageStatus.REFERENCE, "b")):
        labels = LABELS[name]
        p.set_annotation(name, annotation([[kp(s) for s in kps] for kps, _ in labels], status,
                                          [box for _, box in labels]), what)
    # c.jpg: unreviewed predictions, one confident, one not
    pred = (predicted(20, 20, 0.9), predicted(30, 30, 0.2), MISSING, MISSING)
    p.set_annotation("c.jpg", one_instance(pred, ImageStatus.PREDICTED), "c")
    # d.png: reviewed, nothing in it; e.png: never looked at
    p.set_annotation("d.png", ImageAnnotation((), ImageStatus.REVIEWED), "d")
    return p


def by_name(project: Project) -> dict[str, ImageAnnotation]:
    """Annotations keyed by file name (exports that copy images change their folders)."""
    return {Path(r.path).name: project.annotation(r.path) for r in project.images}


def triples(inst):
    return [None if not k.labelled else (k.x, k.y, k.v) for k in inst.keypoints]


def assert_same_points(got, spec, tol: float, occluded_as=O):
    want = [None if s is None else (s[0], s[1], occluded_as if s[2] == O else s[2])
            for s in spec]
    have = triples(got)
    assert [None if t is None else t[2] for t in have] == [
        None if t is None else t[2] for t in want]
    for h, w in zip(have, want):
        if w is not None:
            assert h[0] == pytest.approx(w[0], abs=tol) and h[1] == pytest.approx(w[1], abs=tol)


OUT = {"yolo-pose": "ds", "dlc": "dlc", "sleap": "out.slp", "label-studio": "ls.json",
       "coco": "coco.json"}


def video_file(lf) -> str:
    """File name of a sleap-io frame's image (its video may be an image list)."""
    f = lf.video.filename
    return Path(f[lf.frame_idx] if isinstance(f, list) else f).name


def roundtrip(project, tmp_path, fmt, options=None):
    out = tmp_path / OUT[fmt]
    report = export_project(project, fmt, out, options or ExportOptions())
    kw = {"image_root": project.image_root} if fmt in ("coco", "label-studio") else {}
    return report, import_dataset(out, **kw)


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", ["yolo-pose", "dlc", "sleap", "label-studio", "coco"])
def test_roundtrip_keeps_keypoints_visibility_and_instances(project, tmp_path, fmt):
    report, back = roundtrip(project, tmp_path, fmt)
    got = by_name(back)
    if fmt != "coco":  # reviewed and reference images only; the empty reviewed one too
        assert sorted(got) == ["a.png", "b.png", "d.png"]
        assert report.images == 3 and report.instances == 5
    assert list(back.schema.keypoints) == list(SCHEMA.keypoints)
    # precision of each format: YOLO 6 decimals of the normalised value, DLC 3 decimals
    tol = {"yolo-pose": 1e-6 * 120, "dlc": 1e-3, "coco": 1e-2}.get(fmt, 1e-9)
    occluded_as = V if fmt == "dlc" else O  # DLC has no occluded flag: documented loss
    for name, key in (("a.png", "a.png"), ("b.png", "sub/b.png")):
        insts = got[name].instances
        assert len(insts) == len(LABELS[key])
        for inst, (spec, _box) in zip(insts, LABELS[key]):
            assert_same_points(inst, spec, tol, occluded_as)
    assert got["d.png"].instances == ()
    if fmt != "coco":  # labelled by another tool: references; listed and empty: reviewed
        assert [got[n].status for n in ("a.png", "b.png", "d.png")] == [
            ImageStatus.REFERENCE, ImageStatus.REFERENCE, ImageStatus.REVIEWED]


@pytest.mark.parametrize("fmt,edges,pairs", [
    ("yolo-pose", SCHEMA.skeleton, ((1, 2),)),
    ("sleap", SCHEMA.skeleton, ((1, 2),)),
    ("dlc", SCHEMA.skeleton, ()),  # DLC stores no partners: inferred from names on import
    ("label-studio", (), ()),  # Label Studio stores neither edges nor partners
])
def test_roundtrip_skeleton_and_partners(project, tmp_path, fmt, edges, pairs):
    _, back = roundtrip(project, tmp_path, fmt)
    assert back.schema.skeleton == edges
    assert back.schema.flip_pairs == pairs


def test_partners_named_left_right_come_back_in_every_format(project, tmp_path):
    schema = KeypointSchema("cat", ("nose", "left_ear", "right_ear", "tail"), SCHEMA.skeleton,
                            ((1, 2),))
    project.set_schema(schema)
    for fmt in ("dlc", "label-studio"):
        _, back = roundtrip(project, tmp_path / fmt, fmt)
        assert back.schema.flip_pairs == ((1, 2),)


@pytest.mark.parametrize("fmt", ["yolo-pose", "label-studio"])
def test_user_boxes_kept_where_the_format_has_boxes(project, tmp_path, fmt):
    _, back = roundtrip(project, tmp_path, fmt)
    a = by_name(back)["a.png"].instances
    assert a[0].bbox is None  # derived from the keypoints on export: not a user box
    assert a[1].bbox == pytest.approx((45.0, 25.0, 30.0, 30.0), abs=1e-4)


def test_predictions_left_out_by_default_and_filtered_by_confidence(project, tmp_path):
    _, back = roundtrip(project, tmp_path / "1", "yolo-pose")
    assert "c.jpg" not in by_name(back)
    opts = ExportOptions(include_predictions=True, min_confidence=0.5)
    _, back = roundtrip(project, tmp_path / "2", "yolo-pose", opts)
    (inst,) = by_name(back)["c.jpg"].instances
    assert triples(inst)[1:] == [None, None, None]  # the 0.2 prediction is written as missing
    assert triples(inst)[0] == pytest.approx((20.0, 20.0, V), abs=1e-4)


def test_sleap_keeps_predictions_as_predicted_instances(project, tmp_path):
    _, back = roundtrip(project, tmp_path, "sleap", ExportOptions(include_predictions=True))
    ann = by_name(back)["c.jpg"]
    assert ann.status == ImageStatus.PREDICTED
    k0, k1 = ann.instances[0].keypoints[:2]
    assert (k0.origin, k0.confidence, k1.confidence) == (Origin.PREDICTED, 0.9, 0.2)
    assert by_name(back)["a.png"].instances[0].keypoints[0].origin == Origin.MANUAL


# -------------------------------------------------------------------- YOLO pose
def test_yolo_pose_layout_is_train_ready(project, tmp_path):
    out = tmp_path / "ds"
    export_project(project, "yolo-pose", out)
    doc = yaml.safe_load((out / "data.yaml").read_text())
    assert doc["kpt_shape"] == [4, 3]
    assert doc["flip_idx"] == [0, 2, 1, 3]
    assert doc["names"] == {0: "cat"}
    assert doc["train"] == doc["val"] == "./images/train"
    assert doc["path"] == str(out.resolve())  # Ultralytics resolves a relative path elsewhere
    assert (out / "images/train/sub/b.png").is_file()
    assert (out / "labels/train/sub/b.txt").is_file()
    assert (out / "labels/train/d.txt").read_text() == ""  # reviewed, nothing to label
    assert not (out / "images/train/e.png").exists()  # never labelled: not a negative
    first = (out / "labels/train/a.txt").read_text().splitlines()[0].split()
    # instance 1 of a.png (80 x 60): box = keypoint bounds x 10.5..30, y 20.25..40
    assert first[:5] == ["0", f"{20.25 / 80:.6f}", f"{30.125 / 60:.6f}", f"{19.5 / 80:.6f}",
                         f"{19.75 / 60:.6f}"]
    assert first[5:] == [f"{10.5 / 80:.6f}", f"{20.25 / 60:.6f}", "2",
                         f"{12 / 80:.6f}", f"{22 / 60:.6f}", "1", "0", "0", "0",
                         f"{30 / 80:.6f}", f"{40 / 60:.6f}", "2"]


def test_yolo_pose_export_reads_back_with_sleap_io(project, tmp_path):
    sio = pytest.importorskip("sleap_io")
    out = tmp_path / "ds"
    project.set_annotation("sub/b.png", ImageAnnotation(), "flat images only")  # sleap-io
    export_project(project, "yolo-pose", out)  # reads one folder level
    labels = sio.load_ultralytics(str(out))
    sk = labels.skeletons[0]
    assert [n.name for n in sk.nodes] == list(SCHEMA.keypoints)
    assert [(e.source.name, e.destination.name) for e in sk.edges] == [
        ("nose", "ear_a"), ("nose", "ear_b"), ("nose", "tail")]
    frames = {video_file(lf): lf for lf in labels}
    assert sorted(frames) == ["a.png", "d.png"]
    got = [inst.numpy() for inst in frames["a.png"].instances]
    for pts, (spec, _) in zip(got, LABELS["a.png"]):
        for (x, y), s in zip(pts, spec):
            if s is None:
                assert np.isnan(x) and np.isnan(y)
            else:
                assert (x, y) == pytest.approx(s[:2], abs=1e-4)


def test_yolo_pose_dataset_still_reads_after_moving(project, tmp_path):
    export_project(project, "yolo-pose", tmp_path / "ds")
    (tmp_path / "ds").rename(tmp_path / "moved")
    back = import_dataset(tmp_path / "moved")
    assert Path(back.image_root) == (tmp_path / "moved").resolve()
    assert sorted(by_name(back)) == ["a.png", "b.png", "d.png"]


def test_yolo_pose_val_split(project, tmp_path):
    out = tmp_path / "ds"
    export_project(project, "yolo-pose", out, ExportOptions(val_fraction=0.5))
    doc = yaml.safe_load((out / "data.yaml").read_text())
    assert doc["val"] == "./images/val"
    train = {p.name for p in (out / "images/train").rglob("*.png")}
    val = {p.name for p in (out / "images/val").rglob("*.png")}
    assert val and train and not (train & val) and train | val == {"a.png", "b.png", "d.png"}
    back = import_dataset(out)
    assert sorted(by_name(back)) == ["a.png", "b.png", "d.png"]


def test_yolo_pose_refuses_a_folder_with_files(project, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FormatError, match="must be new or empty"):
        export_project(project, "yolo-pose", out)
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("fmt", ["yolo-pose", "dlc"])
def test_failed_folder_export_leaves_nothing_behind(project, tmp_path, fmt):
    project.set_image_size("sub/b.png", 120, 90)  # size known: the copy is what fails
    (Path(project.image_root) / "sub/b.png").unlink()  # a labelled image is gone
    out = tmp_path / "out"
    with pytest.raises(FormatError, match=r"cannot copy image .*b\.png"):
        export_project(project, fmt, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]  # no partial dataset
    (Path(project.image_root) / "e.png").rename(Path(project.image_root) / "sub/b.png")
    export_project(project, fmt, out)  # fixed: the same target works
    assert out.is_dir()


def test_yolo_pose_clips_points_outside_the_image(tmp_path):
    root = tmp_path / "imgs"
    p = Project(str(root), blank_images(root, {"x.png": (20, 10)}),
                KeypointSchema("o", ("p", "q")))
    p.set_annotation("x.png", one_instance((Keypoint(25.0, 5.0, V), Keypoint(2.0, 3.0, V)),
                                           ImageStatus.REVIEWED), "x")
    report = export_project(p, "yolo-pose", tmp_path / "ds")
    assert any("1 keypoint(s) outside" in n for n in report.notes)
    values = [float(v) for v in (tmp_path / "ds/labels/train/x.txt").read_text().split()]
    coords = values[1:5] + values[5:7] + values[8:10]
    assert max(coords) <= 1.0 and min(coords) >= 0.0
    assert values[5:8] == [1.0, 0.5, 2.0]  # x 25 of a 20 px wide image: on the border


def _yolo_dataset(tmp_path, line: str, extra: dict | None = None) -> Path:
    ds = tmp_path / "y"
    (ds / "images/train").mkdir(parents=True)
    (ds / "labels/train").mkdir(parents=True)
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(ds / "images/train/x.png")
    (ds / "labels/train/x.txt").write_text(line)
    doc = {"train": "images/train", "val": "images/train", "kpt_shape": [2, 3],
           "names": {0: "thing"}, **(extra or {})}
    (ds / "data.yaml").write_text(yaml.safe_dump(doc))
    return ds


def test_yolo_pose_reads_a_foreign_dataset(tmp_path):
    ds = _yolo_dataset(tmp_path, "0 0.5 0.5 1 1 0.25 0.5 2 0.5 0.5 1\n",
                       {"flip_idx": [1, 0]})
    p = import_dataset(ds / "data.yaml")
    assert p.schema.keypoints == ("kp0", "kp1") and p.schema.flip_pairs == ((0, 1),)
    (inst,) = p.annotation("images/train/x.png").instances
    assert triples(inst) == [(5.0, 5.0, V), (10.0, 5.0, O)]
    assert inst.bbox == (0.0, 0.0, 20.0, 10.0)  # not the keypoints' box: a user box


def test_yolo_pose_reads_the_roboflow_layout(tmp_path):
    ds = tmp_path / "rf"
    for split in ("train", "valid"):
        (ds / split / "images").mkdir(parents=True)
        (ds / split / "labels").mkdir(parents=True)
        Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(ds / split / "images/x.jpg")
        (ds / split / "labels/x.txt").write_text("0 0.5 0.5 1 1 0.5 0.5 2\n")
    (ds / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\nkpt_shape: [1, 3]\nnames: ['pig']\n")
    p = import_dataset(ds)
    assert sorted(r.path for r in p.images) == ["train/images/x.jpg", "valid/images/x.jpg"]
    assert p.schema.name == "pig"
    assert triples(p.annotation("valid/images/x.jpg").instances[0]) == [(10.0, 5.0, V)]


@pytest.mark.parametrize("line,extra,message", [
    ("0 0.5 0.5 1 1 0.25 0.5 2\n", None, r"x\.txt, line 1: 8 values, expected 5 \+ 2 x 3"),
    ("0 0.5 0.5 1 1 0.25 0.5 3 0.5 0.5 1\n", None, "visibility 3.0 is not 0, 1 or 2"),
    ("0 0.5 0.5 1 1 0.25 abc 2 0.5 0.5 1\n", None, r"x\.txt, line 1: could not convert"),
    ("", {"flip_idx": [1, 1]}, r"flip_idx \[1, 1\] is not a pairing"),
    ("", {"kpt_shape": None}, "is this a pose dataset"),
])
def test_yolo_pose_malformed_input_names_file_and_problem(tmp_path, line, extra, message):
    ds = _yolo_dataset(tmp_path, line, extra)
    with pytest.raises(FormatError, match=message):
        import_dataset(ds)


# ----------------------------------------------------------------------- DLC
def test_dlc_layout_and_documented_occlusion_loss(project, tmp_path):
    out = tmp_path / "dlc"
    report = export_project(project, "dlc", out)
    assert any("4 occluded keypoint(s) written as labelled" in n for n in report.notes)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["multianimalproject"] is True
    assert cfg["individuals"] == ["animal1", "animal2", "animal3"]
    assert cfg["multianimalbodyparts"] == list(SCHEMA.keypoints)
    assert cfg["skeleton"] == [["nose", "ear_a"], ["nose", "ear_b"], ["nose", "tail"]]
    rows = (out / "labeled-data/images/CollectedData_annotator.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[:4]] == ["scorer", "individuals", "bodyparts", "coords"]
    a = rows[4].split(",")
    assert a[:3] == ["labeled-data", "images", "a.png"]
    assert a[3:11] == ["10.5", "20.25", "12.0", "22.0", "", "", "30.0", "40.0"]
    assert (out / "labeled-data/sub/b.png").is_file()

    dropped = export_project(project, "dlc", tmp_path / "dlc2", ExportOptions(drop_occluded=True))
    assert any("4 occluded keypoint(s) left out" in n for n in dropped.notes)
    back = by_name(import_dataset(tmp_path / "dlc2"))
    assert triples(back["a.png"].instances[0])[1] is None
    assert triples(back["a.png"].instances[1])[2] is None


def test_dlc_export_reads_back_with_sleap_io(project, tmp_path):
    sio = pytest.importorskip("sleap_io")
    out = tmp_path / "dlc"
    export_project(project, "dlc", out)
    labels = sio.load_dlc_project(str(out / "config.yaml"))
    frames = {video_file(lf): lf for lf in labels}
    assert set(frames) >= {"a.png", "b.png"}
    names = [n.name for n in labels.skeletons[0].nodes]
    assert sorted(names) == sorted(SCHEMA.keypoints)
    for inst, (spec, _) in zip(frames["b.png"].instances, LABELS["sub/b.png"]):
        pts = inst.numpy()
        for name, s in zip(SCHEMA.keypoints, spec):
            x, y = pts[names.index(name)]
            if s is None:
                assert np.isnan(x)
            else:
                assert (x, y) == pytest.approx(s[:2], abs=1e-3)


def test_dlc_single_animal_csv_and_errors(tmp_path):
    csv_path = tmp_path / "labeled-data/vid/CollectedData_me.csv"
    csv_path.parent.mkdir(parents=True)
    csv_path.write_text("scorer,me,me,me,me\nbodyparts,head,head,tail,tail\n"
                        "coords,x,y,x,y\nlabeled-data/vid/img1.png,1.5,2.5,,\n")
    p = import_dataset(csv_path)
    assert p.schema.keypoints == ("head", "tail")
    assert triples(p.annotation("labeled-data/vid/img1.png").instances[0]) == [
        (1.5, 2.5, V), None]
    csv_path.write_text("bodyparts,head\n")
    with pytest.raises(FormatError, match=r"CollectedData_me\.csv: not a DeepLabCut CSV"):
        import_dataset(csv_path)
    csv_path.write_text("scorer,me,me\nbodyparts,head,head\ncoords,x,y\nimg.png,1.5,oops\n")
    with pytest.raises(FormatError, match=r"line 4: 'oops' is not a number"):
        import_dataset(csv_path)


def test_dlc_machine_labels_come_back_as_predictions(tmp_path):
    csv_path = tmp_path / "machinelabels.csv"
    csv_path.write_text("scorer,net,net,net\nbodyparts,head,head,head\n"
                        "coords,x,y,likelihood\nimg1.png,1.5,2.5,0.75\n")
    ann = import_dataset(csv_path).annotation("img1.png")
    (kp,) = ann.instances[0].keypoints
    assert (kp.x, kp.y, kp.v, kp.origin, kp.confidence) == (1.5, 2.5, V, Origin.PREDICTED, 0.75)
    assert ann.status == ImageStatus.PREDICTED  # not a reference for propagation


# -------------------------------------------------------------------- SLEAP
def test_sleap_file_is_a_real_slp(project, tmp_path):
    sio = pytest.importorskip("sleap_io")
    export_project(project, "sleap", tmp_path / "out.slp")
    labels = sio.load_slp(str(tmp_path / "out.slp"), open_videos=False)
    sk = labels.skeletons[0]
    assert [n.name for n in sk.nodes] == list(SCHEMA.keypoints)
    assert [sorted(n.name for n in s.nodes) for s in sk.symmetries] == [["ear_a", "ear_b"]]
    (a,) = [lf for lf in labels if lf.video.filename.endswith("a.png")]
    assert a.instances[0].points["visible"].tolist() == [True, False, False, True]


def test_sleap_needs_the_extra(project, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sleap_io", None)
    with pytest.raises(FormatError, match=r'pip install "keypoint-annotator\[formats\]"'):
        export_project(project, "sleap", tmp_path / "out.slp")
    assert not (tmp_path / "out.slp").exists()


def test_sleap_bad_file(tmp_path):
    bad = tmp_path / "bad.slp"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(FormatError, match=r"bad\.slp: not a readable SLEAP file"):
        import_dataset(bad)


def test_default_install_does_not_import_sleap_io(project, tmp_path):
    code = (
        "import sys; from annotator.cli import build_parser; build_parser();"
        "from annotator.io.formats import export_project, import_dataset;"
        "import annotator.io.formats.yolo, annotator.io.formats.dlc,"
        " annotator.io.formats.label_studio, annotator.io.formats.sleap;"
        "print('sleap_io' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------- Label Studio
def test_label_studio_tasks(project, tmp_path):
    out = tmp_path / "ls.json"
    opts = ExportOptions(image_prefix="/data/local-files/?d=")
    export_project(project, "label-studio", out, opts)
    tasks = json.loads(out.read_text())
    assert [t["data"]["image"] for t in tasks] == [
        "/data/local-files/?d=a.png", "/data/local-files/?d=sub/b.png",
        "/data/local-files/?d=d.png"]
    result = tasks[0]["annotations"][0]["result"]
    occl = [r for r in result if r["type"] == "choices"]
    assert len(occl) == 2 and all(r["value"]["choices"] == ["occluded"] for r in occl)
    ear = next(r for r in result if r.get("id") == occl[0]["id"] and r["type"] == "keypointlabels")
    assert ear["value"]["keypointlabels"] == ["ear_a"]
    assert ear["value"]["x"] == pytest.approx(12 / 80 * 100)
    cfg = (tmp_path / "ls.label_config.xml").read_text()
    assert cfg.index('"nose"') < cfg.index('"ear_a"') < cfg.index('"tail"')
    back = import_dataset(out, image_root=project.image_root,
                          image_prefix="/data/local-files/?d=")
    assert sorted(r.path for r in back.images) == ["a.png", "d.png", "sub/b.png"]


def test_label_studio_export_from_label_studio_itself(tmp_path):
    """No relations and no boxes (one animal per image), as Label Studio exports it."""
    doc = [{"id": 7, "data": {"img": "/data/upload/3/pic.jpg"}, "annotations": [{"result": [
        {"id": "p", "type": "keypointlabels", "original_width": 200, "original_height": 100,
         "value": {"x": 50, "y": 25, "width": 1, "keypointlabels": ["tail"]}},
        {"id": "q", "type": "keypointlabels", "original_width": 200, "original_height": 100,
         "value": {"x": 10, "y": 10, "width": 1, "keypointlabels": ["head"]}},
        {"id": "q", "type": "choices", "value": {"choices": ["Occluded"]}},
    ]}]}]
    (tmp_path / "t.json").write_text(json.dumps(doc))
    p = import_dataset(tmp_path / "t.json")
    assert p.schema.keypoints == ("tail", "head")
    assert triples(p.annotation("pic.jpg").instances[0]) == [(100.0, 25.0, V), (20.0, 10.0, O)]


def test_label_studio_predictions_come_back_as_predictions(tmp_path):
    doc = [{"data": {"image": "x.png"}, "predictions": [{"score": 0.6, "result": [
        {"id": "p", "type": "keypointlabels", "original_width": 10, "original_height": 10,
         "value": {"x": 50, "y": 20, "keypointlabels": ["a"]}}]}]}]
    (tmp_path / "t.json").write_text(json.dumps(doc))
    ann = import_dataset(tmp_path / "t.json").annotation("x.png")
    (kp,) = ann.instances[0].keypoints
    assert (kp.x, kp.y, kp.origin, kp.confidence) == (5.0, 2.0, Origin.PREDICTED, 0.6)
    assert ann.status == ImageStatus.PREDICTED


@pytest.mark.parametrize("doc,message", [
    ({"images": 1}, "JSON that is neither"),
    ([{"nodata": 1}], r"task 0: not a task"),
    ([{"data": {"image": "x.png"}, "annotations": [{"result": [
        {"id": "p", "type": "keypointlabels", "original_width": 10,
         "value": {"x": 5, "y": 5, "keypointlabels": ["a"]}}]}]}],
     r"region p: original_height is missing"),
    ([{"data": {"image": "x.png"}, "annotations": [{"result": [
        {"id": "p", "type": "keypointlabels", "original_width": 10, "original_height": 10,
         "value": {"x": "5", "y": 5, "keypointlabels": ["a"]}}]}]}],
     r"region p, x: '5' is not a number"),
])
def test_label_studio_malformed(tmp_path, doc, message):
    (tmp_path / "t.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=message):
        import_dataset(tmp_path / "t.json")


def test_strict_json_and_bounded_coordinates(tmp_path):
    from annotator.io.jsonio import InputFormatError

    (tmp_path / "t.json").write_text('[{"data": {"image": "x.png"}, "id": NaN}]')
    with pytest.raises(InputFormatError, match=r"t\.json: NaN is not a JSON number"):
        import_dataset(tmp_path / "t.json")
    csv_path = tmp_path / "big.csv"
    csv_path.write_text("scorer,me,me\nbodyparts,head,head\ncoords,x,y\nimg.png,1e9,2\n")
    with pytest.raises(FormatError, match=r"big\.csv, line 4, head x: 1000000000\.0 is out "
                                          "of range"):
        import_dataset(csv_path)


# ------------------------------------------------------------------- detection
def test_detect_format(project, tmp_path):
    for fmt in ("yolo-pose", "dlc", "sleap", "label-studio", "coco"):
        export_project(project, fmt, tmp_path / OUT[fmt])
        assert detect_format(tmp_path / OUT[fmt]) == fmt
    assert detect_format(tmp_path / "ds/data.yaml") == "yolo-pose"
    assert detect_format(tmp_path / "dlc/config.yaml") == "dlc"
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(FormatError, match=r"x\.txt: unknown format"):
        detect_format(tmp_path / "x.txt")


# ------------------------------------------------------------------------ CLI
def test_cli_convert(project, tmp_path, capsys):
    from annotator.io.project_file import save_project

    save_project(project, tmp_path / "p.kpproj.json")
    rc = cli_main(["convert", str(tmp_path / "p.kpproj.json"), "--to", "yolo-pose",
                   "--out", str(tmp_path / "ds"), "--include-predictions"])
    assert rc == 0
    assert "4 image(s), 6 instance(s)" in capsys.readouterr().out
    rc = cli_main(["convert", str(tmp_path / "ds"), "--to", "sleap", "--out",
                   str(tmp_path / "x.slp")])
    assert rc == 0 and (tmp_path / "x.slp").is_file()
    rc = cli_main(["convert", str(tmp_path / "x.slp"), "--to", "project", "--out",
                   str(tmp_path / "back.kpproj.json")])
    assert rc == 0
    from annotator.io.project_file import load_project

    back = by_name(load_project(tmp_path / "back.kpproj.json"))
    assert_same_points(back["a.png"].instances[1], LABELS["a.png"][1][0], 1e-3)
    rc = cli_main(["convert", str(tmp_path / "x.slp"), "--to", "project", "--out",
                   str(tmp_path / "back.kpproj.json")])
    assert rc == 2 and "exists" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("[1]")
    rc = cli_main(["convert", str(tmp_path / "bad.json"), "--to", "coco", "--out",
                   str(tmp_path / "c.json")])
    assert rc == 2
    assert "bad.json: task 0: not a task" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()
    rc = cli_main(["convert", str(tmp_path / "x.slp"), "--to", "sleap", "--out",
                   str(tmp_path / "x.slp")])
    assert rc == 2 and "is the input" in capsys.readouterr().err


# ------------------------------------------------------------- property test
def _random_project(root: Path, data) -> tuple[Project, dict]:
    from hypothesis import strategies as st

    k = data.draw(st.integers(1, 4), label="k")
    schema = KeypointSchema("obj", tuple(f"p{i}" for i in range(k)))
    sizes = data.draw(st.lists(st.tuples(st.integers(8, 300), st.integers(8, 300)),
                               min_size=1, max_size=3), label="sizes")
    p = Project(str(root), [ImageRecord(f"i{n}.png", w, h) for n, (w, h) in enumerate(sizes)],
                schema)
    want = {}
    for n, (w, h) in enumerate(sizes):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / f"i{n}.png")
        insts = []  # keypoints per instance
        for _ in range(data.draw(st.integers(0, 3), label="instances")):
            kps = []
            for _ in range(k):
                v = data.draw(st.sampled_from([0, 1, 2]))
                x = data.draw(st.floats(0, w, allow_nan=False)) if v else 0.0
                y = data.draw(st.floats(0, h, allow_nan=False)) if v else 0.0
                kps.append(Keypoint(round(x, 3), round(y, 3), Visibility(v)))
            if not any(kp.labelled for kp in kps):
                kps[0] = Keypoint(1.0, 1.0, V)
            insts.append(kps)
        ann = annotation(insts, ImageStatus.REVIEWED)
        want[f"i{n}.png"] = list(ann.instances)
        p.set_annotation(f"i{n}.png", ann, "x")
    return p, want


@pytest.mark.parametrize("fmt", ["yolo-pose", "dlc", "sleap", "label-studio"])
def test_roundtrip_property(tmp_path_factory, fmt):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        base = tmp_path_factory.mktemp(fmt)
        (base / "imgs").mkdir()
        project, want = _random_project(base / "imgs", data)
        _, back = roundtrip(project, base, fmt)
        got = by_name(back)
        assert sorted(got) == sorted(want)
        for name, insts in want.items():
            assert len(got[name].instances) == len(insts)
            w = max(project.image(name).width, project.image(name).height)
            tol = {"yolo-pose": 1e-6 * w, "dlc": 1e-3}.get(fmt, 1e-9)
            for g, i in zip(got[name].instances, insts):
                spec = [None if not kp.labelled else (kp.x, kp.y, kp.v) for kp in i.keypoints]
                assert_same_points(g, spec, tol, V if fmt == "dlc" else O)
                assert g.bbox is None

    check()


# ---------------------------------------------------- convert --category, COCO precision
def test_convert_category_picks_one_of_several(tmp_path, capsys):
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 2,
                            "keypoints": [4.5, 5.25, 2, 0, 0, 0]},
                           {"id": 2, "image_id": 1, "category_id": 1, "keypoints": [1, 1, 2]}],
           "categories": [{"id": 1, "name": "cat", "keypoints": ["nose"]},
                          {"id": 2, "name": "dog", "keypoints": ["nose", "tail"]}]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    out = tmp_path / "p.kpproj.json"
    assert cli_main(["convert", str(tmp_path / "c.json"), "--to", "project", "--out",
                     str(out)]) == 2
    assert "choose one (convert --category NAME)" in capsys.readouterr().err
    for chosen, keypoints in (("dog", ("nose", "tail")), ("1", ("nose",))):
        out.unlink(missing_ok=True)
        assert cli_main(["convert", str(tmp_path / "c.json"), "--category", chosen, "--to",
                         "project", "--out", str(out)]) == 0
        from annotator.io.project_file import load_project

        assert load_project(out).schema.keypoints == keypoints
    with pytest.raises(FormatError, match="--category is for COCO files"):
        import_dataset(tmp_path / "c.json", "label-studio", category="dog")


def test_coco_export_keeps_three_decimals(tmp_path):
    root = tmp_path / "imgs"
    p = Project(str(root), blank_images(root, {"a.png": (40, 30)}),
                KeypointSchema("cat", ("nose",)))
    p.set_annotation("a.png", one_instance((Keypoint(10.12345, 3.0006, V),), ImageStatus.REVIEWED),
                     "x")
    export_project(p, "coco", tmp_path / "c.json")
    ann = json.loads((tmp_path / "c.json").read_text())["annotations"][0]
    assert ann["keypoints"][:2] == [10.123, 3.001]


class _Stop(Exception):
    """What a cancel raises from an export's progress callback."""


@pytest.mark.parametrize("fmt", ["yolo-pose", "dlc", "sleap", "label-studio", "coco"])
def test_export_reports_progress_and_a_cancel_leaves_nothing(project, tmp_path, fmt):
    calls: list[tuple[int, int]] = []
    out = tmp_path / OUT[fmt]
    export_project(project, fmt, out, progress=lambda d, t: calls.append((d, t)))
    assert calls and [d for d, _ in calls] == sorted(d for d, _ in calls)  # only forward
    assert calls[-1][0] == calls[-1][1] > 0  # ends at 100 %
    first = sorted(p.name for p in tmp_path.iterdir())

    for stop_at in range(1, len(calls)):  # a cancel at every reported step, the last included
        seen = []

        def cancel_after(d, t, seen=seen, stop_at=stop_at):
            seen.append(d)
            if len(seen) > stop_at:
                raise _Stop

        again = tmp_path / f"again_{stop_at}_{OUT[fmt]}"
        with pytest.raises(_Stop):
            export_project(project, fmt, again, progress=cancel_after)
        assert sorted(p.name for p in tmp_path.iterdir()) == first  # no file, no stage left


def test_label_studio_tasks_are_the_bytes_one_json_dumps_writes(project, tmp_path):
    """Written task by task (the encoder never holds the GIL for the whole document), the
    file is still exactly what json.dumps of the task list writes."""
    out = tmp_path / "ls.json"
    export_project(project, "label-studio", out, ExportOptions(include_predictions=True))
    text = out.read_text(encoding="utf-8")
    tasks = json.loads(text)
    assert len(tasks) == 4 and text == json.dumps(tasks, ensure_ascii=False)
