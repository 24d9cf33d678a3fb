import json

import pytest

from annotator.domain import ImageStatus, Keypoint, KeypointSchema, Origin, Visibility
from annotator.io.autosave import Autosaver
from annotator.io.project_file import (
    FORMAT_VERSION,
    ProjectFileError,
    backup_path,
    load_project,
    new_project,
    project_to_dict,
    save_project,
)
from tests.test_io_images import gradient


@pytest.fixture
def folder(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir()
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(gradient()).save(root / n)
    return root


def make(folder):
    schema = KeypointSchema("cat", ("nose", "left_eye", "right_eye"), flip_pairs=((1, 2),))
    p = new_project(folder, schema)
    p.set_keypoint("a.jpg", 0, Keypoint(1.5, 2.5, Visibility.VISIBLE))
    p.set_keypoint("b.jpg", 1, Keypoint(3, 4, Visibility.OCCLUDED, Origin.PREDICTED, 0.25))
    p.set_status("c.jpg", ImageStatus.REVIEWED)
    return p


def test_save_load_round_trip_with_backup(tmp_path, folder):
    p = make(folder)
    path = tmp_path / "proj.kpproj.json"
    save_project(p, path)
    assert not backup_path(path).exists()
    q = load_project(path)
    assert project_to_dict(q) == project_to_dict(p)
    assert q.annotation("b.jpg").instances[0].keypoints[1].confidence == 0.25
    p.move_keypoint("a.jpg", 0, 9, 9)
    save_project(p, path)
    assert load_project(backup_path(path)).annotation("a.jpg").instances[0].keypoints[0].x == 1.5
    assert load_project(path).annotation("a.jpg").instances[0].keypoints[0].x == 9
    assert not [f for f in path.parent.iterdir() if f.name.endswith(".tmp")]


def test_bad_files_are_named_and_untouched(tmp_path, folder):
    p = make(folder)
    path = tmp_path / "proj.kpproj.json"
    save_project(p, path)
    doc = json.loads(path.read_text())
    doc["version"] = FORMAT_VERSION + 1
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(doc))
    before = newer.read_bytes()
    with pytest.raises(ProjectFileError, match="newer version"):
        load_project(newer)
    assert newer.read_bytes() == before
    trunc = tmp_path / "trunc.json"
    trunc.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ProjectFileError, match=r"trunc.json: truncated"):
        load_project(trunc)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"images": []}')
    with pytest.raises(ProjectFileError, match="wrong.json: not a keypoint-annotator project"):
        load_project(wrong)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ProjectFileError, match="bin.json"):
        load_project(binary)
    doc = json.loads(path.read_text())
    doc["images"][0]["path"] = "../../escape.jpg"
    esc = tmp_path / "esc.json"
    esc.write_text(json.dumps(doc))
    with pytest.raises(ProjectFileError, match="escapes the image root"):
        load_project(esc)


def test_failed_save_keeps_previous_file(tmp_path, folder, monkeypatch):
    p = make(folder)
    path = tmp_path / "proj.kpproj.json"
    save_project(p, path)
    before = path.read_bytes()
    import annotator.io.project_file as pf

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pf.os, "fsync", boom)
    with pytest.raises(OSError):
        save_project(p, path)
    assert path.read_bytes() == before
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


def test_autosave_coalesces_rapid_edits(tmp_path, folder):
    now = [0.0]
    p = make(folder)
    path = tmp_path / "auto.json"
    saver = Autosaver(p, path, delay_s=2.0, clock=lambda: now[0])
    for i in range(20):  # a burst of edits, 0.1 s apart
        now[0] += 0.1
        p.move_keypoint("a.jpg", 0, i, i)
        assert not saver.maybe_save()
    now[0] += 2.5
    assert saver.maybe_save()
    assert saver.saves == 1
    assert load_project(path).annotation("a.jpg").instances[0].keypoints[0].x == 19
    now[0] += 10
    assert not saver.maybe_save()  # nothing new
    p.undo()
    saver.close()  # flushes pending change
    assert saver.saves == 2


def test_project_and_images_can_move_together(tmp_path, folder):
    import shutil

    p = make(folder)
    path = tmp_path / "proj.kpproj.json"
    save_project(p, path)
    assert json.loads(path.read_text())["image_root"] == "imgs"
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    shutil.move(str(tmp_path), moved)
    q = load_project(moved / "proj.kpproj.json")
    assert q.image_root == str((moved / "imgs").resolve())
    assert q.annotation("a.jpg").instances[0].keypoints[0].x == 1.5


def test_interrupted_save_leaves_a_project_file_and_keeps_permissions(tmp_path, folder,
                                                                      monkeypatch):
    import os
    import stat

    import annotator.io.project_file as pf

    p = make(folder)
    path = tmp_path / "proj.kpproj.json"
    save_project(p, path)
    os.chmod(path, 0o644)
    p.move_keypoint("a.jpg", 0, 9, 9)
    real_replace = os.replace

    def crash_on_final_rename(src, dst):
        if str(dst) == str(path):
            raise OSError("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(pf.os, "replace", crash_on_final_rename)
    with pytest.raises(OSError, match="power cut"):
        save_project(p, path)
    monkeypatch.undo()
    # the project file is still there, whole, with its old content; the backup too
    assert load_project(path).annotation("a.jpg").instances[0].keypoints[0].x == 1.5
    assert backup_path(path).exists()
    save_project(p, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not [f for f in tmp_path.iterdir() if f.name.endswith((".tmp", ".bak"))]


def test_settings_of_the_wrong_type_are_named(tmp_path, folder):
    path = tmp_path / "proj.kpproj.json"
    save_project(make(folder), path)
    doc = json.loads(path.read_text())
    doc["settings"]["cache_cap_gb"] = "20"
    path.write_text(json.dumps(doc))
    with pytest.raises(ProjectFileError, match="setting 'cache_cap_gb' is '20', expected float"):
        load_project(path)


def test_autosave_saves_during_a_steady_stream_of_edits(tmp_path, folder):
    now = [0.0]
    p = make(folder)
    saver = Autosaver(p, tmp_path / "s.json", delay_s=2.0, max_wait_s=15.0,
                      clock=lambda: now[0])
    saves_at = []
    for i in range(80):  # an edit every 0.25 s for 20 s: never 2 s of quiet
        now[0] += 0.25
        p.move_keypoint("a.jpg", 0, i, i)
        if saver.maybe_save():
            saves_at.append(now[0])
    assert saves_at and saves_at[0] <= 15.25
    saved = load_project(tmp_path / "s.json", recover=False)  # the file alone, no journal
    assert saved.annotation("a.jpg").instances[0].keypoints[0].x <= 60
