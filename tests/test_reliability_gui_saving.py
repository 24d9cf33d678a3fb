"""GUI saving: every edit is written to the project store off the GUI thread; a session that
died leaves its edits in the store; a legacy JSON project opens migrated, with one message;
a failed Ctrl+S is shown."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from annotator.io.autosave import Autosaver
from annotator.io.project_file import load_project
from annotator.io.store import ProjectStore
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    make_window,
    no_thread_leaks,
    open_demo_project,
    qt_isolated,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")


def test_edits_and_ctrl_s_write_off_the_gui_thread(qtbot, tmp_path, monkeypatch):
    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    assert window.project_path.endswith("demo.kpproj")  # the shipped JSON demo, migrated
    threads = []
    real = Autosaver._write

    def spy(self, changes):  # noqa: ANN001, ANN202
        threads.append(threading.current_thread() is threading.main_thread())
        return real(self, changes)

    monkeypatch.setattr(Autosaver, "_write", spy)
    ref = project.reference_paths()[0]
    project.move_keypoint(ref, 0, 21.0, 22.0)
    assert window.save()  # Ctrl+S
    qtbot.waitUntil(lambda: bool(threads) and not window.autosaver.dirty, timeout=5000)
    qtbot.waitUntil(lambda: "Saved" in window.statusBar().currentMessage(), timeout=5000)
    project.move_keypoint(ref, 0, 23.0, 24.0)  # no save needed
    qtbot.waitUntil(lambda: len(threads) >= 2 and not window.autosaver.dirty, timeout=5000)
    assert not any(threads)
    # another process reads it while the window is open
    assert load_project(window.project_path).annotation(ref).instances[0].keypoints[0].x == 23
    window.close()


def test_a_session_that_died_left_its_edits_in_the_store(qtbot, tmp_path):
    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    path = window.project_path
    ref = project.reference_paths()[0]
    window.set_project(None, None)
    crashed = load_project(path)
    saver = Autosaver(crashed, path)  # a session that dies right after an edit
    crashed.move_keypoint(ref, 0, 31.0, 32.0)
    saver._thread = None  # noqa: SLF001  (dies: nothing more is written or closed)
    saver._unsubscribe()  # noqa: SLF001
    assert window.open_project(path) is not None
    assert window.project.annotation(ref).instances[0].keypoints[0].x == 31.0
    assert not window.autosaver.dirty
    window.close()


def test_failed_ctrl_s_is_shown_and_the_edit_kept(qtbot, tmp_path, monkeypatch):
    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    path = window.project_path
    real = ProjectStore.write_annotations

    def full(self, changes):  # noqa: ANN001, ANN202
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ProjectStore, "write_annotations", full)
    project.move_keypoint(project.reference_paths()[0], 0, 1.0, 2.0)
    window.save()
    qtbot.waitUntil(lambda: any(t == "Save" for _, t, _ in window.messages), timeout=5000)
    assert "Cannot save" in [m for _, t, m in window.messages if t == "Save"][0]
    assert window.autosaver.dirty and "*" in window.windowTitle()
    monkeypatch.setattr(ProjectStore, "write_annotations", real)
    window.close()  # the write succeeds now: nothing lost
    assert load_project(path).annotation(project.reference_paths()[0]) \
        .instances[0].keypoints[0].x == 1.0
