"""The SQLite project store: a JSON project of the previous version migrates with every kind of
content intact, the tables are generic (new optional fields need no schema change), and what
the gallery needs is readable without decoding keypoints."""

import contextlib
import dataclasses
import json
import sqlite3

import pytest

from annotator.domain import (
    ImageRecord,
    ImageStatus,
    Keypoint,
    KeypointSchema,
    Origin,
    Project,
    Visibility,
)
from annotator.domain.annotation import ImageAnnotation, Instance
from annotator.domain.project import ProjectSettings
from annotator.io.autosave import Autosaver
from annotator.io.project_file import (
    load_project,
    open_project_file,
    project_to_dict,
    save_json_copy,
    save_project,
)
from annotator.io.store import ProjectStore

SCHEMA = KeypointSchema("cat", ("nose", "left_eye", "right_eye"), skeleton=((0, 1), (0, 2)),
                        flip_pairs=((1, 2),), colors=("#ff0000", "#00ff00", "#0000ff"),
                        supercategory="animal")


def rich_project(root) -> Project:
    """Every kind of content: manual, predicted (with confidences, some not found), reviewed
    keypoints; several instances with boxes, detector scores and annotation ids; reference,
    reviewed, predicted and unlabelled images; known and unknown image sizes; non-default
    settings of every type; non-ASCII names."""
    images = [ImageRecord("ref.png", 640, 480), ImageRecord("sub/prédit.png", 320, 200),
              ImageRecord("reviewed.png"), ImageRecord("empty.png", 10, 10)]
    v, o = Visibility, Origin
    ref = ImageAnnotation((Instance((Keypoint(1.5, 2.25, v.VISIBLE), Keypoint(3, 4, v.OCCLUDED),
                                     Keypoint()), (0.5, 1.0, 100.0, 80.0), None, 7),),
                          ImageStatus.REFERENCE)
    predicted = ImageAnnotation((
        Instance((Keypoint(10.125, 20.5, v.VISIBLE, o.PREDICTED, 0.875),
                  Keypoint(0, 0, v.UNLABELLED, o.PREDICTED, 0.03125),
                  Keypoint(11, 12, v.OCCLUDED, o.REVIEWED)), (5.0, 6.0, 50.0, 40.0), 0.625, 8),
        Instance((Keypoint(), Keypoint(), Keypoint()), (60.0, 6.0, 30.0, 30.0), 0.25, None),
        Instance((Keypoint(1, 1, v.VISIBLE, o.PREDICTED, 1.0), Keypoint(), Keypoint())),
    ), ImageStatus.PREDICTED)
    reviewed = ImageAnnotation((Instance((Keypoint(5, 5, v.VISIBLE, o.REVIEWED),
                                          Keypoint(0, 0, v.UNLABELLED, o.REVIEWED),
                                          Keypoint(6, 7, v.VISIBLE, o.MANUAL))),),
                               ImageStatus.REVIEWED)
    settings = dataclasses.replace(
        ProjectSettings(), preset="geoaware", fusion="concat", flip=False, soft_argmax=False,
        review_threshold=0.375, cache_cap_gb=3.5, crop="none", crop_margin=0.25,
        detect_prompt="a cat", detect_max_boxes=4, sd_unet="u.safetensors")
    return Project(str(root), images, SCHEMA,
                   {"ref.png": ref, "sub/prédit.png": predicted, "reviewed.png": reviewed},
                   settings)


def test_json_project_round_trips_through_migration(tmp_path):
    project = rich_project(tmp_path)
    legacy = tmp_path / "rich.kpproj.json"
    save_project(project, legacy)
    before = legacy.read_bytes()
    opened = open_project_file(legacy)
    assert opened.path == tmp_path / "rich.kpproj" and legacy.read_bytes() == before
    expected = project_to_dict(project)
    assert project_to_dict(opened.project) == expected
    assert project_to_dict(load_project(opened.path)) == expected  # what the store holds
    # and back: "Save a copy as JSON" of the store gives the same document
    copy = tmp_path / "copy.kpproj.json"
    save_json_copy(load_project(opened.path), copy)
    assert project_to_dict(load_project(copy)) == expected
    got = load_project(opened.path)
    inst = got.annotation("sub/prédit.png").instances[0]
    assert inst.box_score == 0.625 and inst.ann_id == 8
    assert inst.keypoints[1].confidence == 0.03125 and inst.keypoints[1].origin == Origin.PREDICTED
    assert got.settings == project.settings and got.schema == SCHEMA
    assert got.images == project.images and got.reference_paths() == ["ref.png", "reviewed.png"]


