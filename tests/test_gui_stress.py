"""Regression tests for the gallery crash (PySide6 reference leak) and the benchmark entry points.

Scrolling a 10,000-image gallery aborted the process ("Fatal Python error: bool_dealloc") in
``GalleryModel._on_thumbnail`` or a thumbnail decode thread: PySide6 6.12.0 takes one reference
to ``True`` away at every ``Signal.emit()`` (and one to ``None`` at every C++ void call) on
CPython < 3.12, and each thumbnail emits three signals. See annotator/gui/refguard.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import shiboken6
from PySide6.QtCore import Qt

from annotator.domain import ImageStatus
from annotator.gui.gallery import GalleryFilter, GalleryPanel, GallerySort
from annotator.gui.thumbnails import ThumbnailLoader, busy_thumbnail_threads
from tests.test_gui_gallery import big_project
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    DEMO_IMAGES,
    ROOT,
    BrokenEngine,
    no_thread_leaks,
    qt_isolated,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")

# A child process: 150 real thumbnails through the loader, then 40,000 signal emissions and
# 40,000 C++ void calls, far more than the ~600 references to True a fresh process holds.
CHILD = r"""
import os, sys, shutil, tempfile
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QApplication
from annotator.gui.thumbnails import ThumbnailLoader

app = QApplication([])
folder = tempfile.mkdtemp()
for i in range(150):
    shutil.copy(sys.argv[1], os.path.join(folder, f"{i:03d}.jpg"))
loader = ThumbnailLoader(size=48)
loader.set_root(folder)
got = []
loader.loaded.connect(got.append)
for i in range(150):
    loader.pixmap(f"{i:03d}.jpg")
while len(got) < 150:
    app.processEvents()

class Source(QObject):
    ping = Signal(int)

src = Source()
src.ping.connect(lambda n: None)
for n in range(40_000):
    src.ping.emit(n)
    src.setObjectName("x")
