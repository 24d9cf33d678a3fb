"""Untrusted interchange files: importers never read or copy anything outside the dataset
folder (or ``--images``) nor a non-regular file, listing is bounded, crafted content ends
in a FormatError, and exports leave no staging files and follow the umask."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from annotator.cli import main as cli_main
from annotator.domain import ImageStatus, Keypoint, KeypointSchema, Project, Visibility
from annotator.io.formats import FormatError, export_project, import_dataset
from tests.builders import blank_images, one_instance

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not to be copied"
V = Visibility.VISIBLE


@pytest.fixture
def secret(tmp_path) -> Path:
    """A private file outside every dataset folder used below."""
    path = tmp_path / "home" / ".ssh" / "id_rsa.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(SECRET)
    return path


def png(path: Path, w: int = 40, h: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(path)
    return path


def assert_not_copied(folder: Path) -> None:
    """Nothing under ``folder`` holds the secret's bytes, and nothing is a device copy."""
    for f in folder.rglob("*"):
        if f.is_file() and not f.is_symlink():
            assert SECRET not in f.read_bytes(), f
            assert f.stat().st_size < 10 << 20, f


def convert(*args: str) -> int:
    return cli_main(["convert", *map(str, args)])


# ---------------------------------------------------------------------- SLEAP
def _slp(path: Path, filename: str, shape=(1, 30, 40, 3), points=((5.0, 6.0), (7.0, 8.0))):
    sio = pytest.importorskip("sleap_io")
    sk = sio.Skeleton(nodes=["a", "b"])
    video = sio.Video(filename=filename, open_backend=False,
                      backend_metadata={"shape": shape})
    inst = sio.Instance.from_numpy(np.array(points, float), skeleton=sk)
    labels = sio.Labels(labeled_frames=[sio.LabeledFrame(video=video, frame_idx=0,
                                                         instances=[inst])], skeletons=[sk])
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.save_slp(labels, str(path), embed=False, verbose=False)
    return path


