"""Exports by a child process that reads the project store (annotator.jobs.store_export):
the same files as the in-process writers, the snapshot pinned between two autosave
transactions (edits before included, edits after not), cancel (nothing left, the child
gone, the autosaver unharmed) and errors named."""

from __future__ import annotations

import json
import random
import sys

import pytest

from annotator.domain import ImageStatus, Keypoint, Visibility
from annotator.domain.annotation import ImageAnnotation, Instance
from annotator.domain.project import ImageRecord, Project
from annotator.domain.schema import KeypointSchema
from annotator.io.autosave import Autosaver
from annotator.io.coco import ExportChoice, ExportScope, write_coco
from annotator.io.formats import ExportOptions, FormatError, export_project
from annotator.io.project_file import load_project, project_to_dict, save_project
from annotator.jobs import store_export
from annotator.jobs.progress import Cancelled
from annotator.jobs.store_export import StoreExport, StoreExportChild
from tests.builders import blank_images
from tests.test_io_store import rich_project

EVERYTHING = ExportOptions(include_predictions=True)
ALL_COCO = ExportChoice(scope=ExportScope.PREDICTIONS)


def saved(tmp_path, project):  # noqa: ANN001, ANN201
    blank_images(tmp_path, {"reviewed.png": (30, 20)})  # the one image of unknown size
    store = tmp_path / "p.kpproj"
    save_project(project, store)
    return store, load_project(store)


def in_child(autosaver: Autosaver, job: StoreExport, progress=None):  # noqa: ANN001, ANN201
    child = StoreExportChild(job)
    return child.finish(autosaver.after_writes(child.pin), progress)


def coco_doc(path) -> dict:  # noqa: ANN001
    doc = json.loads(path.read_text())
    doc.pop("info", None)
    return doc


def test_the_child_writes_what_the_in_process_writers_write(tmp_path):
    blank_images(tmp_path, {"ref.png": (640, 480), "sub/prédit.png": (320, 200),
                            "empty.png": (10, 10)})  # the YOLO dataset copies them
    store, project = saved(tmp_path, rich_project(tmp_path))
    a = Autosaver(project, store, background=True)
    try:
        out = tmp_path / "out"
        progress: list[tuple[int, int]] = []
        got = in_child(a, StoreExport(str(store), "coco", str(out / "c.json"), choice=ALL_COCO),
                       lambda d, t: progress.append((d, t)))
        write_coco(project, out / "ref.json", ALL_COCO)
        assert coco_doc(out / "c.json") == coco_doc(out / "ref.json")
        assert (got.images, got.annotations) == (4, 5)
        assert progress[-1][0] == progress[-1][1] > 0  # relayed up to the end
        for fmt, name in (("label-studio", "ls.json"), ("yolo-pose", "yolo")):
            report = export_project(project, fmt, out / f"ref-{name}", EVERYTHING)
            got = in_child(a, StoreExport(str(store), fmt, str(out / name), options=EVERYTHING))
            assert (got.images, got.annotations, got.summary) == (
                report.images, report.instances,
                report.summary().replace(f"ref-{name}", name))
        assert json.loads((out / "ls.json").read_text()) == \
            json.loads((out / "ref-ls.json").read_text())
        ref_labels = sorted(p.relative_to(out / "ref-yolo") for p in
                            (out / "ref-yolo").rglob("*.txt"))
        labels = sorted(p.relative_to(out / "yolo") for p in (out / "yolo").rglob("*.txt"))
        assert labels == ref_labels and labels
        for rel in labels:
            assert (out / "yolo" / rel).read_text() == (out / "ref-yolo" / rel).read_text()
    finally:
        a.close()


def test_the_export_holds_the_edits_made_before_it_and_none_after(tmp_path):
    store, project = saved(tmp_path, rich_project(tmp_path))
    a = Autosaver(project, store, background=True)
    try:
        before = Keypoint(42.0, 43.0, Visibility.VISIBLE)
        project.set_keypoint("reviewed.png", 0, before)  # not yet committed, probably
        child = StoreExportChild(StoreExport(str(store), "coco", str(tmp_path / "c.json"),
                                             choice=ALL_COCO))
        pinned = a.after_writes(child.pin)
        project.set_keypoint("reviewed.png", 2, Keypoint(99.0, 98.0, Visibility.VISIBLE))
        project.set_status("empty.png", ImageStatus.REVIEWED)
        child.finish(pinned)
        doc = json.loads((tmp_path / "c.json").read_text())
        image_id = next(i["id"] for i in doc["images"] if i["file_name"] == "reviewed.png")
        kps = next(x["keypoints"] for x in doc["annotations"] if x["image_id"] == image_id)
        assert kps[0:3] == [42.0, 43.0, 2]  # the edit made before the export
        assert kps[6:9] == [6.0, 7.0, 2]  # not the one made after
        a.flush()
        assert load_project(store).annotation("reviewed.png").instances[0].keypoints[2].x == 99.0
    finally:
        a.close()