loader.stop()
print("survived", len(got))
sys.stdout.flush()
os._exit(0)
"""


def _run_child(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", **env_extra}
    return subprocess.run([sys.executable, "-c", CHILD, str(DEMO_IMAGES / "chelsea_small.jpg")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_many_signals_cannot_abort_the_process():
    out = _run_child({})
    assert out.returncode == 0, f"child died ({out.returncode}):\n{out.stderr[-2000:]}"
    assert "survived 150" in out.stdout


def test_gallery_survives_scrolls_resets_and_closing_mid_decode(qtbot, tmp_path):  # noqa: ANN001
    """Quick scrolls, model resets, root changes and closing while decodes are in flight."""
    project = big_project(tmp_path, 1500)
    decoded = 0
    for round_ in range(3):
        loader = ThumbnailLoader(size=48, cache_size=400)
        panel = GalleryPanel(loader)
        try:
            decoded += _stress_round(qtbot, panel, loader, project, round_)
        finally:
            panel.close()
            loader.stop()
            # delete the C++ side now, on this thread (a later garbage collection could run
            # on the worker thread of another test, where destroying widgets is not allowed)
            shiboken6.delete(panel)
            shiboken6.delete(loader)
    print(f"\nstress: {decoded} thumbnails decoded over 3 rounds")
    assert decoded > 1000


def _stress_round(qtbot, panel, loader, project, round_: int) -> int:  # noqa: ANN001
    panel.resize(900, 900)
    panel.show()
    qtbot.waitExposed(panel)
    seen: list[str] = []
    loader.loaded.connect(seen.append)
    loader.set_root(project.image_root)
    panel.model.set_project(project)
    bar = panel.view.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0, timeout=5000)  # batched layout
    for i in range(16):
        # page by page, wrapping (the range grows while the batched layout goes on)
        bar.setValue((i * bar.pageStep()) % (bar.maximum() + 1))
        qtbot.wait(1)  # decodes start; the next change arrives while they run
        if i % 4 == 1:
            panel.sort_box.setCurrentText(
                (GallerySort.WORST_FIRST if i % 8 == 1 else GallerySort.NAME).value)
        elif i % 4 == 2:
            panel.filter_box.setCurrentText(
                (GalleryFilter.PREDICTED if i % 8 == 2 else GalleryFilter.ALL).value)
        elif i % 4 == 3:
            panel.model.set_project(None)
            panel.model.set_project(project)
        if i % 6 == 5:
            loader.set_root(project.image_root)  # new generation: old results dropped
        if i % 3 == 0:  # let this page finish: thousands of decodes over the test
            qtbot.waitUntil(lambda: loader.pending == 0, timeout=10_000)
    # close while decodes are in flight: ask for 300 thumbnails, then stop at once
    panel.filter_box.setCurrentText(GalleryFilter.ALL.value)
    loader.set_root(project.image_root)
    model = panel.model
    first = (round_ * 400) % (model.rowCount() - 300)
    for row in range(first, first + 300):
        model.data(model.index(row), Qt.ItemDataRole.DecorationRole)
    qtbot.wait(1)
    assert loader.pending > 0
    panel.close()
    assert loader.stop()
    assert loader.active_threads == 0 and busy_thumbnail_threads() == 0
    qtbot.wait(20)  # queued results of the stopped loader arrive and are dropped
    assert loader.pending == 0
    assert all(not pm.isNull() for pm in loader._cache.values())
    return len(seen)


def test_results_of_an_old_root_are_dropped(qtbot, tmp_path):  # noqa: ANN001
    loader = ThumbnailLoader(size=48)
    loader.set_root(str(DEMO_IMAGES))
    assert loader.pixmap("chelsea.jpg") is None  # decode starts under the demo root
    empty = tmp_path / "empty"
    empty.mkdir()
    loader.set_root(str(empty))  # ... and the root changes while it runs
    assert loader.pixmap("chelsea.jpg") is None
    qtbot.waitUntil(lambda: loader.error("chelsea.jpg") is not None, timeout=5000)
    qtbot.waitUntil(lambda: loader.active_threads == 0, timeout=5000)
    qtbot.wait(20)
    assert loader.pixmap("chelsea.jpg") is None  # the old root's image never got in
    assert loader.stop()


def test_bench_window_is_isolated_and_takes_an_engine(qtbot, tmp_path, monkeypatch):  # noqa: ANN001
    from annotator.bench import gui_support as bench_support
    from annotator.gui import recent
    from annotator.io.project_file import load_project

    settings_file = tmp_path / "settings.ini"
    monkeypatch.setattr(recent, "SETTINGS_FILE", str(settings_file))
    monkeypatch.setattr(recent, "recent_projects",
                        lambda: pytest.fail("the isolated window read the recent projects"))
    project = load_project(ROOT / "resources" / "demo" / "demo.kpproj.json")
    window = bench_support.open_window(project, lambda settings: BrokenEngine(), (1000, 700))
    qtbot.addWidget(window)
    assert window.isolated and window.isVisible()
    assert window.editor.gallery.model.rowCount() == len(project)
    assert window.autosaver is None and not window.autosave_timer.isActive()
    outcome: list[str] = []
    window.controller.run_finished.connect(outcome.append)
    # the window's own factory fails; the injected one replaces it from this run on
    assert window.start_propagation(bench_support.content_engine_factory)
    qtbot.waitUntil(lambda: bool(outcome), timeout=60_000)
    assert outcome == ["done"] and not window.messages
    window.flush_predictions()
    assert len(project.paths_with_status(ImageStatus.PREDICTED)) == len(project) - 1
    window.save_as(str(tmp_path / "copy.kpproj.json"))  # an explicit save still works
    assert (tmp_path / "copy.kpproj.json").is_file() and window.autosaver is None
    window.close()
    assert not settings_file.exists()