def test_edits_through_the_autosaver_round_trip_every_kind_of_content(tmp_path):
    """The incremental writes (per image) give the same project as a whole save."""
    path = tmp_path / "p.kpproj"
    blank = rich_project(tmp_path)
    full = project_to_dict(blank)
    empty = Project(str(tmp_path), blank.images, SCHEMA, settings=blank.settings)
    save_project(empty, path)
    saver = Autosaver(empty, path, background=True)
    empty.set_annotations(blank.annotations(), "paste everything")
    saver.close()
    assert project_to_dict(load_project(path)) == full


def test_settings_and_image_records_are_stored_generically(tmp_path):
    path = tmp_path / "p.kpproj"
    project = rich_project(tmp_path)
    save_project(project, path)
    con = sqlite3.connect(path)
    keys = {k for (k,) in con.execute("SELECT key FROM settings")}
    assert keys == {f.name for f in dataclasses.fields(ProjectSettings)}  # one row per field
    assert json.loads(con.execute("SELECT data FROM images WHERE path = 'ref.png'").fetchone()[0]) \
        == {"width": 640, "height": 480}
    # a newer version's fields (an optional image field, a new setting) need no schema
    # change and are ignored by this version
    con.execute("""UPDATE images SET data = '{"width": 640, "height": 480, "exposure_ms": 8,
                "lens": "wide"}' WHERE path = 'ref.png'""")
    con.execute("INSERT INTO settings VALUES ('matching_mode', '\"mutual\"')")
    con.commit()
    con.close()
    got = load_project(path)
    assert got.image("ref.png") == ImageRecord("ref.png", 640, 480)
    assert got.settings == project.settings


def test_gallery_rows_need_no_keypoint_decoding(tmp_path):
    path = tmp_path / "p.kpproj"
    project = rich_project(tmp_path)
    save_project(project, path)
    store = ProjectStore(path)
    rows = store.gallery_rows()
    store.close()
    assert [r[0] for r in rows] == [r.path for r in project.images]
    by_path = {p: (s, w) for p, s, w in rows}
    assert by_path["sub/prédit.png"] == ("predicted", 0.03125)
    assert by_path["empty.png"] == (None, None)
    assert by_path["ref.png"] == ("reference", None)


