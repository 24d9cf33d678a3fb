"""File > Export as...: the dialog's choices reach the export, errors are shown."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from annotator.domain import ImageAnnotation, ImageStatus, Instance, Keypoint, Origin, Visibility
from annotator.gui.export_dialog import ExportDialog
from annotator.gui.main_window import Qt
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    make_window,
    no_thread_leaks,
    open_demo_project,
    qt_isolated,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")


def add_prediction(project):  # noqa: ANN001, ANN201
    """Mark an unlabelled demo image as predicted with one confident point."""
    path = next(r.path for r in project.images if project.status(r.path) == ImageStatus.UNLABELLED)
    k = len(project.schema)
    kps = [Keypoint(5.0, 6.0, Visibility.VISIBLE, Origin.PREDICTED, 0.9)] + [Keypoint()] * (k - 1)
    project.set_annotation(path, ImageAnnotation((Instance(tuple(kps)),), ImageStatus.PREDICTED),
                           "predict")
    return path


def choose(fmt, path, include_predictions=False):  # noqa: ANN001, ANN201
    def exec_(dialog: ExportDialog) -> int:
        dialog.set_format(fmt)
        dialog.path_edit.setText(str(path))
        (dialog.predictions if include_predictions else dialog.reviewed).setChecked(True)
        return ExportDialog.DialogCode.Accepted

    return exec_


def test_export_as_writes_the_chosen_format_and_labels(qtbot, tmp_path, monkeypatch):
    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    predicted = add_prediction(project)
    reviewed = [r.path for r in project.images
                if project.status(r.path) in (ImageStatus.REFERENCE, ImageStatus.REVIEWED)]

    monkeypatch.setattr(ExportDialog, "exec", choose("yolo-pose", tmp_path / "ds"))
    window.act_export_as.trigger()
    window.wait_export_as(30)  # written on a background thread from a snapshot
    labels = sorted(p.name for p in (tmp_path / "ds/labels/train").rglob("*.txt"))
    assert labels == sorted(Path(p).with_suffix(".txt").name for p in reviewed)
    assert yaml.safe_load((tmp_path / "ds/data.yaml").read_text())["kpt_shape"] == [
        len(project.schema), 3]
    assert "wrote" in window.statusBar().currentMessage()

    monkeypatch.setattr(ExportDialog, "exec", choose("yolo-pose", tmp_path / "ds2", True))
    window.act_export_as.trigger()
    window.wait_export_as(30)
    names = {p.name for p in (tmp_path / "ds2/labels/train").rglob("*.txt")}
    assert Path(predicted).with_suffix(".txt").name in names
    window.close()


def test_export_as_shows_errors(qtbot, tmp_path, monkeypatch):
    window = make_window(qtbot)
    assert not window.act_export_as.isEnabled()  # no project yet
    open_demo_project(window, tmp_path)
    assert window.act_export_as.isEnabled()
    (tmp_path / "full").mkdir()
    (tmp_path / "full/mine.txt").write_text("x")
    monkeypatch.setattr(ExportDialog, "exec", choose("dlc", tmp_path / "full"))
    window.act_export_as.trigger()
    window.wait_export_as(30)
    level, title, text = window.messages[-1]
    assert (level, title) == ("error", "Export as") and "must be new or empty" in text
    assert (tmp_path / "full/mine.txt").read_text() == "x"
    window.close()


def test_dialog_options_follow_the_format(qtbot, tmp_path):
    from annotator.domain import KeypointSchema, Project

    project = Project(str(tmp_path), [], KeypointSchema("cat", ("nose",)))
    dialog = ExportDialog(project, "proj", str(tmp_path), "dlc")
    qtbot.addWidget(dialog)
    assert dialog.path() == str(tmp_path / "proj_dlc")
    dialog.drop_occluded.setChecked(True)
    dialog.val_fraction.setValue(0.2)
    assert dialog.options().drop_occluded and dialog.options().val_fraction == 0.0
    dialog.set_format("yolo-pose")
    assert dialog.path() == str(tmp_path / "proj_yolo")
    assert not dialog.options().drop_occluded and dialog.options().val_fraction == 0.2
    dialog.set_format("sleap")
    assert dialog.path() == str(tmp_path / "proj.slp")
    dialog.path_edit.setText("")
    assert not dialog.ok_button.isEnabled()


def test_export_coco_and_export_as_offer_the_same_choice(qtbot, tmp_path, monkeypatch):
    """Ctrl+E and File > Export as... open one dialog: COCO is one of its formats, and the
    labels that go out are chosen with the same widgets (and counts) for every format."""
    from annotator.io.coco import ExportChoice, ExportScope

    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    add_prediction(project)
    seen: list[tuple[str, list[str]]] = []

    def look(dialog: ExportDialog) -> int:
        seen.append((dialog.format(), [b.text() for b in (
            dialog.reviewed, dialog.predictions, dialog.confident)]))
        for fmt in ("coco", "yolo-pose", "dlc", "sleap", "label-studio"):  # one scope widget
            dialog.set_format(fmt)
            assert dialog.reviewed.isVisibleTo(dialog) and dialog.threshold.isVisibleTo(dialog)
        dialog.confident.setChecked(True)
        dialog.threshold.setValue(0.7)
        assert dialog.choice() == ExportChoice(ExportScope.CONFIDENT, 0.7)
        options = dialog.options()  # the same choice in the other formats' terms
        assert options.include_predictions and options.min_confidence == 0.7
        dialog.predictions.setChecked(True)
        assert dialog.choice().scope == ExportScope.PREDICTIONS
        assert dialog.options().include_predictions and dialog.options().min_confidence is None
        dialog.reviewed.setChecked(True)
        assert not dialog.options().include_predictions
        assert not dialog.threshold.isEnabled()
        return ExportDialog.DialogCode.Rejected

    monkeypatch.setattr(ExportDialog, "exec", look)
    window.act_export.trigger()  # Ctrl+E
    window.act_export_as.trigger()
    assert [fmt for fmt, _ in seen] == ["coco", "coco"]  # COCO is a format of Export as
    assert seen[0][1] == seen[1][1] and "(1 more image," in seen[0][1][1]

    # Export as... offers the format used last; Ctrl+E always COCO
    monkeypatch.setattr(ExportDialog, "exec", choose("label-studio", tmp_path / "ls.json"))
    window.act_export_as.trigger()
    window.wait_export_as(30)
    assert (tmp_path / "ls.json").is_file()
    formats = []
    monkeypatch.setattr(ExportDialog, "exec", lambda d: formats.append(d.format()) or 0)
    window.act_export_as.trigger()
    window.act_export.trigger()
    assert formats == ["label-studio", "coco"]

    # COCO chosen in the dialog writes through Export COCO (snapshot, progress, cancel)
    monkeypatch.setattr(ExportDialog, "exec", choose("coco", tmp_path / "c.json", True))
    with qtbot.waitSignal(window.exporter.finished, timeout=30_000) as done:
        window.act_export_as.trigger()
    assert done.args[1] == "" and window.exporter.kind == "coco"
    import json

    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["info"]["annotator_export"]["scope"] == "predictions"
    window.close()


@pytest.mark.parametrize("fmt", ["yolo-pose", "label-studio", "coco", "sleap"])
def test_export_as_reports_progress_and_cancel_leaves_nothing(qtbot, tmp_path, monkeypatch,
                                                             fmt):
    """Export as runs like Export COCO: a progress bar that moves and a Cancel button; a
    cancelled export writes nothing (no file, no staged leftovers) and leaves the project
    as it was."""
    import threading

    from annotator.gui.export_job import _ExportTask

    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    before = project.annotations()
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    target = out_dir / {"yolo-pose": "ds", "label-studio": "ls.json", "coco": "c.json",
                        "sleap": "s.slp"}[fmt]  # SLEAP: written by a child process
    progress: list[tuple[int, int]] = []
    window.exporter.progress.connect(lambda d, t: progress.append((d, t)))

    # a full export first: progress reaches the end, the file is there
    monkeypatch.setattr(ExportDialog, "exec", choose(fmt, target))
    window.act_export_as.trigger()
    assert window.export_bar.isVisible() and window.export_cancel.isVisible()
    window.wait_export_as(30)
    assert target.exists() and progress and progress[-1][0] == progress[-1][1] > 0
    assert not window.export_bar.isVisible() and not window.export_cancel.isVisible()
    written = sorted(p.name for p in out_dir.iterdir())

    # then one held at its second progress step until the user presses Cancel
    held, release = threading.Event(), threading.Event()
    step = _ExportTask._progress
    calls = []

    def slow_step(self, done, total):  # noqa: ANN001, ANN202
        calls.append(done)
        if len(calls) == 2:
            held.set()
            release.wait(10)
        step(self, done, total)  # the cancel takes effect here, in the writer's loop

    monkeypatch.setattr(_ExportTask, "_progress", slow_step)
    second = out_dir / ("again_" + target.name)
    monkeypatch.setattr(ExportDialog, "exec", choose(fmt, second))
    window.act_export_as.trigger()
    assert held.wait(10)
    assert window.export_cancel.isEnabled()
    qtbot.mouseClick(window.export_cancel, Qt.MouseButton.LeftButton)
    assert not window.export_cancel.isEnabled()  # pressed once
    release.set()
    window.wait_export_as(30)
    assert not window.exporter.busy and not window.export_bar.isVisible()
    assert "cancelled" in window.statusBar().currentMessage()
    assert sorted(p.name for p in out_dir.iterdir()) == written  # nothing new, no stage
    assert not [m for m in window.messages if m[0] == "error"]
    assert project.annotations() == before and window.project is project
    window.close()


def test_export_runs_with_the_collector_paused(qtbot, tmp_path, monkeypatch):
    """The cyclic collector is off while an export writes (no full collection over what the
    export makes stalls the GUI) and on again afterwards, also after a failed export."""
    import gc

    from annotator.gui import export_job

    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    add_prediction(project)
    seen: list[bool] = []
    real = export_job.export_project

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(export_job, "export_project", spy)
    monkeypatch.setattr(ExportDialog, "exec", choose("label-studio", tmp_path / "ls.json", True))
    assert gc.isenabled()
    window.act_export_as.trigger()
    window.wait_export_as(30)
    assert seen == [False] and gc.isenabled() and (tmp_path / "ls.json").exists()

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(gc.isenabled())
        raise ValueError("disk says no")

    monkeypatch.setattr(export_job, "export_project", broken)
    monkeypatch.setattr(ExportDialog, "exec", choose("label-studio", tmp_path / "x.json", True))
    window.act_export_as.trigger()
    window.wait_export_as(30)
    assert seen == [False, False] and gc.isenabled()
    assert "disk says no" in str(window.messages)
    window.close()


def test_gc_paused_nests_and_restores():
    """Nested pauses (two exports, or an export and a load) re-enable only at the end, and a
    collector that was already off stays off."""
    import gc

    from annotator.gui.gc_pause import gc_paused

    assert gc.isenabled()
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
