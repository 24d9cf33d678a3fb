"""Small defects of issue 22, each with a test: the first engine import off the GUI thread
and GIL-friendly, the gallery without a blank strip, the window at 1024 x 640, the reference
pane, and hiding other instances and low-scored boxes on the canvas."""

from __future__ import annotations

import threading

import pytest

from annotator.domain import ImageAnnotation, ImageStatus, Instance, Keypoint, Origin, Visibility
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    content_engine,
    make_window,
    no_thread_leaks,
    open_demo_project,
    qt_isolated,
    show_image,
    wait_image,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")


def test_the_real_engine_is_built_after_the_stepwise_import_even_without_idle_preload(
        qtbot, tmp_path, monkeypatch):
    """With the idle preload off (``preload_models=False``, as the benchmarks run), the
    first engine (the saved head's facts at open, or Propagate) is still built after the
    model stack's GIL-friendly stepwise import, on the worker: no plain import of torch
    starves the GUI thread (it stalled it 236 ms)."""
    from annotator.gui import worker
    from annotator.jobs import preload

    gui = threading.get_ident()
    order: list[tuple[str, bool]] = []

    def steps(cancelled=None):  # noqa: ANN001, ANN202
        order.append(("preload", threading.get_ident() == gui))
        return []

    def real_engine(settings):  # noqa: ANN001, ANN202
        order.append(("engine", threading.get_ident() == gui))
        return content_engine(settings)

    monkeypatch.setattr(preload, "preload_model_stack", steps)
    monkeypatch.setattr(worker, "default_engine_factory", real_engine)
    from annotator.gui.main_window import MainWindow

    window = MainWindow(autosave_delay_s=0.2, preload_models=False)  # the real engine
    qtbot.addWidget(window)
    window.show()
    open_demo_project(window, tmp_path)
    assert not window.preload_timer.isActive()  # no import at idle
    # opening asks the worker what the saved head was trained on: that builds an engine
    qtbot.waitUntil(lambda: len(order) >= 2, timeout=20_000)
    assert order[:2] == [("preload", False), ("engine", False)]  # steps first, on the worker
    with qtbot.waitSignal(window.controller.run_finished, timeout=60_000) as done:
        assert window.propagate()
    assert done.args == ["done"]
    assert order[0] == ("preload", False) and ("preload", False) not in order[1:]  # once
    assert ("engine", True) not in order  # never on the GUI thread
    window.close()