def big_project(root, n: int) -> Project:  # noqa: ANN001
    rng = random.Random(1)
    schema = KeypointSchema("animal", tuple(f"k{i}" for i in range(12)))
    images = [ImageRecord(f"f/{i:05d}.png", 640, 480) for i in range(n)]
    anns = {r.path: ImageAnnotation(tuple(
        Instance(tuple(Keypoint(rng.uniform(0, 600), rng.uniform(0, 400), Visibility.VISIBLE)
                       for _ in range(12)), (1.0, 2.0, 300.0, 200.0)) for _ in range(3)),
        ImageStatus.REVIEWED) for r in images}
    return Project(str(root), images, schema, anns)


def test_a_cancel_stops_the_child_leaves_nothing_and_the_autosaver_goes_on(tmp_path):
    store, project = saved(tmp_path, big_project(tmp_path, 3000))
    a = Autosaver(project, store, background=True)
    out = tmp_path / "out" / "c.json"
    out.parent.mkdir()
    try:
        child = StoreExportChild(StoreExport(str(store), "coco", str(out), choice=ALL_COCO))
        seen: list[int] = []

        def cancel_once_it_works(done: int, total: int) -> None:
            seen.append(done)
            if done > 0:
                raise Cancelled()

        with pytest.raises(Cancelled):
            child.finish(a.after_writes(child.pin), cancel_once_it_works)
        assert child.proc.poll() is not None  # reaped
        assert not out.exists() and list(out.parent.iterdir()) == []
        # a cancel before the snapshot was even taken: the child stops before reading
        child = StoreExportChild(StoreExport(str(store), "coco", str(out), choice=ALL_COCO))
        with pytest.raises(Cancelled):
            child.finish(a.after_writes(child.pin), lambda d, t: (_ for _ in ()).throw(
                Cancelled()))
        assert child.proc.poll() is not None and not out.exists()
        project.set_status("f/00000.png", ImageStatus.PREDICTED)  # the writer still works
        a.flush()
        assert load_project(store).status("f/00000.png") is ImageStatus.PREDICTED
    finally:
        a.close()


def test_errors_in_the_child_are_named(tmp_path, monkeypatch):
    store, project = saved(tmp_path, rich_project(tmp_path))
    a = Autosaver(project, store, background=True)
    try:
        (tmp_path / "a_file").write_text("x")
        with pytest.raises(FormatError, match="a_file"):
            in_child(a, StoreExport(str(store), "coco", str(tmp_path / "a_file" / "c.json"),
                                    choice=ALL_COCO))
        with pytest.raises(FormatError, match="must be new or empty"):
            (tmp_path / "full").mkdir()
            (tmp_path / "full" / "x").write_text("x")
            in_child(a, StoreExport(str(store), "yolo-pose", str(tmp_path / "full"),
                                    options=EVERYTHING))
        with pytest.raises(FormatError, match="not a project store"):
            in_child(a, StoreExport(str(tmp_path / "a_file"), "coco",
                                    str(tmp_path / "c.json"), choice=ALL_COCO))
        monkeypatch.setattr(store_export, "child_command",
                            lambda module: [sys.executable, "-c", "import sys; sys.exit(3)"])
        with pytest.raises(FormatError, match=r"stopped unexpectedly \(exit code 3\)"):
            in_child(a, StoreExport(str(store), "coco", str(tmp_path / "c.json"),
                                    choice=ALL_COCO))
        assert not (tmp_path / "c.json").exists()
    finally:
        a.close()


def test_after_writes_runs_between_two_transactions_and_reports_failures(tmp_path):
    store, project = saved(tmp_path, rich_project(tmp_path))
    a = Autosaver(project, store, background=True)
    try:
        project.set_status("empty.png", ImageStatus.REVIEWED)
        seen = a.after_writes(lambda: load_project(store).status("empty.png")).result(10)
        assert seen is ImageStatus.REVIEWED  # committed before the call ran
        with pytest.raises(ZeroDivisionError):
            a.after_writes(lambda: 1 / 0).result(10)
    finally:
        a.close()
    with pytest.raises(OSError, match="closed"):
        a.after_writes(lambda: None).result(1)


