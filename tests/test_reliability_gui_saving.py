"""GUI saving: Ctrl+S and autosave write off the GUI thread; a crash's journal is recovered
when the project is opened; a failed Ctrl+S is shown."""

from __future__ import annotations

import threading

import pytest

import annotator.io.project_file as project_file
from annotator.io.autosave import Autosaver
from annotator.io.project_file import load_project
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    make_window,
    no_thread_leaks,
    open_demo_project,
    qt_isolated,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")


def test_ctrl_s_and_autosave_write_off_the_gui_thread(qtbot, tmp_path, monkeypatch):
    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    threads = []
    real = project_file.save_project

    def spy(p, path, **kw):  # noqa: ANN001, ANN003, ANN202
        threads.append(threading.current_thread() is threading.main_thread())
        return real(p, path, **kw)

    monkeypatch.setattr(project_file, "save_project", spy)
    ref = project.reference_paths()[0]
    project.move_keypoint(ref, 0, 21.0, 22.0)
    assert window.save()  # Ctrl+S
    qtbot.waitUntil(lambda: bool(threads) and not window.autosaver.dirty, timeout=5000)
    project.move_keypoint(ref, 0, 23.0, 24.0)  # autosave after the 0.2 s delay
    qtbot.waitUntil(lambda: len(threads) >= 2 and not window.autosaver.dirty, timeout=5000)
    assert threads[:2] == [False, False]
    assert load_project(window.project_path, recover=False).annotation(ref) \
        .instances[0].keypoints[0].x == 23.0
    window.close()


def test_open_recovers_journaled_edits_after_a_crash(qtbot, tmp_path):
    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    path = window.project_path
    ref = project.reference_paths()[0]
    window.set_project(None, None)
    crashed = load_project(path)
    saver = Autosaver(crashed, path, delay_s=3600)  # a session that dies before saving
    crashed.move_keypoint(ref, 0, 31.0, 32.0)
    saver.detach()
    assert window.open_project(path) is not None
    assert window.project.annotation(ref).instances[0].keypoints[0].x == 31.0
    assert "Recovered 1 unsaved edit" in window.statusBar().currentMessage()
    assert window.autosaver.dirty  # folded into the file soon
    qtbot.waitUntil(lambda: not window.autosaver.dirty, timeout=5000)
    assert load_project(path, recover=False).annotation(ref).instances[0].keypoints[0].x == 31.0
    window.close()


def test_failed_ctrl_s_is_shown(qtbot, tmp_path, monkeypatch):
    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    path = window.project_path
    real = project_file.save_project

    def full(p, where, **kw):  # noqa: ANN001, ANN003, ANN202
        raise OSError(28, "No space left on device")

    project.move_keypoint(project.reference_paths()[0], 0, 1.0, 2.0)
    monkeypatch.setattr(project_file, "save_project", full)
    window.save()
    qtbot.waitUntil(lambda: any(t == "Save" for _, t, _ in window.messages), timeout=5000)
    assert "No space left" in [m for _, t, m in window.messages if t == "Save"][0]
    monkeypatch.setattr(project_file, "save_project", real)
    window.close()
    assert load_project(path).annotation(project.reference_paths()[0]) \
        .instances[0].keypoints[0].x == 1.0
