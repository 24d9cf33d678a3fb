"""Shared fixtures and fake engines for the GUI tests (import them into each test module).

Kept in a test_gui_* module because the GUI engineer does not own conftest.py; the lead may
move the fixtures there.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

os.environ["QT_QPA_PLATFORM"] = "offscreen"

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO_IMAGES = ROOT / "resources" / "demo" / "images"


def content_engine(settings=None):  # noqa: ANN001, ANN201
    """A deterministic weight-free engine (ContentExtractor); built on the worker thread."""
    from annotator.engine import Engine
    from annotator.features.content import ContentConfig, ContentExtractor

    return Engine(extractor=ContentExtractor(ContentConfig(size=128, grid=16)))


class SlowEngine:
    """Wraps the content engine, sleeping ``delay`` seconds per target image."""

    def __init__(self, delay: float) -> None:
        self._engine = content_engine()
        self.delay = delay

    def iter_transfer(self, references, targets, flip_pairs=(), flip=None):  # noqa: ANN001, ANN201
        def slow(items):  # noqa: ANN001, ANN202
            for image in items:
                time.sleep(self.delay)
                yield image

        yield from self._engine.iter_transfer(references, slow(targets), flip_pairs, flip)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._engine, name)


def slow_factory(delay: float):  # noqa: ANN201
    return lambda settings: SlowEngine(delay)


class BrokenEngine:
    """An engine whose transfer (and feature extraction: found boxes, prototypes) raises."""

    def iter_transfer(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        raise RuntimeError("boom: the engine failed")
        yield  # pragma: no cover

    def features(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        raise RuntimeError("boom: the engine failed")


def missing_weights_factory(settings):  # noqa: ANN001, ANN201
    class ModelLoadError(RuntimeError):
        pass

    raise ModelLoadError("stable-diffusion-v1-5 not found locally and the machine is offline")


@pytest.fixture
def qt_isolated(qapp, tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    """No real message boxes, recent projects in a temporary ini file."""
    from PySide6.QtWidgets import QMessageBox

    from annotator.gui import recent

    monkeypatch.setattr(recent, "SETTINGS_FILE", str(tmp_path / "settings.ini"))
    for name in ("information", "warning", "critical", "question"):
        monkeypatch.setattr(QMessageBox, name, lambda *a, **k: QMessageBox.StandardButton.Ok)
    return qapp


@pytest.fixture
def no_thread_leaks(qapp):  # noqa: ANN001, ANN201
    """Fail a test that leaves a worker thread, a thumbnail decode, a free of a closed
    project or a Python thread running (the threads that free closed projects live as long
    as the process: started before, they must be idle after)."""
    from annotator.gui.release import frees_held, frees_pending, start_freeing
    from annotator.gui.thumbnails import busy_thumbnail_threads
    from annotator.gui.worker import running_worker_threads

    start_freeing()
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while (running_worker_threads() or busy_thumbnail_threads() or frees_pending()
           or frees_held()) and time.monotonic() < deadline:
        qapp.processEvents()
        time.sleep(0.01)
    leaked = running_worker_threads()
    assert not leaked, f"worker threads still running: {leaked}"
    assert busy_thumbnail_threads() == 0, "thumbnail decodes still running"
    assert frees_held() == 0, "the frees of closed projects are still held back"
    assert frees_pending() == 0, "a closed project is still being freed"
    extra = [
        t for t in threading.enumerate()
        if t not in before and t.is_alive() and not isinstance(t, threading._DummyThread)
    ]
    assert not extra, f"Python threads left running: {extra}"


@pytest.fixture
def image_folder(tmp_path):  # noqa: ANN001, ANN201
    """The demo views plus one unreadable file."""
    folder = tmp_path / "images"
    shutil.copytree(DEMO_IMAGES, folder)
    (folder / "zz_broken.jpg").write_bytes(b"this is not a jpeg")
    return folder


def make_window(qtbot, factory=content_engine, size=(1280, 800)):  # noqa: ANN001, ANN201
    from annotator.gui.main_window import MainWindow

    window = MainWindow(engine_factory=factory, autosave_delay_s=0.2)
    qtbot.addWidget(window)
    window.resize(*size)
    window.show()
    qtbot.waitExposed(window)
    window.activateWindow()  # window shortcuts need the active window
    qtbot.waitUntil(window.isActiveWindow, timeout=2000)
    return window


def wait_image(window, path=None, timeout=10.0):  # noqa: ANN001, ANN201
    """Run the event loop until the editor shows ``path`` (default: the current image);
    the canvas decodes images on a pool thread."""
    from PySide6.QtWidgets import QApplication

    editor = window.editor
    deadline = time.monotonic() + timeout
    while editor.shown_path is None or editor.shown_path != (path or editor.current_path):
        assert time.monotonic() < deadline, f"image {path or editor.current_path} not shown"
        QApplication.processEvents()
        time.sleep(0.002)


def show_image(window, path):  # noqa: ANN001, ANN201
    """Select ``path`` in the editor and wait until its image is on the canvas."""
    window.editor.show_image(path)
    wait_image(window, path)


def open_demo_project(window, tmp_path):  # noqa: ANN001, ANN201
    project = window.open_demo(str(tmp_path / "demo"))
    assert project is not None
    wait_image(window)
    return project