def test_a_pinned_load_is_the_file_as_it_was_when_pinned(tmp_path):
    """What another connection commits after ``pinned()`` is not in the loaded project."""
    store, project = saved(tmp_path, rich_project(tmp_path))
    a = Autosaver(project, store)  # commits each edit before the edit call returns

    def commit_an_edit_now() -> None:
        project.set_status("empty.png", ImageStatus.REVIEWED)
        assert not a.dirty

    try:
        pinned = load_project(store, pinned=commit_an_edit_now)
        assert pinned.status("empty.png") is ImageStatus.UNLABELLED
        assert load_project(store).status("empty.png") is ImageStatus.REVIEWED
        assert project_to_dict(pinned) != project_to_dict(project)
        with pytest.raises(ValueError, match="not a project store"):
            save_project(project, tmp_path / "p.kpproj.json")
            load_project(tmp_path / "p.kpproj.json", pinned=lambda: None)
    finally:
        a.close()


def test_the_backup_is_the_store_as_opened_and_no_write_waits_for_it(tmp_path, monkeypatch):
    import threading

    from annotator.io import autosave
    from annotator.io.store import backup_path

    store, project = saved(tmp_path, rich_project(tmp_path))
    release, copying = threading.Event(), threading.Event()
    real_copy = autosave.copy_store

    def held_copy(src, dest):  # noqa: ANN001, ANN202
        copying.set()
        assert release.wait(30)
        real_copy(src, dest)

    monkeypatch.setattr(autosave, "copy_store", held_copy)
    a = Autosaver(project, store, background=True, backup=True)
    try:
        assert copying.wait(30)
        project.set_status("empty.png", ImageStatus.REVIEWED)
        a.flush()  # returns while the backup is still being copied
        assert a.backup_thread.is_alive()
        assert load_project(store).status("empty.png") is ImageStatus.REVIEWED
        pinned = a.after_writes(lambda: "ran").result(10)  # an export's pin does not wait
        assert pinned == "ran"
    finally:
        release.set()
        a.close()  # waits for the backup
    assert not a.backup_thread.is_alive()
    assert load_project(backup_path(store)).status("empty.png") is ImageStatus.UNLABELLED


def test_detaching_without_waiting_closes_the_store_on_a_thread_of_its_own(tmp_path, monkeypatch):
    """Closing the last connection checkpoints the write-ahead log (I/O): a project closed
    in the window leaves that to a thread, with every edit already committed."""
    import threading

    from annotator.io.store import ProjectStore

    store, project = saved(tmp_path, rich_project(tmp_path))
    release, closing = threading.Event(), threading.Event()
    real_close = ProjectStore.close

    def held_close(self):  # noqa: ANN001, ANN202
        if self is a._store:  # the autosaver's own connection; not load_project's below
            closing.set()
            assert release.wait(30)
        real_close(self)

    a = Autosaver(project, store, background=True, backup=False)
    project.set_status("empty.png", ImageStatus.REVIEWED)
    monkeypatch.setattr(ProjectStore, "close", held_close)
    try:
        a.close(wait_backup=False)  # returns while the store is still being closed
        assert closing.wait(30) and a.close_thread.is_alive()
        assert a.threads_left() == [a.close_thread]
        assert load_project(store).status("empty.png") is ImageStatus.REVIEWED  # committed
    finally:
        release.set()
    a.close_thread.join(30)
    assert a.threads_left() == []
    monkeypatch.undo()
    assert load_project(store).status("empty.png") is ImageStatus.REVIEWED


def test_detaching_and_waiting_closes_the_store_before_it_returns(tmp_path, monkeypatch):
    from annotator.io.store import ProjectStore

    store, project = saved(tmp_path, rich_project(tmp_path))
    closed: list[str] = []
    real_close = ProjectStore.close
    monkeypatch.setattr(ProjectStore, "close",
                        lambda self: (closed.append(threading_name()), real_close(self)))
    a = Autosaver(project, store, background=True, backup=False)
    a.close()  # as when the application quits
    assert closed == ["MainThread"] and a.close_thread is None and a.threads_left() == []


def threading_name() -> str:
    import threading

    return threading.current_thread().name
