"""Issue 22's small defects and export defaults: undo-then-click places the undone point,
exports never default into the image folder and a rescan never adds exported copies."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer

from annotator.io.formats import ExportOptions
from tests.test_gui_review_loop import CTRL, TARGET, demo, kp, widget_point
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    make_window,
    no_thread_leaks,
    qt_isolated,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")


def test_after_undoing_a_placement_the_next_click_places_that_point(qtbot, tmp_path):
    window, project = demo(qtbot, tmp_path)
    editor, canvas = window.editor, window.editor.canvas
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 60, 50))
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 80, 50))
    assert kp(project, TARGET, 1).labelled and editor.current_keypoint == 2
    qtbot.keyClick(canvas, Qt.Key.Key_Z, CTRL)  # undo the second placement
    assert not kp(project, TARGET, 1).labelled
    assert editor.current_keypoint == 1  # the selection follows the undo
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 90, 55))
    assert kp(project, TARGET, 1).x == pytest.approx(90, abs=1)  # the undone point again
    assert not kp(project, TARGET, 2).labelled
    window.close()


def test_exports_default_outside_the_image_folder_and_are_never_rescanned(qtbot, tmp_path,
                                                                          monkeypatch):
    from annotator.domain import KeypointSchema

    window, _demo = demo(qtbot, tmp_path)
    images = tmp_path / "demo" / "images"
    window.close()
    window = make_window(qtbot)
    inside = images / "photos.kpproj"  # the project file inside the image folder
    project = window.new_project(str(images), KeypointSchema("cat", ("a", "b")), str(inside))
    assert project is not None
    n = len(project)
    default = Path(window.default_export_dir()).resolve()
    root = images.resolve()
    assert default != root and root not in default.parents
    # the user exports into the image folder anyway (a folder format copies the images)
    project.set_keypoint(project.images[0].path, 0, _visible(5, 5))
    project.set_status(project.images[0].path, _reviewed())
    out = images / "yolo_export"
    from annotator.gui import export_job as mw

    threads = []
    real = mw.export_project

    def spy(*args):  # noqa: ANN002, ANN202
        threads.append(threading.current_thread() is threading.main_thread())
        return real(*args)

    monkeypatch.setattr(mw, "export_project", spy)
    assert window.export_as("yolo-pose", str(out), ExportOptions())  # on a worker thread
    window.wait_export_as()
    assert threads == [False] and "yolo" in window.statusBar().currentMessage().lower()
    assert any(p.suffix == ".jpg" for p in out.rglob("*"))  # copies of images are there
    assert window.rescan_images() == [] and len(project) == n
    window.close()
    again = make_window(qtbot)
    reopened = again.open_project(str(inside))  # and the rescan on open skips them too
    assert reopened is not None and len(reopened) == n
    assert not any(r.path.startswith("yolo_export/") for r in reopened.images)
    again.close()


def test_the_new_project_dialog_proposes_a_file_beside_the_image_folder(qtbot, tmp_path,
                                                                          monkeypatch):
    from annotator.gui import main_window as mw

    window = make_window(qtbot)
    folder = tmp_path / "shots"
    folder.mkdir()
    proposed = []
    monkeypatch.setattr(window, "_ask_existing_dir", lambda *a: str(folder))
    monkeypatch.setattr(mw.SchemaDialog, "exec", lambda self: mw.SchemaDialog.DialogCode.Rejected)
    window.new_project_dialog()  # the schema dialog cancelled: nothing asked yet
    monkeypatch.setattr(mw.SchemaDialog, "exec", lambda self: mw.SchemaDialog.DialogCode.Accepted)
    monkeypatch.setattr(window, "_ask_save_file", lambda title, start, f: proposed.append(start))
    window.new_project_dialog()
    assert proposed and os.path.dirname(proposed[0]) == str(tmp_path)
    assert proposed[0].endswith("shots.kpproj")
    window.close()


def _visible(x, y):  # noqa: ANN001, ANN202
    from annotator.domain import Keypoint, Visibility

    return Keypoint(float(x), float(y), Visibility.VISIBLE)


def _reviewed():  # noqa: ANN202
    from annotator.domain import ImageStatus

    return ImageStatus.REVIEWED


def test_review_counts_are_kept_incrementally(qtbot, tmp_path, monkeypatch):
    from dataclasses import replace

    from annotator.domain import ImageAnnotation, ImageStatus, Instance, Keypoint, Origin

    window, project = demo(qtbot, tmp_path)

    def recount():  # noqa: ANN202
        done = sum(project.status(r.path) in (ImageStatus.REVIEWED, ImageStatus.REFERENCE)
                   for r in project.images)
        t = project.settings.review_threshold
        need = sum(a.status == ImageStatus.PREDICTED
                   and (a.worst_confidence() is None or a.worst_confidence() < t)
                   for a in real().values())
        return done, len(project), need

    real = project.annotations
    assert window.review_counts() == recount()
    calls = []
    monkeypatch.setattr(project, "annotations", lambda: calls.append(1) or real())
    k = len(project.schema)
    low = ImageAnnotation((Instance(tuple(Keypoint(1, 1, 2, Origin.PREDICTED, 0.1)
                                          for _ in range(k))),), ImageStatus.PREDICTED)
    project.set_annotation(TARGET, low, "predict")
    assert window.review_counts() == recount()
    project.set_status(TARGET, ImageStatus.REVIEWED)
    project.undo()
    project.undo()
    assert window.review_counts() == recount()
    assert calls == []  # no edit above looked at every image
    project.set_settings(replace(project.settings, review_threshold=0.05))  # whole project
    assert window.review_counts() == recount()
    window.close()


def test_one_image_is_not_one_images(qtbot, tmp_path):
    from annotator.domain import ImageStatus
    from annotator.gui.export_dialog import ExportDialog

    window, project = demo(qtbot, tmp_path)
    done = [r.path for r in project.images
            if project.status(r.path) in (ImageStatus.REVIEWED, ImageStatus.REFERENCE)]
    for path in done[1:]:
        project.set_status(path, ImageStatus.UNLABELLED)
    dialog = ExportDialog(project, "demo", str(tmp_path))
    assert dialog.reviewed.text().endswith("(1 image)")
    dialog.close()
    window.close()


def test_closing_a_project_leaves_the_store_close_to_a_thread_the_quit_waits_for(
        qtbot, tmp_path, monkeypatch):
    from annotator.io.project_file import load_project
    from annotator.io.store import ProjectStore

    window, project = demo(qtbot, tmp_path)
    path, store = window.project_path, window.autosaver._store
    release, closing = threading.Event(), threading.Event()
    real_close = ProjectStore.close

    def held_close(self):  # noqa: ANN001, ANN202
        if self is store:
            closing.set()
            assert release.wait(30)
        real_close(self)

    monkeypatch.setattr(ProjectStore, "close", held_close)
    project.move_keypoint(TARGET, 0, 12.0, 13.0)  # the first edit, not yet autosaved
    window.close_project()  # returns while the store's connection is still open
    assert window.project is None and closing.wait(30)
    assert load_project(path).annotation(TARGET).instances[0].keypoints[0].x == 12.0
    closer = [t for t in threading.enumerate() if t.name == "autosave-close"]
    assert closer and closer[0].is_alive()
    threading.Timer(0.3, release.set).start()
    window.close()  # the quit waits for it
    assert not closer[0].is_alive()


def test_closing_a_big_project_frees_its_undo_steps_off_the_gui_thread(
        qtbot, tmp_path, monkeypatch):
    """A propagation's undo step holds thousands of annotations (20-30 ms to free at
    100,000 images): closing hands the steps to the thread that frees the project."""
    import weakref

    from annotator.gui import main_window

    monkeypatch.setattr(main_window, "DROP_IN_BACKGROUND_IMAGES", 1)  # the demo counts as big
    window, project = demo(qtbot, tmp_path)
    path = next(p for p, ann in project.annotations().items() if ann.instances)
    replaced = weakref.ref(project.annotation(path))
    project.move_keypoint(path, 0, 12.0, 13.0)  # the first edit: its step alone holds it
    freed_on: list[str] = []
    weakref.finalize(replaced(), lambda: freed_on.append(threading.current_thread().name))
    gone = weakref.ref(project)
    del project
    window.close_project()
    assert window.project is None
    qtbot.waitUntil(lambda: not window.closing)  # the editor lets go of it, then the frees go
    qtbot.waitUntil(lambda: bool(freed_on) and gone() is None, timeout=10_000)
    assert freed_on == ["drop-project"]
    assert gone() is None  # the steps referred to it: freed after them, on that thread


def test_switching_projects_holds_the_background_frees_until_it_is_done(qtbot, tmp_path):
    """What the switch drops (the old gallery's rows, the old project) is freed after it:
    a free running meanwhile shared the GIL with it and made a close take twice as long."""
    from annotator.gui import release

    window, project = demo(qtbot, tmp_path)
    seen: list[bool] = []
    editor_set = window.editor.set_project

    def watching(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(release._running.is_set())
        return editor_set(*args, **kwargs)

    window.editor.set_project = watching
    window.close_project()
    assert not release._running.is_set()  # held while the close's last steps are to run
    qtbot.waitUntil(lambda: not window.closing)
    assert seen == [False]  # paused while the window switched (the editor a turn later)
    assert release._running.is_set()  # and running again after


def test_a_close_shows_the_welcome_page_at_once_and_puts_the_views_away_turn_by_turn(
        qtbot, tmp_path):
    """The closed project's gallery and image caches (1 ms each at 100,000 images, ten
    times that when the machine slows the GUI thread down) go over the turns after the
    welcome page is on show, one per turn, not in the close's own turn."""
    from annotator.gui.release import frees_held

    window, project = demo(qtbot, tmp_path)
    calls: list[str] = []
    editor_set, loader_set = window.editor.set_project, window.loader.set_root

    def editor_watch(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append("editor")
        QTimer.singleShot(0, lambda: calls.append("event loop"))
        return editor_set(*args, **kwargs)

    def loader_watch(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append("thumbnails")
        return loader_set(*args, **kwargs)

    window.editor.set_project, window.loader.set_root = editor_watch, loader_watch
    window.close_project()
    assert window.project is None and window.stack.currentWidget() is window.welcome
    assert not window.act_save.isEnabled() and "demo" not in window.windowTitle()
    assert calls == [] and window.closing and window.editor.project is project
    assert frees_held() == 1  # the closed project is freed after them
    qtbot.waitUntil(lambda: not window.closing)
    assert calls == ["editor", "event loop", "thumbnails"]  # a turn of the loop between
    assert window.editor.project is None and window.loader._root == ""  # noqa: SLF001
    assert frees_held() == 0
    window.close()


def test_a_closed_project_on_show_until_its_views_are_put_away_is_left_alone(qtbot, tmp_path):
    """Between the close and the turn that puts its views away, nothing due on the editor
    acts on the closed project: the reference pane's update and the gallery's live re-sort
    (started by the run's last results, applied as it closes) are stopped, and images still
    being decoded for it are dropped."""
    window, project = demo(qtbot, tmp_path)
    editor = window.editor
    project.move_keypoint(TARGET, 0, 12.0, 13.0)  # an edit: the views update a moment later
    assert editor._pane_timer.isActive()  # noqa: SLF001
    editor.gallery.live_timer.start()
    decoding = editor.images._generation  # noqa: SLF001
    window.close_project()
    assert window.closing and editor.project is project  # put away a turn later
    assert not editor._pane_timer.isActive()  # noqa: SLF001
    assert not editor.gallery.live_timer.isActive()
    assert editor.images._generation > decoding  # noqa: SLF001  (late results dropped)
    qtbot.waitUntil(lambda: not window.closing)
    window.close()


def test_a_project_opened_right_after_a_close_is_never_put_away_by_the_close(
        qtbot, tmp_path):
    from annotator.gui.release import frees_held

    window, project = demo(qtbot, tmp_path)
    path = window.project_path
    window.close_project()
    assert window.closing
    reopened = window.open_project(path)  # before the close's last steps ran
    assert reopened is not None and not window.closing and frees_held() == 0
    qtbot.wait(100)
    assert window.editor.project is reopened and window.project is reopened
    assert window.loader._root == reopened.image_root  # noqa: SLF001
    assert window.editor.gallery.model.rowCount() == len(reopened)
    window.close()


def test_quitting_right_after_a_close_runs_its_last_steps(qtbot, tmp_path):
    from annotator.gui.release import frees_held

    window, project = demo(qtbot, tmp_path)
    window.close_project()
    assert window.closing
    window.close()
    assert not window.closing and window.editor.project is None and frees_held() == 0