@pytest.mark.parametrize("gallery_width", [230, 330, 420])
def test_gallery_tiles_fill_the_panel_without_a_blank_strip(qtbot, tmp_path, gallery_width):
    from PySide6.QtGui import QColor

    window = make_window(qtbot)
    open_demo_project(window, tmp_path)
    editor = window.editor
    editor._user_sized = True  # the sizes below are the user's
    total = sum(editor.splitter.sizes())
    editor.splitter.setSizes([gallery_width, total - gallery_width - 260, 260])
    view = window.editor.gallery.view
    qtbot.waitUntil(lambda: view.visualRect(view.model().index(0, 0)).width() > 0)
    qtbot.wait(50)  # the delayed relayout after the resize
    model = view.model()
    rects = [view.visualRect(model.index(i, 0)) for i in range(model.rowCount())]
    first_row = [r for r in rects if r.top() == rects[0].top()]
    right_gap = view.viewport().width() - max(r.right() + 1 for r in first_row)
    assert 0 <= right_gap <= 2 * view.spacing() + len(first_row)  # no strip: rounding only
    left_gap = min(r.left() for r in first_row)
    assert left_gap <= view.spacing() + 1
    # what shows between and below the tiles is dark, never the white list background
    image = view.viewport().grab().toImage()
    below = max(r.bottom() for r in rects) + 5
    if below < image.height():
        assert QColor(image.pixel(image.width() // 2, below)).lightness() < 60
    assert QColor(image.pixel(image.width() - 1, rects[0].center().y())).lightness() < 60
    window.close()


def _permanent_widgets(bar):  # noqa: ANN001, ANN202
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QSizeGrip, QWidget

    return [w for w in bar.findChildren(QWidget, options=Qt.FindChildOption.FindDirectChildrenOnly)
            if w.isVisible() and not isinstance(w, QSizeGrip)]


def test_window_at_1024_x_640_shows_the_status_text_and_the_instance_list_whole(qtbot,
                                                                                tmp_path):
    window = make_window(qtbot, size=(1024, 640))
    project = open_demo_project(window, tmp_path)
    qtbot.waitUntil(lambda: window.width() == 1024 and window.height() == 640)
    bar = window.statusBar()

    def assert_status_whole() -> None:
        widgets = _permanent_widgets(bar)
        assert widgets
        for w in widgets:  # every label on show has the room its text needs
            assert w.width() >= w.sizeHint().width(), w
        message = bar.currentMessage()
        if message:  # and the message is not covered by them
            left = min(w.geometry().left() for w in widgets)
            assert left >= bar.fontMetrics().horizontalAdvance(message), message

    message = "Opened a project with a rather long file name, which is kept as a backup.json"
    bar.showMessage(message)
    qtbot.wait(50)
    assert_status_whole()
    assert window.status_fit.hidden  # something gave way ...
    assert all(w.text() in bar.toolTip() for w in window.status_fit.hidden
               if hasattr(w, "text"))  # ... and can still be read
    bar.clearMessage()
    qtbot.wait(50)
    assert_status_whole()
    assert window.model_label.isVisible()  # back once the message is gone
    assert window.status_fit.hidden == []

    # ten detected instances with scored boxes and predicted points: whole rows
    path = window.editor.current_path
    k = len(project.schema)
    kps = tuple(Keypoint(5.0, 6.0, Visibility.VISIBLE, Origin.PREDICTED, 0.42)
                for _ in range(k))
    insts = tuple(Instance(kps, (1.0 + i, 2.0, 30.0, 40.0), box_score=0.81)
                  for i in range(10))
    project.set_annotation(path, ImageAnnotation(insts, ImageStatus.PREDICTED), "detect")
    qtbot.wait(50)
    lst = window.editor.instances.list
    assert lst.count() == 10
    assert lst.isVisible() and lst.height() >= 60
    room = lst.viewport().width()
    for i in range(lst.count()):
        text = lst.item(i).text()
        assert lst.fontMetrics().horizontalAdvance(text) + 8 <= room, text
    for button in (window.editor.instances.add_button, window.editor.instances.delete_button):
        assert button.isVisible() and button.width() >= button.sizeHint().width()
    top_left = lst.mapTo(window, lst.rect().topLeft())
    assert window.rect().contains(top_left)
    assert window.rect().contains(lst.mapTo(window, lst.rect().bottomRight()))
    window.close()


def test_reference_pane_fits_the_image_and_never_repeats_the_current_one(qtbot, tmp_path):
    window = make_window(qtbot, size=(1400, 860))
    project = open_demo_project(window, tmp_path)
    pane = window.editor.reference_pane
    assert window.reference_dock.isVisible()
    show_image(window, "chelsea_crop.jpg")
    assert pane.reference == "chelsea.jpg"
    qtbot.waitUntil(lambda: pane.canvas.image_size is not None, timeout=10_000)
    qtbot.wait(50)
    w, h = pane.canvas.image_size
    # the view is as tall as the image at its width: no tall black column around it
    assert abs(pane.canvas.height() - pane.canvas.width() * h / w) <= 4
    assert pane.canvas.height() < pane.height() / 2  # a landscape image in a tall dock
    caption = pane.caption.geometry()
    assert 0 <= caption.top() - pane.canvas.geometry().bottom() <= 12  # right under it
    from PySide6.QtCore import Qt

    before = pane.canvas.width()
    window.resizeDocks([window.reference_dock], [pane.width() + 80], Qt.Orientation.Horizontal)
    qtbot.waitUntil(lambda: pane.canvas.width() > before + 40)
    qtbot.waitUntil(lambda: abs(pane.canvas.height() - pane.canvas.width() * h / w) <= 4)

    # the current image is the only reference: not shown a second time
    show_image(window, "chelsea.jpg")
    assert pane.reference is None and pane.choice.count() == 0
    assert pane.canvas.image_size is None
    # with a second reference, the pane shows the other one
    project.set_keypoint("chelsea_crop.jpg", 0, project.annotation(
        "chelsea.jpg").instances[0].keypoints[0])
    project.set_status("chelsea_crop.jpg", ImageStatus.REFERENCE)
    qtbot.waitUntil(lambda: pane.reference == "chelsea_crop.jpg", timeout=3000)
    assert [pane.choice.itemText(i) for i in range(pane.choice.count())] == [
        "chelsea_crop.jpg"]
    show_image(window, "chelsea_crop.jpg")
    assert pane.reference == "chelsea.jpg"
    window.close()


def test_reference_pane_keeps_its_list_per_change_and_leaves_out_the_edited_image(qtbot,
                                                                                 tmp_path):
    """The merged pane: the reference list is kept current per changed image (no rescan)
    while the image being edited is still never offered, and when it is the only reference
    the pane says so."""
    window = make_window(qtbot, size=(1400, 860))
    project = open_demo_project(window, tmp_path)
    pane = window.editor.reference_pane
    show_image(window, "chelsea_crop.jpg")
    assert pane.reference == "chelsea.jpg"
    refs = pane._refs
    assert refs == project.reference_paths() == ["chelsea.jpg"]
    project.set_keypoint("chelsea_crop.jpg", 0, project.annotation(
        "chelsea.jpg").instances[0].keypoints[0])
    project.set_status("chelsea_crop.jpg", ImageStatus.REFERENCE)
    assert pane._refs is refs  # updated in place, not scanned again
    assert refs == project.reference_paths()  # in project order
    assert set(refs) == {"chelsea.jpg", "chelsea_crop.jpg"}
    pane.update_view()
    assert [pane.choice.itemText(i) for i in range(pane.choice.count())] == ["chelsea.jpg"]
    project.set_status("chelsea.jpg", ImageStatus.PREDICTED)
    assert pane._refs is refs and refs == ["chelsea_crop.jpg"]
    pane.update_view()
    assert pane.reference is None and pane.choice.count() == 0
    assert pane.canvas._message == "This image is the only reference"
    other = next(r.path for r in project.images if r.path not in refs)
    show_image(window, other)
    assert pane.reference == "chelsea_crop.jpg"
    window.close()


def test_other_instances_and_low_scored_boxes_can_be_hidden(qtbot, tmp_path):
    from PySide6.QtCore import Qt

    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    path = "chelsea_crop.jpg"
    show_image(window, path)
    k = len(project.schema)
    insts = []
    for i in range(10):  # ten detections, scores 0.05 .. 0.95, each with one point
        kps = (Keypoint(20.0 + 30 * i, 40.0, Visibility.VISIBLE, Origin.PREDICTED, 0.6),
               *[Keypoint()] * (k - 1))
        insts.append(Instance(kps, (10.0 + 30 * i, 20.0, 25.0, 60.0), box_score=0.05 + 0.1 * i))
    insts.append(Instance((Keypoint(),) * k, (5.0, 150.0, 40.0, 40.0)))  # the user's box
    project.set_annotation(path, ImageAnnotation(tuple(insts), ImageStatus.PREDICTED), "d")
    qtbot.wait(20)
    canvas, editor = window.editor.canvas, window.editor

    def drawn() -> tuple[list[int], list[int]]:
        return sorted(b.index for b in canvas._boxes), sorted(i for i, _ in canvas._others)

    assert drawn() == (list(range(11)), list(range(1, 11)))  # everything, by default
    controls = window.instance_view
    assert controls.show_others in window.findChildren(type(controls.show_others))
    qtbot.keyClick(canvas, Qt.Key.Key_O)  # Image > Show other instances, off
    assert not controls.show_others.isChecked()
    assert drawn() == ([0], [])  # only the current instance
    controls.show_others.trigger()
    assert drawn() == (list(range(11)), list(range(1, 11)))

    controls.min_score.setValue(0.5)  # detections below 0.5 go, with their points
    assert drawn() == ([0, 5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10])  # 0: current; 10: user's
    # a hidden instance cannot be clicked
    hidden_point = canvas.to_widget(20.0 + 30 * 2, 40.0).toPoint()
    selected = []
    canvas.instance_clicked.connect(selected.append)
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=hidden_point)
    assert 2 not in selected and editor.current_instance != 2
    editor.select_instance(7)  # the selected instance always shows, whatever its score
    controls.min_score.setValue(0.9)
    assert drawn() == ([7, 9, 10], [9, 10])
    assert project.annotation(path).instances == tuple(insts)  # the project is untouched
    window.close()
