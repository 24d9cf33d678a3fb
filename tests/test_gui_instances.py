"""Several objects per image in the GUI: box tool, instance list, per-instance propagation,
editing the second instance, undo, export and reimport; zero-shot detection from the Run menu."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest

from annotator.domain import ImageStatus, Keypoint, KeypointSchema, Origin, Visibility
from annotator.gui.gallery import INSTANCES_ROLE
from annotator.io.coco import ExportChoice, ExportScope, import_coco
from annotator.io.project_file import new_project, save_project
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    make_window,
    no_thread_leaks,
    qt_isolated,
    show_image,
)
from tests.test_instances_propagate import OBJ_POINTS, SIDE, _canvas, _object

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")
CATS = [(400, 50), (90, 330)]


def widget_point(canvas, x, y):  # noqa: ANN001, ANN201
    p = canvas.to_widget(x, y)
    return QPoint(round(p.x()), round(p.y()))


def drag(canvas, a, b, steps=5):  # noqa: ANN001, ANN201
    QTest.mousePress(canvas, Qt.MouseButton.LeftButton, pos=a)
    for t in np.linspace(0, 1, steps + 1)[1:]:
        QTest.mouseMove(canvas, a + (b - a) * float(t))
    QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=b)


@pytest.fixture
def project_file(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(_canvas([(60, 300)])).save(folder / "ref.png")
    Image.fromarray(_canvas(CATS)).save(folder / "two.png")
    p = new_project(folder, KeypointSchema("cat", ("a", "b", "c")))
    p.set_settings(replace(p.settings, flip=False))  # no left/right partners in this schema
    for k, (x, y) in enumerate(OBJ_POINTS + (60, 300)):
        p.set_keypoint("ref.png", k, Keypoint(x, y, Visibility.VISIBLE))
    path = tmp_path / "cats.kpproj.json"
    save_project(p, path)
    return str(path)


def test_boxes_propagate_edit_undo_export_reimport(qtbot, tmp_path, project_file):
    window = make_window(qtbot)
    project = window.open_project(project_file)
    assert project is not None
    editor, canvas = window.editor, window.editor.canvas
    show_image(window, "two.png")
    obj_h = _object().shape[0]

    # 1. the box tool (B) and two boxes drawn by dragging
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_B)
    assert canvas.box_mode and window.act_box_tool.isChecked()
    for x, y in CATS:
        drag(canvas, widget_point(canvas, x, y), widget_point(canvas, x + SIDE, y + obj_h))
    insts = project.annotation("two.png").instances
    tol = 1.0 / canvas.scale + 0.5
    assert len(insts) == 2
    for inst, (x, y) in zip(insts, CATS):
        assert np.allclose(inst.bbox, (x, y, SIDE, obj_h), atol=2 * tol)
        assert inst.box_score is None
    assert editor.current_instance == 1 and editor.instances.list.count() == 2
    # a click (no drag) in the first box selects that instance
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 450, 90))
    assert editor.current_instance == 0
    # move the second box a little, then undo it: one step for the whole drag
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 150, 370))
    assert editor.current_instance == 1
    before = project.annotation("two.png").instances[1].bbox
    steps = len(project.history._done)
    drag(canvas, widget_point(canvas, 150, 370), widget_point(canvas, 170, 360))
    moved = project.annotation("two.png").instances[1].bbox
    assert moved[0] == pytest.approx(before[0] + 20, abs=2 * tol)
    assert len(project.history._done) == steps + 1
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert project.annotation("two.png").instances[1].bbox == before
    boxes = [i.bbox for i in project.annotation("two.png").instances]
    qtbot.keyClick(canvas, Qt.Key.Key_B)  # back to keypoints
    assert not canvas.box_mode

    # 2. propagate from the one-instance reference: two predicted instances
    with qtbot.waitSignal(window.controller.run_finished, timeout=60_000) as done:
        qtbot.mouseClick(editor.propagate_button, Qt.MouseButton.LeftButton)
    assert done.args == ["done"] and window.messages == []
    insts = project.annotation("two.png").instances
    assert len(insts) == 2 and [i.bbox for i in insts] == boxes
    for inst, (x, y) in zip(insts, CATS):
        pts = np.array([(k.x, k.y) for k in inst.keypoints])
        seen = np.array([k.labelled for k in inst.keypoints])
        assert seen.sum() >= 2 and all(k.origin == Origin.PREDICTED for k in inst.keypoints)
        # on its own copy (the other is 300+ px away); the GUI tests' content engine has
        # 10 px cells on these crops and soft-argmax on, so allow 2.5 cells
        assert np.linalg.norm(pts[seen] - (OBJ_POINTS + (x, y))[seen], axis=1).max() < 25
    assert project.status("two.png") == ImageStatus.PREDICTED
    model = editor.gallery.model
    assert model.index(model.row_of("two.png")).data(INSTANCES_ROLE) == 2

    # 3. select the second instance in the list: its points are editable, the first dimmed
    editor.instances.list.setCurrentRow(1)
    assert editor.current_instance == 1
    assert [i for i, _ in canvas._others] == [0]
    # clicking a dimmed point of the first instance selects it (and places nothing)
    other = next(kp for kp in insts[0].keypoints if kp.labelled)
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, other.x, other.y))
    assert editor.current_instance == 0
    assert project.annotation("two.png").instances == insts
    editor.instances.list.setCurrentRow(1)
    assert editor.current_instance == 1
    first = project.annotation("two.png").instances[0]
    k = next(i for i, kp in enumerate(insts[1].keypoints) if kp.labelled)
    kp = insts[1].keypoints[k]
    goal = OBJ_POINTS[k] + CATS[1] + (3, 2)
    steps = len(project.history._done)
    drag(canvas, widget_point(canvas, kp.x, kp.y), widget_point(canvas, *goal))
    edited = project.annotation("two.png").instances[1].keypoints[k]
    assert edited.origin == Origin.REVIEWED
    assert abs(edited.x - goal[0]) <= tol and abs(edited.y - goal[1]) <= tol
    assert project.annotation("two.png").instances[0] == first  # the other one untouched
    assert len(project.history._done) == steps + 1

    # 4. undo restores the prediction
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert project.annotation("two.png").instances[1].keypoints[k] == kp
    shift_ctrl = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
    qtbot.keyClick(canvas, Qt.Key.Key_Z, shift_ctrl)  # and redo
    assert project.annotation("two.png").instances[1].keypoints[k] == edited

    # 5. export, reimport: two instances with their boxes and ids
    out = str(tmp_path / "export.json")
    with qtbot.waitSignal(window.exporter.finished, timeout=30_000) as exported:
        assert window.export_coco(out, ExportChoice(ExportScope.PREDICTIONS))
    assert exported.args[1] == ""  # no error
    back = import_coco(out, project.image_root)
    again = back.annotation("two.png").instances
    assert [i.bbox for i in again] == [tuple(round(v, 3) for v in b) for b in boxes]
    assert [i.ann_id for i in again] == [i.ann_id for i in project.annotation("two.png")
                                         .instances]
    assert again[1].keypoints[k].origin == Origin.REVIEWED
    assert abs(again[1].keypoints[k].x - edited.x) < 0.01


def test_instance_list_add_delete_and_keypoints_go_to_the_selected_one(qtbot, project_file):
    window = make_window(qtbot)
    project = window.open_project(project_file)
    editor, canvas = window.editor, window.editor.canvas
    show_image(window, "two.png")
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 420, 70))
    assert len(project.annotation("two.png").instances) == 1
    qtbot.mouseClick(editor.instances.add_button, Qt.MouseButton.LeftButton)
    assert editor.current_instance == 1 and editor.current_keypoint == 0
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 110, 350))
    insts = project.annotation("two.png").instances
    assert insts[1].keypoints[0].labelled and insts[1].keypoints[0].x == pytest.approx(
        110, abs=1.0 / canvas.scale + 0.5)
    assert insts[0].keypoints[0].x == pytest.approx(420, abs=1.0 / canvas.scale + 0.5)
    # box mode: Del removes the selected instance's box (after drawing one)
    qtbot.keyClick(canvas, Qt.Key.Key_B)
    drag(canvas, widget_point(canvas, 80, 320), widget_point(canvas, 220, 420))
    assert project.annotation("two.png").instances[1].bbox is not None  # given to #2
    qtbot.keyClick(canvas, Qt.Key.Key_Delete)
    assert project.annotation("two.png").instances[1].bbox is None
    qtbot.mouseClick(editor.instances.delete_button, Qt.MouseButton.LeftButton)
    assert len(project.annotation("two.png").instances) == 1
    project.undo()
    assert len(project.annotation("two.png").instances) == 2


def test_detect_boxes_from_the_run_menu(qtbot, tmp_path, project_file, monkeypatch):
    import tqdm

    from tests.tiny_models import build_tiny_detector

    # transformers' loading bars would start tqdm's monitor thread (a process-wide daemon)
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)
    folder = build_tiny_detector(tmp_path / "owl")
    window = make_window(qtbot)
    project = window.open_project(project_file)
    project.set_settings(replace(project.settings, detector_model=str(folder),
                                 detect_threshold=0.0, detect_max_boxes=2, device="cpu"))
    with qtbot.waitSignal(window.controller.run_finished, timeout=60_000) as done:
        window.act_detect.trigger()
    assert done.args == ["done"] and window.messages == []
    insts = project.annotation("two.png").instances
    assert 1 <= len(insts) <= 2
    assert all(i.bbox is not None and 0 <= i.box_score <= 1 for i in insts)
    assert project.annotation("ref.png").instances[0].bbox is None  # references untouched
    assert project.annotation("two.png").worst_confidence() == min(i.box_score for i in insts)
    project.undo()  # the whole detection run is one step
    assert project.annotation("two.png").instances == ()


def test_gallery_sorts_and_filters_by_the_worst_instance(qtbot, tmp_path):
    from annotator.domain import ImageAnnotation, ImageRecord, Instance, Project
    from annotator.gui.gallery import GalleryFilter, GalleryPanel, GallerySort
    from annotator.gui.thumbnails import ThumbnailLoader

    def inst(conf):
        kp = Keypoint(5, 5, Visibility.VISIBLE, Origin.PREDICTED, conf)
        return Instance((kp, kp), (0.0, 0.0, 10.0, 10.0))

    anns = {  # a: its second instance is bad; b: one middling instance; c: all good
        "a.png": ImageAnnotation((inst(0.9), inst(0.1)), ImageStatus.PREDICTED),
        "b.png": ImageAnnotation((inst(0.4),), ImageStatus.PREDICTED),
        "c.png": ImageAnnotation((inst(0.8), inst(0.95), inst(0.7)), ImageStatus.PREDICTED),
    }
    project = Project(str(tmp_path), [ImageRecord(p) for p in ("c.png", "b.png", "a.png")],
                      KeypointSchema("t", ("x", "y")), anns)
    panel = GalleryPanel(ThumbnailLoader())
    qtbot.addWidget(panel)
    panel.model.set_project(project)
    panel.sort_box.setCurrentText(GallerySort.WORST_FIRST.value)
    assert [panel.model.path_at(i) for i in range(3)] == ["a.png", "b.png", "c.png"]
    panel.filter_box.setCurrentText(GalleryFilter.NEEDS_REVIEW.value)  # worst below 0.5
    assert [panel.model.path_at(i) for i in range(panel.model.rowCount())] == ["a.png", "b.png"]
    assert panel.model.index(0).data(INSTANCES_ROLE) == 2


def test_settings_dialog_edits_instance_and_detector_settings(qtbot):
    from annotator.domain import ProjectSettings
    from annotator.gui.settings_dialog import SettingsDialog

    dialog = SettingsDialog(ProjectSettings(detect_prompt="zebra", detect_max_boxes=4))
    qtbot.addWidget(dialog)
    assert dialog.settings() == ProjectSettings(detect_prompt="zebra", detect_max_boxes=4)
    dialog.crop.setChecked(False)
    dialog.crop_margin.setValue(0.3)
    dialog.detector_model.edit.setText("/models/owlv2")
    dialog.detect_threshold.setValue(0.35)
    dialog.detect_max.setValue(7)
    s = dialog.settings()
    assert (s.crop, s.crop_margin, s.detector_model, s.detect_threshold, s.detect_max_boxes,
            s.detect_prompt) == ("none", 0.3, "/models/owlv2", 0.35, 7, "zebra")


def test_detect_boxes_can_be_cancelled(qtbot, tmp_path, project_file, monkeypatch):
    import tqdm

    from tests.tiny_models import build_tiny_detector

    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)
    folder = build_tiny_detector(tmp_path / "owl")
    window = make_window(qtbot)
    project = window.open_project(project_file)
    project.set_settings(replace(project.settings, detector_model=str(folder), device="cpu"))
    before = project.annotations()
    with qtbot.waitSignal(window.controller.run_finished, timeout=60_000) as done:
        assert window.detect_boxes()
        window.cancel_propagation()
    assert done.args == ["cancelled"]
    qtbot.wait(200)  # anything the worker still sends is dropped
    window.flush_predictions()
    assert project.annotations() == before
    assert not window.controller.busy