def test_sleap_naming_a_secret_or_dev_zero_copies_nothing(tmp_path, secret, capsys):
    for name in (str(secret), "/dev/zero", "../home/.ssh/id_rsa.png"):
        slp = _slp(tmp_path / "ds" / "x.slp", name)
        with pytest.raises(FormatError, match="not found in the dataset folder"):
            import_dataset(slp)
        for fmt, out in (("yolo-pose", "y"), ("dlc", "d")):
            assert convert(slp, "--to", fmt, "--out", tmp_path / "out" / out) == 2
            assert "not found in the dataset folder" in capsys.readouterr().err
    assert_not_copied(tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_sleap_windows_path_resolves_against_images_by_name(tmp_path, capsys):
    slp = _slp(tmp_path / "share" / "robots.slp", "D:\\lab\\session1\\robot0.jpg")
    with pytest.raises(FormatError, match=r"'D:/lab/session1/robot0\.jpg' is not found"):
        import_dataset(slp)  # the .slp's own folder does not hold it: named, not silent
    images = tmp_path / "mine"
    png(images / "session1" / "robot0.jpg", 40, 30)
    project = import_dataset(slp, image_root=images)
    assert project.image_root == str(images.resolve())
    assert [r.path for r in project.images] == ["session1/robot0.jpg"]
    assert (project.images[0].width, project.images[0].height) == (40, 30)  # from the file
    (inst,) = project.annotation("session1/robot0.jpg").instances
    assert [(k.x, k.y) for k in inst.keypoints] == [(5.0, 6.0), (7.0, 8.0)]
    # the CLI: --images is used for .slp, and --to coco works
    assert convert(slp, "--images", images, "--to", "coco", "--out", tmp_path / "c.json") == 0
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["images"][0]["file_name"] == "session1/robot0.jpg"


def test_sleap_pkg_slp_imports_its_embedded_frames(tmp_path):
    sio = pytest.importorskip("sleap_io")
    src = tmp_path / "src"
    a, b = png(src / "robot0.png", 40, 30), png(src / "robot1.png", 40, 30)
    Image.fromarray(np.arange(40 * 30 * 3, dtype=np.uint8).reshape(30, 40, 3)).save(b)
    sk = sio.Skeleton(nodes=["a", "b"])
    video = sio.Video.from_filename([str(a), str(b)])
    frames = [sio.LabeledFrame(video=video, frame_idx=i, instances=[
        sio.Instance.from_numpy(np.array([[1.0 + i, 2.0], [3.0, 4.0]]), skeleton=sk)])
        for i in range(2)]
    pkg = tmp_path / "share" / "robots.pkg.slp"
    pkg.parent.mkdir()
    sio.save_slp(sio.Labels(labeled_frames=frames, skeletons=[sk]), str(pkg), embed=True,
                 verbose=False)
    import shutil

    shutil.rmtree(src)  # shared without its images: they are inside the .pkg.slp
    project = import_dataset(pkg)
    paths = [r.path for r in project.images]
    assert paths == ["robots.pkg.frames/video0/robot0.png", "robots.pkg.frames/video0/robot1.png"]
    root = Path(project.image_root)
    assert root == pkg.parent.resolve()
    with Image.open(root / paths[1]) as im:
        assert im.size == (40, 30)
    assert project.annotation(paths[1]).instances[0].keypoints[0].x == 2.0
    report = export_project(project, "coco", tmp_path / "c.json")
    assert report.images == 2


@pytest.mark.parametrize(("shape", "points", "message"), [
    ((1, 30, 40, 3), ((np.inf, 6.0), (7.0, 8.0)), r"node 0 x: inf is out of range"),
    ((1, -30, 40, 3), ((5.0, 6.0), (7.0, 8.0)), r"image size 40 x -30 is not positive"),
    ("abc", ((5.0, 6.0), (7.0, 8.0)), r"video shape 'abc' is not"),
])
def test_sleap_crafted_content_is_a_format_error(tmp_path, shape, points, message):
    png(tmp_path / "ds" / "im.png")
    slp = _slp(tmp_path / "ds" / "x.slp", str(tmp_path / "ds" / "im.png"), shape, points)
    with pytest.raises(FormatError, match=message):
        import_dataset(slp)


def test_sleap_nul_in_a_file_name(tmp_path):
    from annotator.io.formats.sleap import _locate

    with pytest.raises(FormatError, match="is not a file name"):
        _locate("im\x00.png", tmp_path, tmp_path / "x.slp")


# ----------------------------------------------------------------------- YOLO
def _yolo(root: Path, doc: dict, label: bytes | None = b"0 0.5 0.5 0.2 0.2 0.5 0.5 2\n"):
    png(root / "images" / "train" / "a.png")
    if label is not None:
        (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train" / "a.txt").write_bytes(label)
    (root / "data.yaml").write_text(yaml.safe_dump({"kpt_shape": [1, 3], **doc}))
    return root / "data.yaml"


def test_yolo_train_slash_fails_fast(tmp_path):
    yml = _yolo(tmp_path / "ds", {"train": "/"})
    t = time.perf_counter()
    with pytest.raises(FormatError, match=r"split '/' is outside the dataset folder"):
        import_dataset(yml)
    assert time.perf_counter() - t < 1.0


def test_yolo_listing_is_bounded(tmp_path, monkeypatch):
    import annotator.io.formats.yolo as yolo

    monkeypatch.setattr(yolo, "MAX_LISTED", 50)
    yml = _yolo(tmp_path / "ds", {"train": "images/train"})
    for i in range(60):
        (tmp_path / "ds" / "images" / "train" / f"{i}.txt").touch()
    with pytest.raises(FormatError, match="holds more than 50 entries; not listed"):
        import_dataset(yml)


def test_yolo_never_reads_outside_its_folder(tmp_path, secret):
    ds = tmp_path / "ds"
    cases = [
        ({"train": str(secret.parent)}, "outside the dataset folder"),
        ({"train": "../home/.ssh"}, r"ds/home/\.ssh does not exist"),  # Roboflow's ../
        ({"train": "list.txt"}, "outside the dataset folder"),
        ({"train": "images/train", "path": str(secret.parent), "val": "images/train"}, None),
    ]
    for doc, message in cases:
        yml = _yolo(ds, doc)
        (ds / "list.txt").write_text(f"{secret}\n")
        if message is None:
            import_dataset(yml)  # a stale absolute `path:` is ignored when splits are here
            continue
        with pytest.raises(FormatError, match=message):
            import_dataset(yml)
    # an absolute `path:` naming another folder is only followed with --images
    yml = _yolo(ds, {"train": "images/train", "path": str(secret.parent)})
    (ds / "images" / "train").rename(ds / "elsewhere")
    with pytest.raises(FormatError, match=r"pass --images .*\.ssh"):
        import_dataset(yml)


def test_yolo_links_to_a_secret_or_dev_zero_are_not_read(tmp_path, secret):
    ds = tmp_path / "ds"
    yml = _yolo(ds, {"train": "images/train"}, label=None)
    labels = ds / "labels" / "train"
    labels.mkdir(parents=True)
    for target in (secret, Path("/dev/zero")):
        (labels / "a.txt").unlink(missing_ok=True)
        (labels / "a.txt").symlink_to(target)
        with pytest.raises(FormatError, match=r"a\.txt: the label file is outside the dataset"):
            import_dataset(yml)
    (labels / "a.txt").unlink()
    (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.2 0.5 0.5 2\n")
    (ds / "images" / "train" / "b.png").symlink_to(secret)
    with pytest.raises(FormatError, match=r"b\.png is outside the dataset folder"):
        import_dataset(yml)
    (ds / "images" / "train" / "b.png").unlink()
    os.mkfifo(labels / "c.txt")
    png(ds / "images" / "train" / "c.png")
    with pytest.raises(FormatError, match=r"c\.txt: the label file is not a regular file"):
        import_dataset(yml)


@pytest.mark.parametrize(("label", "list_text", "message"), [
    (b"0 0.5 0.5 0.2 0.2 \xff\xfe 0.5 2\n", None, r"a\.txt: the label file is not UTF-8"),
    (b"0 0.5 0.5 0.2 0.2 1e308 0.5 2\n", None, r"line 1, keypoint 0 x: .* is out of range"),
    (b"0 0.5 0.5 1e308 0.2 0.5 0.5 2\n", None, r"line 1, box: .* is out of range"),
    (None, "images/train/a.png\x00\n", r"list\.txt: the image list contains a NUL"),
])
def test_yolo_crafted_content_is_a_format_error(tmp_path, label, list_text, message):
    ds = tmp_path / "ds"
    yml = _yolo(ds, {"train": "list.txt" if list_text else "images/train"},
                label if label is not None else b"")
    if list_text:
        (ds / "list.txt").write_text(list_text)
    with pytest.raises(FormatError, match=message):
        import_dataset(yml)


# ------------------------------------------------------------------------ DLC
def _dlc_csv(root: Path, text: str) -> Path:
    path = root / "labeled-data" / "vid" / "CollectedData_me.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_dlc_never_reads_or_copies_outside(tmp_path, secret, capsys):
    root = tmp_path / "proj"
    csv = _dlc_csv(root, "scorer,me,me\nbodyparts,head,head\ncoords,x,y\n"
                         "../../home/.ssh/id_rsa.png,1,2\n")
    with pytest.raises(FormatError, match="escapes the image root"):
        import_dataset(csv)
    csv.unlink()
    csv.symlink_to("/dev/zero")
    with pytest.raises(FormatError, match="not a regular file; not read"):
        import_dataset(csv)
    csv.unlink()
    csv.symlink_to(secret)  # found through the project: outside it, not read
    (root / "config.yaml").write_text("bodyparts: [head]\nscorer: me\n")
    with pytest.raises(FormatError, match="the labels CSV is outside the dataset folder"):
        import_dataset(root)
    csv.unlink()
    # an image inside the project that links to the secret: imported, never copied
    _dlc_csv(root, "scorer,me,me\nbodyparts,head,head\ncoords,x,y\n"
                   "labeled-data/vid/img1.png,1,2\nlabeled-data/vid/img2.png,3,4\n")
    png(root / "labeled-data" / "vid" / "img1.png")
    (root / "labeled-data" / "vid" / "img2.png").symlink_to(secret)
    (root / "config.yaml").write_text("bodyparts: [head]\nscorer: me\n")
    for fmt in ("dlc", "yolo-pose", "sleap"):
        out = tmp_path / "out" / ("x.slp" if fmt == "sleap" else fmt)
        assert convert(root, "--to", fmt, "--out", out) == 2
        assert "resolves outside the image root" in capsys.readouterr().err
    assert_not_copied(tmp_path / "out")


def test_dlc_dev_zero_and_fifos_are_never_copied(tmp_path, capsys):
    root = tmp_path / "proj"
    _dlc_csv(root, "scorer,me,me\nbodyparts,head,head\ncoords,x,y\n"
                   "labeled-data/vid/img1.png,1,2\n")
    os.mkfifo(root / "labeled-data" / "vid" / "img1.png")
    project = import_dataset(root / "labeled-data" / "vid" / "CollectedData_me.csv")
    project.set_image_size("labeled-data/vid/img1.png", 40, 30)  # as a COCO file would say
    with pytest.raises(FormatError, match="not a regular file"):
        export_project(project, "dlc", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dlc_short_header_rows_are_a_format_error_or_read(tmp_path):
    # header rows shorter than coords: pandas pads them; the missing body part is named
    csv = _dlc_csv(tmp_path, "scorer,me\nbodyparts,head,head\ncoords,x,y\n"
                             "labeled-data/vid/a.png,1,2\n")
    assert import_dataset(csv).schema.keypoints == ("head",)
    csv = _dlc_csv(tmp_path, "scorer,me,me,me,me\nbodyparts,head,head\ncoords,x,y,x,y\n"
                             "labeled-data/vid/a.png,1,2\n")
    with pytest.raises(FormatError, match="column 4 names no body part"):
        import_dataset(csv)


# ------------------------------------------------------------- Label Studio
@pytest.mark.parametrize(("region", "message"), [
    ({"value": 5}, "'value' is not an object"),
    ({"value": {"x": 1, "y": 1, "keypointlabels": 5}}, "keypointlabels 5 is not a list"),
    ({"value": {"x": 1, "y": 1, "keypointlabels": {"a": 1}}}, "is not a list"),
    ({"original_height": 0.5}, "original_height 0.5 is not a positive image size"),
])
def test_label_studio_crafted_regions_are_a_format_error(tmp_path, region, message):
    base = {"id": "k", "type": "keypointlabels", "from_name": "keypoint", "to_name": "image",
            "original_width": 40, "original_height": 30,
            "value": {"x": 10, "y": 10, "keypointlabels": ["nose"]}}
    task = {"data": {"image": "a.png"}, "annotations": [{"result": [{**base, **region}]}]}
    (tmp_path / "t.json").write_text(json.dumps([task]))
    with pytest.raises(FormatError, match=message):
        import_dataset(tmp_path / "t.json")


def test_label_studio_and_coco_never_copy_outside(tmp_path, secret, capsys):
    root = tmp_path / "ds"
    png(root / "a.png")
    (root / "b.png").symlink_to(secret)
    (root / "z.png").symlink_to("/dev/zero")
    for name, message in (("../home/.ssh/id_rsa.png", "escapes the image root"),
                          (str(secret), "is absolute"), ("/dev/zero", "is absolute"),
                          ("b.png", "resolves outside the image root"),
                          ("z.png", "resolves outside the image root")):
        task = {"data": {"image": name}, "annotations": [{"result": [
            {"id": "k", "type": "keypointlabels", "original_width": 40,
             "original_height": 30, "value": {"x": 10, "y": 10, "keypointlabels": ["nose"]}}]}]}
        (root / "t.json").write_text(json.dumps([task]))
        coco = {"images": [{"id": 1, "file_name": name, "width": 40, "height": 30}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                 "keypoints": [4, 4, 2]}],
                "categories": [{"id": 1, "name": "x", "keypoints": ["nose"]}]}
        (root / "c.json").write_text(json.dumps(coco))
        for src in ("t.json", "c.json"):
            assert convert(root / src, "--to", "yolo-pose", "--out", tmp_path / "out") == 2
            assert message in capsys.readouterr().err
    assert_not_copied(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_huge_image_names_refused(tmp_path):
    name = "a" * 5000 + ".png"
    task = {"data": {"image": name}, "annotations": [{"result": [
        {"id": "k", "type": "keypointlabels", "original_width": 40, "original_height": 30,
         "value": {"x": 10, "y": 10, "keypointlabels": ["nose"]}}]}]}
    (tmp_path / "t.json").write_text(json.dumps([task]))
    with pytest.raises(FormatError, match="an image path of 5,004 characters"):
        import_dataset(tmp_path / "t.json")
    coco = {"images": [{"id": 1, "file_name": name}], "annotations": [],
            "categories": [{"id": 1, "name": "x", "keypoints": ["nose"]}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    with pytest.raises(FormatError, match="file_name of 5,004 characters"):
        import_dataset(tmp_path / "c.json")


# ------------------------------------------------------------------- exports
def _small_project(root: Path) -> Project:
    schema = KeypointSchema("cat", ("nose", "tail"))
    p = Project(str(root), blank_images(root, {"a.png": (40, 30)}, 120), schema)
    p.set_annotation("a.png", one_instance((Keypoint(3, 4, V), Keypoint(10, 12, V)),
                                           ImageStatus.REVIEWED), "x")
    return p


def test_export_modes_follow_the_umask(tmp_path):
    project = _small_project(tmp_path / "imgs")
    old = os.umask(0o022)
    try:
        for fmt, name in (("yolo-pose", "y"), ("dlc", "d"), ("sleap", "s.slp"),
                          ("label-studio", "l.json"), ("coco", "c.json")):
            if fmt == "sleap":
                pytest.importorskip("sleap_io")
            out = tmp_path / "out" / name
            export_project(project, fmt, out)
            want = 0o755 if out.is_dir() else 0o644
            assert out.stat().st_mode & 0o777 == want, fmt
            for f in (out.rglob("*") if out.is_dir() else []):
                assert f.stat().st_mode & 0o777 == (0o755 if f.is_dir() else 0o644), f
    finally:
        os.umask(old)


def test_out_through_a_symlink_is_refused(tmp_path, capsys):
    project = _small_project(tmp_path / "imgs")
    target = tmp_path / "precious.json"
    target.write_text("keep me")
    link = tmp_path / "out.json"
    link.symlink_to(target)
    for fmt in ("coco", "label-studio"):
        with pytest.raises(FormatError, match="is a symbolic link"):
            export_project(project, fmt, link)
    assert target.read_text() == "keep me"
    from annotator.io.project_file import save_project

    save_project(project, tmp_path / "p.kpproj.json")
    assert convert(tmp_path / "p.kpproj.json", "--to", "coco", "--out", link) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert target.read_text() == "keep me"


_KILLED = """
import sys, time
from pathlib import Path
import annotator.io.formats._common as common
from annotator.io.formats import export_project
from annotator.io.project_file import load_project

real = common.copy_image
def slow(source, target):
    real(source, target)
    Path(sys.argv[3]).touch()  # staging has begun
    time.sleep(60)
common.copy_image = slow
import annotator.io.formats.yolo as yolo, annotator.io.formats.dlc as dlc
yolo.copy_image = dlc.copy_image = slow
export_project(load_project(sys.argv[1]), sys.argv[2], Path(sys.argv[4]))
"""


@pytest.mark.parametrize("fmt", ["yolo-pose", "dlc"])
def test_a_killed_export_leaves_nothing_after_the_next_run(tmp_path, fmt):
    from annotator.io.project_file import save_project

    project = _small_project(tmp_path / "imgs")
    save_project(project, tmp_path / "p.kpproj.json")
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    out = out_dir / "ds"
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(tmp_path / "p.kpproj.json"),
                             fmt, str(ready), str(out)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert [p.name for p in out_dir.iterdir() if p.name.endswith(".partial")]  # left behind
    export_project(project, fmt, out)
    assert sorted(p.name for p in out_dir.iterdir()) == ["ds"]


def test_a_killed_sleap_export_leaves_nothing_after_the_next_run(tmp_path):
    pytest.importorskip("sleap_io")
    project = _small_project(tmp_path / "imgs")
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    stale = out_dir / ".x.slp.0123abcd.partial.slp"  # what a killed run leaves
    stale.write_bytes(b"half a file")
    export_project(project, "sleap", out_dir / "x.slp")
    assert sorted(p.name for p in out_dir.iterdir()) == ["x.slp"]


# --------------------------------------------------------- real DLC projects
def _dlc_example(name: str) -> Path:
    from tests.shared_fixtures import shared_fixture

    return shared_fixture("dlc-examples", name, "config.yaml").parent


@pytest.mark.parametrize(("name", "scorer", "video"), [
    ("openfield-Pranav-2018-10-30", "Pranav", "m4s1"),
    ("Reaching-Mackenzie-2018-08-30", "Mackenzie", "reachingvideo1"),
])
def test_real_dlc_project_round_trip_is_byte_for_byte(tmp_path, name, scorer, video):
    src = _dlc_example(name)
    project = import_dataset(src)
    out = tmp_path / "dlc"
    export_project(project, "dlc", out)
    csv_name = f"labeled-data/{video}/CollectedData_{scorer}.csv"
    assert (out / csv_name).read_bytes() == (src / csv_name).read_bytes()
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    source_cfg = yaml.safe_load((src / "config.yaml").read_text())
    assert cfg["scorer"] == scorer and cfg["Task"] == source_cfg["Task"]
    assert [Path(v).stem for v in cfg["video_sets"]] == [video]
    assert cfg["bodyparts"] == source_cfg["bodyparts"]
    changed = {"project_path", "video_sets", "multianimalproject"}
    for key in set(source_cfg) - changed:
        assert cfg[key] == source_cfg[key], key  # the source project's settings are kept
    assert sorted(p.name for p in (out / "labeled-data" / video).iterdir()) == sorted(
        p.name for p in (src / "labeled-data" / video).iterdir() if p.suffix != ".h5")


MADLC_CONFIG = {
    "Task": "mice", "scorer": "Lab", "multianimalproject": True, "identity": False,
    "bodyparts": "MULTI!", "individuals": ["Animal1", "Animal2"],
    "uniquebodyparts": ["topleft"], "multianimalbodyparts": ["head", "tail"],
    "skeleton": [["head", "tail"]],
}
MADLC_CSV = (
    "scorer,,,Lab,Lab,Lab,Lab,Lab,Lab,Lab,Lab,Lab,Lab\n"
    "individuals,,,Animal1,Animal1,Animal1,Animal1,Animal2,Animal2,Animal2,Animal2,single,single\n"
    "bodyparts,,,head,head,tail,tail,head,head,tail,tail,topleft,topleft\n"
    "coords,,,x,y,x,y,x,y,x,y,x,y\n"
    "labeled-data,v1,img0.png,1.5,2.5,3.0,4.0,10.0,11.0,12.0,13.0,0.5,0.25\n"
    "labeled-data,v1,img1.png,5.0,6.0,7.0,8.0\n"  # trailing empty cells left off (SLEAP's files)
)


def test_madlc_short_rows_unique_parts_and_individuals_survive(tmp_path):
    src = tmp_path / "ma"
    (src / "labeled-data" / "v1").mkdir(parents=True)
    (src / "config.yaml").write_text(yaml.safe_dump(MADLC_CONFIG, sort_keys=False))
    (src / "labeled-data" / "v1" / "CollectedData_Lab.csv").write_text(MADLC_CSV)
    for i in range(2):
        png(src / "labeled-data" / "v1" / f"img{i}.png")
    project = import_dataset(src)
    assert project.schema.keypoints == ("head", "tail", "topleft")
    a = project.annotation("labeled-data/v1/img0.png").instances
    assert [[(k.x, k.y) if k.labelled else None for k in i.keypoints] for i in a] == [
        [(1.5, 2.5), (3.0, 4.0), None], [(10.0, 11.0), (12.0, 13.0), None],
        [None, None, (0.5, 0.25)]]
    assert len(project.annotation("labeled-data/v1/img1.png").instances) == 1
    out = tmp_path / "out"
    export_project(project, "dlc", out)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["individuals"] == ["Animal1", "Animal2"]
    assert cfg["uniquebodyparts"] == ["topleft"]
    assert cfg["multianimalbodyparts"] == ["head", "tail"]
    written = (out / "labeled-data" / "v1" / "CollectedData_Lab.csv").read_text().splitlines()
    source = MADLC_CSV.splitlines()
    assert written[:5] == source[:5]
    assert written[5] == source[5] + ",,,,,,"  # written whole, as pandas writes it
    again = import_dataset(out)
    for path in ("labeled-data/v1/img0.png", "labeled-data/v1/img1.png"):
        assert again.annotation(path).instances == project.annotation(path).instances


def test_dlc_export_of_a_plain_project_is_unchanged_in_form(tmp_path):
    project = _small_project(tmp_path / "imgs")
    export_project(project, "dlc", tmp_path / "d")
    rows = (tmp_path / "d/labeled-data/images/CollectedData_annotator.csv").read_text()
    assert rows.splitlines() == ["scorer,,,annotator,annotator,annotator,annotator",
                                 "bodyparts,,,nose,nose,tail,tail", "coords,,,x,y,x,y",
                                 "labeled-data,images,a.png,3.0,4.0,10.0,12.0"]


def test_a_pipe_or_device_named_as_the_input_is_not_read(tmp_path):
    os.mkfifo(tmp_path / "x.json")  # opening it to read would block forever
    (tmp_path / "y.yaml").symlink_to("/dev/zero")  # reading it would never end
    for name in ("x.json", "y.yaml"):
        with pytest.raises(FormatError, match="is not a regular file; not read"):
            import_dataset(tmp_path / name)


def test_pkg_slp_frames_are_not_extracted_through_a_link(tmp_path, secret):
    sio = pytest.importorskip("sleap_io")
    src = png(tmp_path / "src" / "robot0.png")
    sk = sio.Skeleton(nodes=["a"])
    video = sio.Video.from_filename([str(src)])
    frame = sio.LabeledFrame(video=video, frame_idx=0, instances=[
        sio.Instance.from_numpy(np.array([[1.0, 2.0]]), skeleton=sk)])
    pkg = tmp_path / "share" / "r.pkg.slp"
    pkg.parent.mkdir()
    sio.save_slp(sio.Labels(labeled_frames=[frame], skeletons=[sk]), str(pkg), embed=True,
                 verbose=False)
    (pkg.parent / "r.pkg.frames").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(FormatError, match="links outside the dataset folder"):
        import_dataset(pkg)
    assert sorted(p.name for p in secret.parent.iterdir()) == ["id_rsa.png"]
