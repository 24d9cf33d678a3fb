"""The whole workflow driven through the widgets: create, label, propagate, review, export,
reopen."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QFileDialog

from annotator.domain import ImageStatus, Origin, Visibility
from annotator.gui.gallery import ERROR_ROLE
from annotator.gui.schema_dialog import SchemaDialog
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    ROOT,
    image_folder,
    make_window,
    no_thread_leaks,
    qt_isolated,
    show_image,
    wait_image,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")
TRUTH = json.loads((ROOT / "resources" / "demo" / "ground_truth.json").read_text())


def click_gallery(qtbot, window, path):  # noqa: ANN001, ANN201
    gallery = window.editor.gallery
    index = gallery.view_index(gallery.model.row_of(path))
    gallery.view.scrollTo(index)
    rect = gallery.view.visualRect(index)
    qtbot.mouseClick(gallery.view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert window.editor.current_path == path
    wait_image(window, path)  # decoded on a pool thread


def widget_point(canvas, x, y):  # noqa: ANN001, ANN201
    p = canvas.to_widget(x, y)
    return QPoint(round(p.x()), round(p.y()))


def keypoints(project, path):  # noqa: ANN001, ANN201
    return project.annotation(path).instances[0].keypoints


def test_full_workflow(qtbot, tmp_path, image_folder, monkeypatch):  # noqa: F811
    project_file = str(tmp_path / "cats.kpproj")
    export_file = str(tmp_path / "export.json")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(image_folder))
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (project_file, ""))

    def fill_schema(dialog: SchemaDialog) -> int:
        dialog.template_box.setCurrentText("cat_face")
        qtbot.mouseClick(dialog.template_button, Qt.MouseButton.LeftButton)
        dialog.new_name.setText("chin")
        qtbot.mouseClick(dialog.add_button, Qt.MouseButton.LeftButton)
        assert dialog.schema.keypoints[-1] == "chin"
        dialog.table.setCurrentCell(len(dialog.schema) - 1, 0)
        qtbot.mouseClick(dialog.remove_button, Qt.MouseButton.LeftButton)
        dialog.skeleton.a.setCurrentIndex(3)  # left_ear - right_ear
        dialog.skeleton.b.setCurrentIndex(4)
        qtbot.mouseClick(dialog.skeleton.add_button, Qt.MouseButton.LeftButton)
        return SchemaDialog.DialogCode.Accepted

    monkeypatch.setattr(SchemaDialog, "exec", fill_schema)

    # 1. create the project from the welcome page
    window = make_window(qtbot)
    qtbot.mouseClick(window.welcome.new_button, Qt.MouseButton.LeftButton)
    project = window.project
    assert project is not None and len(project) == 7
    assert project.schema.name == "cat_face" and len(project.schema) == 6
    assert (3, 4) in project.schema.skeleton
    assert window.stack.currentWidget() is window.editor

    # 2. label the reference by clicking; the current keypoint advances by itself
    click_gallery(qtbot, window, "chelsea.jpg")
    canvas = window.editor.canvas
    truth = np.array(TRUTH["images"]["chelsea.jpg"])
    for i, (x, y) in enumerate(truth):
        assert window.editor.current_keypoint == i
        qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, x, y))
    placed = keypoints(project, "chelsea.jpg")
    tol = 1.0 / canvas.scale + 0.5
    assert all(kp.v == Visibility.VISIBLE and kp.origin == Origin.MANUAL for kp in placed)
    assert np.abs(np.array([(k.x, k.y) for k in placed]) - truth).max() <= tol
    # placing points never makes a reference by itself; the button does, visibly
    assert project.status("chelsea.jpg") == ImageStatus.UNLABELLED
    assert "not a reference yet" in window.editor.title.text()
    qtbot.mouseClick(window.editor.reference_button, Qt.MouseButton.LeftButton)
    assert project.status("chelsea.jpg") == ImageStatus.REFERENCE
    assert not window.editor.reference_button.isEnabled()
    assert "6. mouth   placed" in window.editor.keypoints.item(5).text()

    # 3. propagate on the worker; predictions stream into the gallery
    with qtbot.waitSignal(window.controller.run_finished, timeout=60_000) as done:
        qtbot.mouseClick(window.editor.propagate_button, Qt.MouseButton.LeftButton)
    assert done.args == ["done"]
    for name in TRUTH["images"]:
        if name != "chelsea.jpg":
            assert project.status(name) == ImageStatus.PREDICTED, name
    model = window.editor.gallery.model
    assert model.index(model.row_of("zz_broken.jpg")).data(ERROR_ROLE)
    assert project.status("zz_broken.jpg") == ImageStatus.UNLABELLED
    assert window.messages == []

    # 4. correct one point by a drag: it becomes reviewed, one undo step for the whole drag
    target = "chelsea_crop.jpg"
    click_gallery(qtbot, window, target)
    nose = keypoints(project, target)[2]
    assert nose.origin == Origin.PREDICTED
    goal = TRUTH["images"][target][2]
    start = widget_point(canvas, nose.x, nose.y)
    end = widget_point(canvas, *goal)
    steps_before = len(project.history._done)
    QTest.mousePress(canvas, Qt.MouseButton.LeftButton, pos=start)
    for t in np.linspace(0, 1, 6)[1:]:
        QTest.mouseMove(canvas, start + (end - start) * float(t))
    QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=end)
    moved = keypoints(project, target)[2]
    assert moved.origin == Origin.REVIEWED
    assert abs(moved.x - goal[0]) <= tol and abs(moved.y - goal[1]) <= tol
    assert len(project.history._done) == steps_before + 1
    assert project.history.undo_text == "Move nose"
    assert window.editor.current_keypoint == 2

    # 5. visibility by key (1 = occluded) and by the context menu
    window.activateWindow()
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_1)
    assert keypoints(project, target)[2].v == Visibility.OCCLUDED
    canvas.visibility_menu(0).actions()[1].trigger()  # left_eye occluded
    assert keypoints(project, target)[0].v == Visibility.OCCLUDED
    canvas.visibility_menu(0).actions()[0].trigger()  # and visible again
    assert keypoints(project, target)[0].v == Visibility.VISIBLE

    # 6. undo / redo with the keyboard
    ctrl = Qt.KeyboardModifier.ControlModifier
    qtbot.keyClick(canvas, Qt.Key.Key_Z, ctrl)  # left_eye back to occluded
    qtbot.keyClick(canvas, Qt.Key.Key_Z, ctrl)  # left_eye back to visible (predicted)
    qtbot.keyClick(canvas, Qt.Key.Key_Z, ctrl)  # nose back to visible
    qtbot.keyClick(canvas, Qt.Key.Key_Z, ctrl)  # the drag, in one step
    assert keypoints(project, target)[2] == nose
    shift_ctrl = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
    qtbot.keyClick(canvas, Qt.Key.Key_Z, shift_ctrl)  # drag again
    qtbot.keyClick(canvas, Qt.Key.Key_Z, shift_ctrl)  # nose occluded again
    after = keypoints(project, target)[2]
    assert after.origin == Origin.REVIEWED and after.v == Visibility.OCCLUDED
    assert abs(after.x - goal[0]) <= tol

    # 7. accept: reviewed, becomes a reference, the view moves on
    qtbot.mouseClick(window.editor.accept_button, Qt.MouseButton.LeftButton)
    assert project.status(target) == ImageStatus.REVIEWED
    assert target in project.reference_paths()
    assert window.editor.current_path != target
    # placed keypoints are reviewed now (ones not found stay unlabelled, with their score)
    assert all(kp.origin != Origin.PREDICTED for kp in keypoints(project, target)
               if kp.labelled)

    # 8. propagate again: only the remaining images are updated
    before_ref = project.annotation(target)
    with qtbot.waitSignal(window.controller.run_finished, timeout=60_000):
        window.act_propagate.trigger()
    assert project.annotation(target) == before_ref

    # 9. export through the File menu and check it with pycocotools
    from annotator.gui.export_dialog import ExportDialog

    def with_predictions(dialog: ExportDialog) -> int:
        assert dialog.format() == "coco"  # Ctrl+E: the export dialog with COCO chosen
        assert dialog.reviewed.isChecked()  # the default: only what a person checked
        dialog.path_edit.setText(str(export_file))
        dialog.predictions.setChecked(True)
        return ExportDialog.DialogCode.Accepted

    monkeypatch.setattr(ExportDialog, "exec", with_predictions)
    with qtbot.waitSignal(window.exporter.finished, timeout=30_000) as exported:
        window.act_export.trigger()
    assert exported.args[1] == ""
    assert "all unreviewed predictions" in window.statusBar().currentMessage()
    assert json.loads(open(export_file).read())["info"]["annotator_export"]["scope"] == (
        "predictions")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO(export_file)
    cat = coco.loadCats(coco.getCatIds())[0]
    assert cat["keypoints"] == list(project.schema.keypoints)
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == 6  # reference + 5 predicted/reviewed; the broken image has none
    by_file = {coco.imgs[a["image_id"]]["file_name"]: a for a in anns}
    assert by_file[target]["keypoints"][2 * 3 + 2] == 1  # nose occluded
    results = coco.loadRes([dict(a, score=1.0) for a in anns])
    ev = COCOeval(coco, results, "keypoints")
    ev.params.kpt_oks_sigmas = np.full(len(cat["keypoints"]), 0.05)
    ev.evaluate()
    ev.accumulate()

    # 10. close (autosave flushes) and reopen from the recent list
    final = project.annotations()
    window.close()
    second = make_window(qtbot)
    recent = second.welcome.recent
    assert recent.count() >= 1
    item = recent.item(0)
    assert item.data(Qt.ItemDataRole.UserRole) == project_file
    recent.itemActivated.emit(item)
    reopened = second.project
    assert reopened is not None and reopened.schema == project.schema
    assert reopened.annotations().keys() == final.keys()
    for path, ann in final.items():
        got = reopened.annotation(path)
        assert got.status == ann.status
        for a, b in zip(got.instances[0].keypoints, ann.instances[0].keypoints):
            assert (a.v, a.origin) == (b.v, b.origin)
            assert abs(a.x - b.x) < 1e-2 and abs(a.y - b.y) < 1e-2
    second.close()


def test_manual_annotation_autosaves(qtbot, tmp_path):  # noqa: ANN001
    """No explicit save needed: an edit reaches the file after the autosave delay."""
    from annotator.io.project_file import load_project

    window = make_window(qtbot)
    project = window.open_demo(str(tmp_path / "demo"))
    assert project is not None
    show_image(window, "chelsea_small.jpg")
    canvas = window.editor.canvas
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 50, 40))
    qtbot.waitUntil(lambda: not window.autosaver.dirty, timeout=5000)
    saved = load_project(window.project_path)
    assert saved.annotation("chelsea_small.jpg").has_labels
    window.close()


def test_editor_decodes_off_thread_drops_stale(qtbot, tmp_path, monkeypatch):  # noqa: ANN001
    import time

    from annotator.io.video import ImageSource

    real = ImageSource.load

    def slow(self, path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        time.sleep(0.3)
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(ImageSource, "load", slow)  # what the canvas loader decodes through
    window = make_window(qtbot)
    assert window.open_demo(str(tmp_path / "demo")) is not None  # chelsea.jpg starts decoding
    editor = window.editor
    shown: list[str] = []
    editor.image_shown.connect(shown.append)
    t = time.perf_counter()
    editor.show_image("chelsea_small.jpg")
    editor.show_image("chelsea_mirror.jpg")  # before any decode could finish
    elapsed = time.perf_counter() - t
    assert elapsed < 0.3, f"show_image waited for a decode ({elapsed:.2f} s)"
    assert editor.canvas.image_size is None and editor.shown_path is None  # placeholder
    assert editor.keypoints.count() == 6  # the rest of the page is there already
    qtbot.waitUntil(lambda: editor.shown_path == "chelsea_mirror.jpg", timeout=10_000)
    qtbot.wait(800)  # late results of the images passed by must not replace it
    assert shown == ["chelsea_mirror.jpg"]
    assert editor.canvas.image_size == (451, 300)
    # back to an image decoded before: from the cache, at once
    qtbot.waitUntil(lambda: editor.images.pending == 0, timeout=10_000)
    editor.show_image("chelsea.jpg")
    assert editor.shown_path == "chelsea.jpg" and editor.canvas.image_size == (451, 300)
    window.close()


def test_unreadable_image_shows_a_message(qtbot, tmp_path, image_folder):  # noqa: ANN001, F811
    from annotator.domain import KeypointSchema

    window = make_window(qtbot)
    path = str(tmp_path / "p.kpproj.json")
    assert window.new_project(str(image_folder), KeypointSchema("thing", ("a", "b")), path)
    show_image(window, "zz_broken.jpg")
    assert window.editor.canvas.image_size is None
    assert window.editor.gallery.model.error("zz_broken.jpg")
    show_image(window, "chelsea.jpg")  # and the next image still shows
    assert window.editor.canvas.image_size == (451, 300)
    window.close()
