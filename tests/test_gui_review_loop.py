"""Review-loop integrity (issue 9): undo/redo state in the menu from the first edit, the
interaction model (no stray click changes a placed point, references are explicit), stacked
points, honest Accept."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest

from annotator.domain import (
    ImageAnnotation,
    ImageStatus,
    Instance,
    Keypoint,
    Origin,
    Visibility,
)
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    image_folder,
    make_window,
    no_thread_leaks,
    qt_isolated,
    show_image,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")
CTRL = Qt.KeyboardModifier.ControlModifier
CTRL_SHIFT = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
TARGET = "chelsea_small.jpg"  # unlabelled in the demo


def widget_point(canvas, x, y):  # noqa: ANN001, ANN201
    p = canvas.to_widget(x, y)
    return QPoint(round(p.x()), round(p.y()))


def kp(project, path, i):  # noqa: ANN001, ANN201
    ann = project.annotation(path)
    return ann.instances[0].keypoints[i] if ann.instances else Keypoint()


def demo(qtbot, tmp_path):  # noqa: ANN001, ANN201
    window = make_window(qtbot)
    project = window.open_demo(str(tmp_path / "demo"))
    assert project is not None
    show_image(window, TARGET)
    window.editor.canvas.setFocus()
    return window, project


def drag(canvas, start: QPoint, end: QPoint, steps: int = 5) -> None:  # noqa: ANN001
    QTest.mousePress(canvas, Qt.MouseButton.LeftButton, pos=start)
    for i in range(1, steps + 1):
        QTest.mouseMove(canvas, start + (end - start) * (i / steps))
    QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=end)


def menu_state(window):  # noqa: ANN001, ANN201
    return (window.act_undo.isEnabled(), window.act_undo.text(),
            window.act_redo.isEnabled(), window.act_redo.text())


def test_undo_redo_menu_is_current_from_the_first_edit(qtbot, tmp_path):  # noqa: ANN001
    window, project = demo(qtbot, tmp_path)
    canvas = window.editor.canvas
    assert menu_state(window) == (False, "&Undo", False, "&Redo")

    # the very first edit: a single click that places left_eye
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 60, 50))
    assert kp(project, TARGET, 0).labelled
    assert menu_state(window) == (True, "&Undo Place left_eye", False, "&Redo")

    qtbot.keyClick(canvas, Qt.Key.Key_Z, CTRL)  # undone by the shortcut, menu follows at once
    assert not kp(project, TARGET, 0).labelled
    assert menu_state(window) == (False, "&Undo", True, "&Redo Place left_eye")

    qtbot.keyClick(canvas, Qt.Key.Key_Z, CTRL_SHIFT)  # redo
    assert kp(project, TARGET, 0).labelled
    assert menu_state(window) == (True, "&Undo Place left_eye", False, "&Redo")

    # a drag, undone, then redone with Ctrl+Y
    start = widget_point(canvas, 60, 50)
    drag(canvas, start, start + QPoint(40, 30))
    moved = kp(project, TARGET, 0)
    assert moved.x > 65
    assert menu_state(window) == (True, "&Undo Move left_eye", False, "&Redo")
    qtbot.keyClick(canvas, Qt.Key.Key_Z, CTRL)
    assert kp(project, TARGET, 0).x == pytest.approx(60, abs=1)
    assert menu_state(window) == (True, "&Undo Place left_eye", True, "&Redo Move left_eye")
    qtbot.keyClick(canvas, Qt.Key.Key_Y, CTRL)
    assert kp(project, TARGET, 0) == moved
    assert menu_state(window) == (True, "&Undo Move left_eye", False, "&Redo")

    # undo, then a new edit: the redo history is gone, and the menu says so
    qtbot.keyClick(canvas, Qt.Key.Key_Z, CTRL)
    assert window.act_redo.isEnabled()
    qtbot.keyClick(canvas, Qt.Key.Key_1)  # left_eye occluded: a new edit
    assert kp(project, TARGET, 0).v == Visibility.OCCLUDED
    assert menu_state(window) == (True, "&Undo Set left_eye visibility 1", False, "&Redo")
    window.act_redo.trigger()  # nothing to redo: nothing changes
    assert kp(project, TARGET, 0).v == Visibility.OCCLUDED
    window.close()


def test_stray_clicks_never_move_placed_points(qtbot, tmp_path):  # noqa: ANN001
    window, project = demo(qtbot, tmp_path)
    editor, canvas = window.editor, window.editor.canvas
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 60, 50))
    placed = kp(project, TARGET, 0)
    # placing is not making a reference: the image stays unlabelled until the user says so
    assert project.status(TARGET) == ImageStatus.UNLABELLED
    assert TARGET not in project.reference_paths()
    assert editor.current_keypoint == 1  # moved on to the next unplaced keypoint

    # select the placed point in the list, then click elsewhere: refused, with a message
    editor.set_current_keypoint(0)
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 120, 90))
    assert kp(project, TARGET, 0) == placed
    assert "drag it" in window.statusBar().currentMessage()
    steps = len(project.history._done)

    # a shaky click on the point (moves less than the drag distance) is not a move
    at = widget_point(canvas, placed.x, placed.y)
    QTest.mousePress(canvas, Qt.MouseButton.LeftButton, pos=at)
    QTest.mouseMove(canvas, at + QPoint(2, 1))
    QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=at + QPoint(2, 1))
    assert kp(project, TARGET, 0) == placed
    assert len(project.history._done) == steps

    # an explicit re-place: R, then one click; the next click is a plain click again
    qtbot.keyClick(canvas, Qt.Key.Key_R)
    assert canvas.replace_armed
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 120, 90))
    replaced = kp(project, TARGET, 0)
    assert replaced.x == pytest.approx(120, abs=1) and replaced.y == pytest.approx(90, abs=1)
    assert not canvas.replace_armed
    editor.set_current_keypoint(0)
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 30, 30))
    assert kp(project, TARGET, 0) == replaced

    # a reviewed prediction is just as safe
    pred = Keypoint(200, 100, Visibility.VISIBLE, Origin.PREDICTED, 0.9)
    project.set_annotation(TARGET, ImageAnnotation((Instance((pred,) * 6),),
                                                   ImageStatus.PREDICTED), "predict")
    editor.set_current_keypoint(2)
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 30, 30))
    assert kp(project, TARGET, 2) == pred

    # the explicit reference action, by its key: visible in the title
    qtbot.keyClick(canvas, Qt.Key.Key_M)
    assert project.status(TARGET) == ImageStatus.REFERENCE
    assert "reference" in editor.title.text()
    window.close()


def test_selected_point_wins_a_stack_and_clicks_cycle_it(qtbot, tmp_path):  # noqa: ANN001
    window, project = demo(qtbot, tmp_path)
    editor, canvas = window.editor, window.editor.canvas
    same = Keypoint(100, 80, Visibility.VISIBLE, Origin.MANUAL)
    kps = (same, same, same, Keypoint(), Keypoint(), Keypoint())
    project.set_annotation(TARGET, ImageAnnotation((Instance(kps),)), "stack")
    editor.set_current_keypoint(1)  # the middle one of three stacked points
    at = widget_point(canvas, 100, 80)
    drag(canvas, at, at + QPoint(30, 0))
    assert kp(project, TARGET, 1).x > 110  # the selected one moved
    assert kp(project, TARGET, 0) == same and kp(project, TARGET, 2) == same
    window.act_undo.trigger()

    # clicks on the stack (no drag) step through the points under the cursor
    editor.set_current_keypoint(0)
    seen = []
    for _ in range(3):
        qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=at)
        seen.append(editor.current_keypoint)
    assert seen == [1, 2, 0]
    assert all(kp(project, TARGET, i) == same for i in range(3))  # nothing moved
    window.close()


def test_accept_says_when_it_accepts_low_confidence_points(qtbot, tmp_path):  # noqa: ANN001
    window, project = demo(qtbot, tmp_path)
    low = Keypoint(50, 50, Visibility.VISIBLE, Origin.PREDICTED, 0.2)
    high = Keypoint(80, 50, Visibility.VISIBLE, Origin.PREDICTED, 0.9)
    project.set_annotation(
        TARGET,
        ImageAnnotation((Instance((high, high, low, high, high, high)),), ImageStatus.PREDICTED),
        "predict",
    )
    window.editor.accept_image()
    assert project.status(TARGET) == ImageStatus.REVIEWED
    text = window.statusBar().currentMessage()
    assert "1 keypoint(s) below the review threshold" in text and "nose" in text

    other = "chelsea_crop.jpg"
    show_image(window, other)
    project.set_annotation(
        other, ImageAnnotation((Instance((high,) * 6),), ImageStatus.PREDICTED), "predict"
    )
    window.editor.accept_image()
    assert "below the review threshold" not in window.statusBar().currentMessage()
    window.close()


def test_export_runs_in_the_background_from_a_snapshot(qtbot, tmp_path):  # noqa: ANN001
    import json

    from annotator.gui.export_dialog import ExportDialog
    from annotator.io.coco import ExportChoice, ExportScope

    window, project = demo(qtbot, tmp_path)
    pred = Keypoint(50, 50, Visibility.VISIBLE, Origin.PREDICTED, 0.3)
    project.set_annotation(TARGET, ImageAnnotation((Instance((pred,) * 6),),
                                                   ImageStatus.PREDICTED), "predict")
    dialog = ExportDialog(project, "demo", str(tmp_path), parent=window)
    assert dialog.reviewed.isChecked()  # the honest default
    assert "(1 image)" in dialog.reviewed.text() and "1 more image," in dialog.predictions.text()
    dialog.confident.setChecked(True)
    assert dialog.choice() == ExportChoice(ExportScope.CONFIDENT, 0.5)

    out = tmp_path / "export.json"
    progress = []
    window.exporter.progress.connect(lambda done, total: progress.append((done, total)))
    with qtbot.waitSignal(window.exporter.finished, timeout=30_000) as finished:
        assert window.export_coco(str(out), ExportChoice(ExportScope.PREDICTIONS))
        assert window.exporter.busy and window.export_bar.isVisible()
        assert not window.export_coco(str(tmp_path / "second.json"))  # one at a time
        assert window.messages[-1][1] == "Export COCO"
        # the user edits on while the file is written: the export is of the snapshot
        project.set_annotation(TARGET, ImageAnnotation(), "cleared")
    assert finished.args[1] == "" and not window.exporter.busy
    assert not window.export_bar.isVisible()
    assert progress and progress[-1] == (len(project), len(project))
    doc = json.loads(out.read_text())
    files = [im["file_name"] for im in doc["images"]]
    assert TARGET in files and len(doc["annotations"]) == 2  # reference + the prediction
    assert not (tmp_path / "second.json").exists()

    # a write that fails is reported, not lost
    bad = tmp_path / "a_file"
    bad.write_text("x")
    with qtbot.waitSignal(window.exporter.finished, timeout=30_000) as failed:
        window.export_coco(str(bad / "sub" / "export.json"))
    assert failed.args[1]
    assert window.messages[-1][0] == "error" and "Cannot export" in window.messages[-1][2]
    window.close()


def test_gallery_resorts_and_refilters_live_keeping_the_selection_in_view(qtbot, tmp_path):  # noqa: ANN001
    from annotator.gui.gallery import GalleryFilter, GallerySort
    from tests.test_gui_gallery import big_project

    project = big_project(tmp_path, 600)  # every third image predicted
    window = make_window(qtbot)
    window.set_project(project, None)
    gallery = window.editor.gallery
    model, view = gallery.model, gallery.view
    gallery.sort_box.setCurrentText(GallerySort.WORST_FIRST.value)
    gallery.filter_box.setCurrentText(GalleryFilter.NEEDS_REVIEW.value)
    before = model.rowCount()
    assert 0 < before < 200

    # new predictions arrive (as from a run): the filter and the order follow by themselves
    low = Keypoint(5, 5, Visibility.VISIBLE, Origin.PREDICTED, 0.001)
    fresh = {f"img_{i:05d}.jpg": ImageAnnotation((Instance((low, low)),), ImageStatus.PREDICTED)
             for i in (1, 2, 4)}
    project.set_annotations(fresh, "Propagate")
    qtbot.waitUntil(lambda: model.rowCount() == before + 3, timeout=3000)
    # worst first: only img_00000 (confidence 0.0) comes before them
    assert [model.path_at(r) for r in range(4)] == ["img_00000.jpg", *sorted(fresh)]

    # the user works far down the list: later changes keep that image selected and in view
    row = model.rowCount() - 5
    path = model.path_at(row)
    window.editor.show_image(path)
    assert view.viewport().rect().intersects(view.visualRect(window.editor.gallery.view_index(row)))
    worse = {p: ImageAnnotation((Instance((low, low)),), ImageStatus.PREDICTED)
             for p in (f"img_{i:05d}.jpg" for i in range(7, 70, 3))}
    project.set_annotations(worse, "Propagate")
    qtbot.waitUntil(lambda: model.row_of(path) != row, timeout=3000)
    new_row = model.row_of(path)
    assert view.currentIndex().row() == new_row
    new_rect = view.visualRect(window.editor.gallery.view_index(new_row))
    assert view.viewport().rect().intersects(new_rect)
    assert window.editor.current_path == path  # the editor did not jump

    # picking the sort again re-sorts now and goes to the top
    gallery.live_timer.stop()
    project.set_annotation(path, ImageAnnotation((Instance((low, low)),),
                                                 ImageStatus.PREDICTED), "edit")
    gallery.live_timer.stop()  # the user is quicker than the timer
    gallery.sort_box.activated.emit(gallery.sort_box.currentIndex())
    assert model.row_of(path) < 30  # now among the worst
    assert view.verticalScrollBar().value() == 0
    window.close()


def test_the_model_stack_is_imported_on_the_worker_at_idle_and_before_the_first_engine(
    qtbot, tmp_path
):  # noqa: ANN001
    import threading

    from tests.test_gui_support import content_engine

    order: list[tuple[str, bool]] = []
    gui = threading.get_ident()

    def preloader(cancelled):  # noqa: ANN001, ANN202
        assert cancelled() is False
        order.append(("preload", threading.get_ident() == gui))

    def factory(settings):  # noqa: ANN001, ANN202
        order.append(("engine", threading.get_ident() == gui))
        return content_engine(settings)

    light = make_window(qtbot)  # an injected engine: no preload unless asked for
    assert not light.preload_models
    light.close()

    window = make_window(qtbot, factory=factory)
    window.preload_models = True
    window.controller.set_preloader(preloader)
    window.open_demo(str(tmp_path / "demo"))
    assert window.preload_timer.isActive()  # at idle, a moment after the project shows
    with qtbot.waitSignal(window.controller.preloaded, timeout=10_000):
        window.preload_timer.timeout.emit()
    assert order == [("preload", False)]  # on the worker thread, never the GUI's
    with qtbot.waitSignal(window.controller.run_finished, timeout=60_000):
        assert window.propagate()
    assert order == [("preload", False), ("engine", False)]  # once, before the engine
    window.close()


def test_messages_name_what_they_are_about(qtbot, tmp_path, image_folder):  # noqa: ANN001, F811
    from annotator.domain import KeypointSchema, ProjectSettings
    from annotator.gui.worker import models_help
    from annotator.jobs.progress import TaskState
    from annotator.jobs.propagate import PropagateRequest, run_propagation

    # a local model folder that does not exist is named, and no download is suggested
    text = models_help(ProjectSettings(sd_model="/nowhere/sd15"), RuntimeError("not found"))
    assert "SD 1.5 model folder /nowhere/sd15 does not exist" in text
    assert "Settings > Models" not in text and "download the models" not in text
    assert "Edit > Settings" in models_help(ProjectSettings(), RuntimeError("offline"))

    # unreadable references are named
    window = make_window(qtbot)
    schema = KeypointSchema("thing", ("a", "b"))
    project = window.new_project(str(image_folder), schema, str(tmp_path / "p.kpproj.json"))
    project.set_keypoint("zz_broken.jpg", 0, Keypoint(3, 3, Visibility.VISIBLE))
    request = PropagateRequest.from_project(project)
    with pytest.raises(ValueError, match="zz_broken.jpg"):
        list(run_propagation(request, None, TaskState()))  # type: ignore[arg-type]
    project.undo()

    # the end of a run counts what was predicted and what could not be read; a new run
    # clears the last run's outcome
    project.set_keypoint("chelsea.jpg", 0, Keypoint(100, 100, Visibility.VISIBLE))
    project.set_keypoint("chelsea.jpg", 1, Keypoint(200, 120, Visibility.VISIBLE))
    with qtbot.waitSignal(window.controller.run_finished, timeout=60_000):
        assert window.propagate()
    text = window.statusBar().currentMessage()
    assert "5 images predicted" in text and "1 unreadable" in text
    window.propagate()
    assert "finished" not in window.statusBar().currentMessage()
    with qtbot.waitSignal(window.controller.run_finished, timeout=60_000):
        window.cancel_propagation()
    window.close()


def test_help_sheet_zoom_and_review_counts(qtbot, tmp_path):  # noqa: ANN001
    window, project = demo(qtbot, tmp_path)
    assert "several" not in window.welcome.first_run_note.text()  # concrete sizes instead
    assert "GB" in window.welcome.first_run_note.text()
    sheet = dict((what, keys) for keys, what in window.shortcut_sheet())
    assert sheet["Undo"] == "Ctrl+Z" and "Ctrl+Y" in sheet["Redo"]
    assert sheet["Re-place keypoint at next click"] == "R"
    assert sheet["Use as reference"] == "M" and sheet["Keyboard shortcuts"] == "F1"
    qtbot.keyClick(window.editor.canvas, Qt.Key.Key_F1)
    assert window.shortcut_box.isVisible() and "Ctrl+Shift+Z" in window.shortcut_box.text()
    window.shortcut_box.close()

    assert window.zoom_label.text().startswith("zoom ")
    before = window.zoom_label.text()
    canvas = window.editor.canvas
    canvas.zoom_at(2.0, canvas.rect().center())
    assert window.zoom_label.text() != before

    assert window.review_label.text() == "1 / 6 reviewed, 0 need review"
    low = Keypoint(50, 50, Visibility.VISIBLE, Origin.PREDICTED, 0.2)
    project.set_annotations(
        {p: ImageAnnotation((Instance((low,) * 6),), ImageStatus.PREDICTED)
         for p in ("chelsea_crop.jpg", "chelsea_mirror.jpg")}, "Propagate")
    qtbot.waitUntil(lambda: window.review_label.text() == "1 / 6 reviewed, 2 need review",
                    timeout=3000)
    window.editor.show_image("chelsea_crop.jpg")
    window.editor.accept_image()
    qtbot.waitUntil(lambda: window.review_label.text() == "2 / 6 reviewed, 1 need review",
                    timeout=3000)
    window.close()


def test_a_corrupt_project_file_can_be_restored_from_its_backup(qtbot, tmp_path):  # noqa: ANN001
    """The store keeps a copy of itself as opened (``path~``); a damaged file offers it, and
    the restore message is not replaced by the rescan's (one message says both)."""
    import shutil

    from annotator.io.project_file import backup_path, load_project

    window, project = demo(qtbot, tmp_path)
    path = window.project_path
    project.move_keypoint(TARGET, 0, 40, 30)
    window.close()
    window = make_window(qtbot)
    project = window.open_project(path)  # path~: the project as opened now (with the edit)
    project.move_keypoint(TARGET, 1, 60, 30)
    window.close()
    expected = load_project(backup_path(path)).annotation(TARGET)
    assert expected.has_labels and expected != load_project(path).annotation(TARGET)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])  # cut off (a disk failure)
    folder = tmp_path / "demo" / "images"
    shutil.copy(folder / "chelsea.jpg", folder / "added_meanwhile.jpg")

    second = make_window(qtbot)
    asked = []
    second._ask_yes_no = lambda title, text: asked.append(text) or False
    assert second.open_project(path) is None  # declined: nothing changes
    assert "can be read. Restore it?" in asked[0]
    assert open(path, "rb").read() == data[: len(data) // 3]

    second._ask_yes_no = lambda title, text: True
    restored = second.open_project(path)
    assert restored is not None and restored.annotation(TARGET) == expected
    message = second.statusBar().currentMessage()
    assert "Restored demo.kpproj from demo.kpproj~" in message
    assert "1 new image(s) found" in message
    assert load_project(path).annotation(TARGET) == restored.annotation(TARGET)
    aside = [p for p in (tmp_path / "demo").iterdir() if ".unreadable-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == data[: len(data) // 3]
    second.close()

    # no readable backup: the error as before
    with open(path, "w") as f:
        f.write("garbage")
    backup_path(path).write_text("garbage too")
    third = make_window(qtbot)
    assert third.open_project(path) is None
    assert third.messages[-1][0] == "error"
    third.close()


def test_images_added_to_the_folder_later_are_found(qtbot, tmp_path):  # noqa: ANN001
    import shutil

    from annotator.io.project_file import load_project

    window, project = demo(qtbot, tmp_path)
    folder = tmp_path / "demo" / "images"
    path = window.project_path
    assert window.rescan_images() == []
    assert "No new images" in window.statusBar().currentMessage()
    shutil.copy(folder / "chelsea.jpg", folder / "new_one.jpg")
    (folder / "sub").mkdir()
    shutil.copy(folder / "chelsea.jpg", folder / "sub" / "later.jpg")
    window.act_rescan.trigger()
    assert len(project) == 8 and project.image("sub/later.jpg")
    assert window.editor.gallery.model.row_of("new_one.jpg") is not None
    assert "2 new image(s)" in window.statusBar().currentMessage()
    qtbot.waitUntil(lambda: not window.autosaver.dirty, timeout=5000)  # saved with them
    assert len(load_project(path)) == 8
    window.close()

    shutil.copy(folder / "chelsea.jpg", folder / "third.jpg")  # and on open
    second = make_window(qtbot)
    reopened = second.open_project(path)
    assert reopened is not None and "third.jpg" in {r.path for r in reopened.images}
    second.close()


def test_panels_give_way_to_the_canvas_in_a_small_window(qtbot, tmp_path):  # noqa: ANN001
    window = make_window(qtbot, size=(1024, 640))
    window.open_demo(str(tmp_path / "demo"))
    qtbot.waitUntil(lambda: window.editor.canvas.width() > 0)
    editor = window.editor
    assert editor.canvas.width() >= 0.55 * window.width(), editor.splitter.sizes()
    window.resize(1600, 900)
    qtbot.waitUntil(lambda: editor.splitter.sizes()[0] >= 300, timeout=2000)
    assert editor.canvas.width() >= 900
    editor.splitter.moveSplitter(500, 1)  # the user's choice stands from then on
    editor._on_splitter_moved(500, 1)
    sizes = editor.splitter.sizes()
    window.resize(1500, 900)
    qtbot.wait(50)
    assert abs(editor.splitter.sizes()[0] - sizes[0]) <= 1
    window.close()


def test_schema_dialog_shows_its_template_full_colours_and_edits_the_supercategory(qtbot):  # noqa: ANN001
    from annotator.gui.schema_dialog import SchemaDialog
    from annotator.io.templates import load_template

    dialog = SchemaDialog(load_template("person"))
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitExposed(dialog)
    assert dialog.template_box.currentText() == "person"  # not the first entry of the list
    width = dialog.table.columnWidth(1)
    text = dialog.table.fontMetrics().horizontalAdvance(dialog.table.item(0, 1).text())
    assert width > text  # the colour column is not clipped
    assert dialog.table.viewport().width() >= dialog.table.columnWidth(0) + width - 2

    custom = SchemaDialog(load_template("person").renamed("my_thing"))
    qtbot.addWidget(custom)
    assert custom.template_box.currentIndex() == -1  # a custom schema: no template shown
    custom.use_template("cat_face")
    assert custom.template_box.currentText() == "cat_face"

    dialog.supercategory_edit.setText("animal")
    dialog._on_accept()
    assert dialog.schema.supercategory == "animal"


def test_reference_pane_shows_the_selected_keypoint_on_a_reference(qtbot, tmp_path):  # noqa: ANN001
    window = make_window(qtbot, size=(1400, 860))
    project = window.open_demo(str(tmp_path / "demo"))
    pane = window.editor.reference_pane
    assert window.reference_dock.isVisible()  # wide enough: shown with the project
    show_image(window, TARGET)
    assert pane.reference == "chelsea.jpg"
    qtbot.waitUntil(lambda: pane.canvas.image_size == (451, 300), timeout=10_000)
    window.editor.set_current_keypoint(2)
    assert pane.canvas._current == 2 and "nose" in pane.caption.text()
    # clicks on the pane edit nothing
    before = project.annotation("chelsea.jpg")
    qtbot.mouseClick(pane.canvas, Qt.MouseButton.LeftButton, pos=pane.canvas.rect().center())
    assert project.annotation("chelsea.jpg") == before
    # a second reference appears in the list; picking it shows it
    window.editor.make_reference()  # TARGET has no labels: refused
    project.set_keypoint(TARGET, 2, Keypoint(30, 30, Visibility.VISIBLE))
    window.editor.make_reference()
    qtbot.waitUntil(lambda: TARGET in window.project.reference_paths(), timeout=3000)
    assert pane.choice.count() == 1 and pane.reference == "chelsea.jpg"  # never itself
    show_image(window, "chelsea_crop.jpg")
    qtbot.waitUntil(lambda: pane.choice.count() == 2, timeout=3000)
    pane._pick(TARGET)
    assert pane.reference == TARGET
    window.act_reference_pane.trigger()  # V hides it
    assert not window.reference_dock.isVisible()
    window.close()
