"""Closing when the project cannot be saved never silently drops the user's edits."""

from __future__ import annotations

import os
import sqlite3

import pytest
from PySide6.QtWidgets import QMessageBox

from annotator.io.project_file import load_project
from annotator.io.store import ProjectStore
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    make_window,
    no_thread_leaks,
    open_demo_project,
    qt_isolated,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")


def failing_at(bad_path, monkeypatch):  # noqa: ANN001, ANN201
    """Writes to the store at ``bad_path`` fail as on a full disk."""
    real = ProjectStore.write_annotations

    def write(self, changes):  # noqa: ANN001, ANN202
        if os.path.samefile(self.path, bad_path):
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, changes)

    monkeypatch.setattr(ProjectStore, "write_annotations", write)


def test_close_offers_save_elsewhere_then_cancel_or_save(qtbot, tmp_path, monkeypatch):
    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    old_path = window.project_path
    path0 = project.images[0].path
    failing_at(old_path, monkeypatch)
    project.move_keypoint(project.reference_paths()[0], 0, 3.0, 4.0)
    answers = [QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Save]
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: answers.pop(0))
    assert not window.close()  # cancelled: the window and the edit stay
    assert window.isVisible() and window.project is project
    new_path = tmp_path / "elsewhere.kpproj"
    monkeypatch.setattr(window, "_ask_save_file", lambda *a: str(new_path))
    assert window.close()
    saved = load_project(new_path)
    ref = project.reference_paths()[0]
    assert saved.annotation(ref).instances[0].keypoints[0].x == 3.0
    assert path0 in {r.path for r in saved.images}


def test_reopening_the_open_project_keeps_unsaved_edits(qtbot, tmp_path):
    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    ref = project.reference_paths()[0]
    project.move_keypoint(ref, 0, 11.0, 12.0)  # not yet autosaved
    assert window.open_project(window.project_path) is project
    assert window.project.annotation(ref).instances[0].keypoints[0].x == 11.0
    window.close()


def test_switching_projects_when_saving_fails_asks_first(qtbot, tmp_path, monkeypatch):
    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    ref = project.reference_paths()[0]
    failing_at(window.project_path, monkeypatch)
    project.move_keypoint(ref, 0, 5.0, 6.0)
    monkeypatch.setattr(QMessageBox, "question",
                        lambda *a, **k: QMessageBox.StandardButton.Cancel)
    window.close_project()
    assert window.project is project  # cancelled: nothing dropped
    monkeypatch.setattr(QMessageBox, "question",
                        lambda *a, **k: QMessageBox.StandardButton.Discard)
    window.close_project()
    assert window.project is None
    window.close()


def test_schema_cannot_change_under_a_running_propagation(qtbot, tmp_path):
    from tests.test_gui_support import slow_factory

    window = make_window(qtbot, slow_factory(0.3))
    project = open_demo_project(window, tmp_path)
    schema = project.schema
    with qtbot.waitSignal(window.controller.prediction_ready, timeout=20_000):
        assert window.propagate()
    window.edit_schema()  # refused with a message, no dialog
    assert window.messages[-1][1] == "Keypoint schema" and project.schema is schema
    with qtbot.waitSignal(window.controller.run_finished, timeout=10_000):
        window.cancel_propagation()
    assert project.history.undo_text == "Propagate"
    window.close()
