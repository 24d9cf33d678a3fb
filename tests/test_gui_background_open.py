"""Issue 22: a big store opens on a pool thread. The window keeps answering (its event loop
ticks throughout), shows the progress, can cancel, and shows the project when it is read."""

from __future__ import annotations

import time

import pytest
from PySide6.QtCore import QTimer

from annotator.domain import ImageRecord, ImageStatus, Keypoint, KeypointSchema, Origin, Project
from annotator.domain.annotation import ImageAnnotation, Instance, Visibility
from annotator.io.project_file import load_project, project_to_dict, save_project
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    make_window,
    no_thread_leaks,
    qt_isolated,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")


def _big_store(tmp_path, n: int = 3000):  # noqa: ANN001, ANN202
    schema = KeypointSchema("cat", tuple(f"k{i}" for i in range(8)))
    images = [ImageRecord(f"f/{i:05d}.jpg", 640, 480) for i in range(n)]
    anns = {}
    for i, rec in enumerate(images):
        kps = tuple(Keypoint(i % 600 + j, j * 10.0, Visibility.VISIBLE, Origin.PREDICTED,
                             (i * 7 + j) % 100 / 100) for j in range(8))
        anns[rec.path] = ImageAnnotation((Instance(kps, (1.0, 2.0, 30.0, 40.0), 0.8),
                                          Instance(kps)), ImageStatus.PREDICTED)
    (tmp_path / "images").mkdir()
    path = tmp_path / "big.kpproj"
    save_project(Project(str(tmp_path / "images"), images, schema, anns), path)
    return path


def test_a_big_store_opens_in_the_background_with_progress(qtbot, tmp_path):
    path = _big_store(tmp_path)
    window = make_window(qtbot)
    window.background_open_images = 1000
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    progress: list[int] = []
    window.opener.progress.connect(lambda _p, permille: progress.append(permille))
    with qtbot.waitSignal(window.opener.finished, timeout=60_000):
        t0 = time.perf_counter()
        assert window.open_project(str(path)) is None  # not read yet
        assert window.open_bar.isVisible() and window.open_cancel.isVisible()
        assert window.project is None
    t1 = time.perf_counter()
    timer.stop()
    # the GUI thread's event loop kept running while the store was read
    during = [t for t in ticks if t0 < t < t1]
    assert len(during) >= 5
    assert progress and progress == sorted(progress) and progress[-1] == 1000
    assert window.project is not None and window.project_path == str(path)
    assert not window.open_bar.isVisible()
    assert window.stack.currentWidget() is window.editor
    assert project_to_dict(window.project) == project_to_dict(load_project(path))
    # the review counts came from the pool thread and agree with a recount
    counted = window.review_counts()
    assert counted[1] == 3000 and counted[2] > 0
    window._counts_stale = True
    assert window.review_counts() == counted
    # edits are saved as usual
    first = window.project.images[0].path
    window.project.move_keypoint(first, 0, 3.0, 4.0)
    window.autosaver.flush()
    assert load_project(path).annotation(first).instances[0].keypoints[0].x == 3.0
    window.close()


def test_a_background_open_can_be_cancelled(qtbot, tmp_path):
    path = _big_store(tmp_path)
    before = path.read_bytes()
    window = make_window(qtbot)
    window.background_open_images = 1000
    with qtbot.waitSignal(window.opener.finished, timeout=60_000):
        window.open_project(str(path))
        window.open_cancel.click()
    assert window.project is None and not window.open_bar.isVisible()
    assert "cancelled" in window.statusBar().currentMessage()
    assert window.stack.currentWidget() is window.welcome
    assert path.read_bytes() == before
    window.close()


def test_a_damaged_big_store_is_reported(qtbot, tmp_path):
    import sqlite3

    path = _big_store(tmp_path)
    con = sqlite3.connect(path)
    con.execute("UPDATE instances SET keypoints = '[[1, 2, 2, \"guessed\"]]' WHERE idx = 0")
    con.commit()
    con.close()
    window = make_window(qtbot)
    window.background_open_images = 1000
    with qtbot.waitSignal(window.opener.finished, timeout=60_000):
        window.open_project(str(path))
    assert window.project is None
    level, _title, text = window.messages[-1]
    assert level == "error" and "guessed" in text and "big.kpproj" in text
    window.close()