def test_cli_reads_a_store(tmp_path):
    from annotator.cli import main
    from annotator.io.formats import detect_format

    path = tmp_path / "p.kpproj"
    project = rich_project(tmp_path)
    project.set_image_size("reviewed.png", 64, 64)
    save_project(project, path)
    assert detect_format(path) == "project"
    out = tmp_path / "out.json"
    assert main(["export", str(path), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["categories"][0]["keypoints"] == list(SCHEMA.keypoints)


def test_damaged_keypoints_in_a_store_are_refused_by_name(tmp_path):
    """The fast keypoint decoder checks what the per-keypoint one checks: a NaN, a string, a
    confidence outside [0, 1], a bool visibility or an unknown origin in a store's row is a
    ProjectFileError naming the image, never a silently loaded value."""
    import pytest

    from annotator.io.project_file import ProjectFileError

    path = tmp_path / "p.kpproj"
    save_project(rich_project(tmp_path), path)
    good = load_project(path)
    for bad, what in [("[NaN, 1, 2, \"manual\"]", "x"),
                      ("[\"a\", 1, 2, \"manual\"]", "not a number"),
                      ("[1, 2, 2, \"predicted\", 1.5]", "confidence"),
                      ("[1, 2, true, \"manual\"]", "visibility"),
                      ("[1, 2, 2, \"guessed\"]", "guessed"), ("[1, 2, 2]", "keypoint must be"),
                      ("[1e300, 2, 2, \"manual\"]", "x")]:
        con = sqlite3.connect(path)
        row = con.execute("SELECT keypoints FROM instances WHERE path = 'ref.png'").fetchone()[0]
        kps = json.loads(row)
        con.execute("UPDATE instances SET keypoints = ? WHERE path = 'ref.png' AND idx = 0",
                    ("[" + bad + "," + ",".join(json.dumps(k) for k in kps[1:]) + "]",))
        con.commit()
        con.close()
        with pytest.raises(ProjectFileError, match="ref.png") as err:
            load_project(path)
        assert what in str(err.value)
        save_project(good, path)
    assert project_to_dict(load_project(path)) == project_to_dict(good)


def test_load_reports_progress_and_can_be_cancelled(tmp_path):
    import pytest

    from annotator.io.project_file import LoadCancelled

    path = tmp_path / "p.kpproj"
    project = rich_project(tmp_path)
    save_project(project, path)
    seen: list[float] = []
    got = load_project(path, progress=seen.append)
    assert project_to_dict(got) == project_to_dict(project)
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 1.0 and len(seen) >= 3

    def stop(fraction: float) -> None:
        if fraction > 0.3:
            raise LoadCancelled

    with pytest.raises(LoadCancelled):
        load_project(path, progress=stop)


def test_the_preview_reads_the_images_and_a_summary_of_every_annotation(tmp_path):
    """What the gallery shows of a big project while it loads (issue 22): the image records,
    schema and settings as a full load reads them, and per annotated image its status, worst
    confidence and instance count; one image's annotation is read on its own."""
    from annotator.io.project_file import read_annotation, read_preview

    path = tmp_path / "p.kpproj"
    project = rich_project(tmp_path)
    project.add_images([ImageRecord("clip/img0003.png", 64, 48, "clip.mp4", 3, 0.125)])
    save_project(project, path)
    full = load_project(path)
    preview = read_preview(path)
    assert preview.path == path
    assert preview.project.images == full.images
    assert [hash(r) for r in preview.project.images] == [hash(r) for r in full.images]
    assert [vars(r) for r in preview.project.images] == [vars(r) for r in full.images]
    assert preview.project.schema == full.schema and preview.project.settings == full.settings
    assert preview.project.image_root == full.image_root
    assert not preview.project.annotations()
    assert preview.summary == {
        p: (a.status, a.worst_confidence())
        for p, a in full.annotations().items()}
    store = ProjectStore(path)
    try:
        for rec in full.images:
            assert read_annotation(store, rec.path) == full.annotation(rec.path)
    finally:
        store.close()


def _execute(path, *statements: str) -> None:
    """Run ``statements`` on the store at ``path`` and commit (damage made by hand)."""
    con = sqlite3.connect(path)
    try:
        for sql in statements:
            con.execute(sql)
        con.commit()
    finally:
        con.close()


def test_a_damaged_preview_is_refused_by_name(tmp_path):
    import pytest

    from annotator.io.project_file import ProjectFileError, read_annotation, read_preview

    path = tmp_path / "p.kpproj"
    save_project(rich_project(tmp_path), path)
    _execute(path, "UPDATE annotations SET status = 'guessed' WHERE path = 'reviewed.png'",
             "UPDATE instances SET keypoints = '[[1, 2]]' WHERE path = 'ref.png'")
    with pytest.raises(ProjectFileError, match="reviewed.png.*guessed"):
        read_preview(path)
    store = ProjectStore(path)
    try:
        with pytest.raises(ProjectFileError, match="ref.png"):
            read_annotation(store, "ref.png")
    finally:
        store.close()
    _execute(path, "UPDATE annotations SET status = 'reviewed' WHERE path = 'reviewed.png'",
             "UPDATE images SET data = '{\"width\": -3}' WHERE path = 'empty.png'")
    with pytest.raises(ProjectFileError, match="empty.png.*width"):
        read_preview(path)


def test_a_loaded_document_is_released_entry_by_entry():
    from annotator.io.project_file import release_document

    doc = {"images": [{"path": "a"}] * 3, "annotations": {"a": {}, "b": {}}, "schema": {}}
    release_document(doc)
    assert doc == {"images": [], "annotations": {}, "schema": {}}


def test_checking_an_open_store_keeps_its_locks_against_other_processes(tmp_path):
    """is_store on a file this process has open as a store must not open and close it
    (that drops the connection's POSIX locks): another process closing its connection
    would then delete the write-ahead log under ours, and the next read fails."""
    import subprocess
    import sys

    from annotator.io.store import ProjectStore, is_store

    path = tmp_path / "p.kpproj"
    save_project(rich_project(tmp_path), path)
    store = ProjectStore(path)  # the autosaver's connection, say
    try:
        with store.transaction():
            store.write_meta({"note": "written while open"})
        assert is_store(path) and is_store(str(path))
        other = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                 "c.execute('SELECT COUNT(*) FROM meta').fetchone(); c.close()")
        subprocess.run([sys.executable, "-c", other, str(path)], check=True)
        assert (tmp_path / "p.kpproj-wal").exists()  # the other process left it alone
        with store.transaction():
            store.write_meta({"note": "and after"})
        assert load_project(path).image_root == str(tmp_path)  # a new reader works
        assert ProjectStore(path).meta("note") == "and after"
    finally:
        store.close()
    assert is_store(path) and not is_store(tmp_path / "missing.kpproj")


@pytest.mark.parametrize("data", [
    {}, {"width": 640}, {"height": 480}, {"width": 640, "height": 480},
    {"width": 0, "height": 480}, {"width": -3}, {"width": True}, {"height": 2.5},
    {"width": "640"}, {"width": None}, {"width": 640, "video": "v.mp4", "frame": 3},
    {"width": 640, "unknown": 1},
])
@pytest.mark.parametrize("image", ["a.png", "sub/b.jpg", "../up.png", "/abs.png", "a//b.png"])
def test_a_stored_image_record_is_checked_as_image_record_checks_it(tmp_path, image, data):
    """The fast path for plain images builds the record without ImageRecord's __init__: it
    must accept and refuse exactly what that accepts and refuses."""
    from annotator.io.project_file import ProjectFileError, _image_record

    known = {f.name for f in dataclasses.fields(ImageRecord)}
    try:
        expected = ImageRecord(image, **{k: v for k, v in data.items() if k in known})
    except (TypeError, ValueError):
        with pytest.raises(ProjectFileError):
            _image_record(image, data, tmp_path)
    else:
        got = _image_record(image, data, tmp_path)
        assert got == expected and vars(got) == vars(expected)


def test_a_store_loads_image_by_image_without_its_whole_document(tmp_path):
    """Every annotation comes back, those without instances and names that are not UTF-8
    included; and the load never holds the whole decoded document
    beside the project (its peak stays near the project's own size: the document alone is
    about as big as the project)."""
    import gc
    import tracemalloc

    from annotator.io.project_file import read_project_document

    odd = "b\udcffd.png"  # a file name that is not UTF-8 (stored as a blob)
    images = [ImageRecord(f"im{i:04d}.png", 64, 48) for i in range(1500)] + [ImageRecord(odd)]
    kp = (Keypoint(1, 2, Visibility.VISIBLE), Keypoint(), Keypoint(3, 4, Visibility.OCCLUDED))
    anns = {f"im{i:04d}.png": ImageAnnotation(
        tuple(Instance(kp, (1.0, 2.0, 3.0, 4.0), 0.5, None) for _ in range(i % 4)),
        ImageStatus.REVIEWED if i % 4 == 0 else ImageStatus.PREDICTED) for i in range(1500)}
    anns[odd] = ImageAnnotation((Instance(kp),), ImageStatus.REFERENCE)
    project = Project(str(tmp_path), images, SCHEMA, anns)
    path = tmp_path / "p.kpproj"
    save_project(project, path)

    store = ProjectStore(path, readonly=True)
    try:
        entries = list(store.annotation_entries())
    finally:
        store.close()
    assert len(entries) == len(anns) and {p for p, _ in entries} == set(anns)
    assert sum(not e["instances"] for _, e in entries) == 375  # every 4th: reviewed, none

    gc.collect()
    tracemalloc.start()
    got = load_project(path)
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert project_to_dict(got) == project_to_dict(project)
    assert got.annotation("im0000.png").instances == ()
    assert got.annotation("im0000.png").status is ImageStatus.REVIEWED
    del got
    gc.collect()
    tracemalloc.start()
    doc = read_project_document(path)  # the whole document, as the load used to hold it
    document = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del doc
    assert document > 0.5 * kept  # the document is no small thing beside the project
    assert peak < kept + 0.5 * document, (kept, peak, document)


def test_an_instance_without_its_annotation_row_is_named(tmp_path):
    from annotator.io.project_file import ProjectFileError

    path = tmp_path / "p.kpproj"
    save_project(rich_project(tmp_path), path)
    with contextlib.closing(sqlite3.connect(path)) as con, con:  # committed, then closed
        con.execute("DELETE FROM annotations WHERE path = 'reviewed.png'")
    with pytest.raises(ProjectFileError, match="reviewed.png.*no annotation row"):
        load_project(path)


def test_a_pinned_load_needs_a_store(tmp_path):
    from annotator.io.project_file import ProjectFileError, save_json_copy

    path = tmp_path / "p.kpproj.json"
    save_json_copy(rich_project(tmp_path), path)
    pinned: list[bool] = []
    with pytest.raises(ProjectFileError, match="not a project store"):
        load_project(path, pinned=lambda: pinned.append(True))
    assert not pinned
    store = tmp_path / "p.kpproj"
    save_project(rich_project(tmp_path), store)
    assert project_to_dict(load_project(store, pinned=lambda: pinned.append(True))) \
        == project_to_dict(rich_project(tmp_path)) and pinned == [True]
