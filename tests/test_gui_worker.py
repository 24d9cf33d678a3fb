"""The worker thread: cancel, errors, missing weights, closing mid-run, a responsive GUI."""

from __future__ import annotations

import time

import pytest
from PySide6.QtCore import QElapsedTimer, Qt, QTimer

from annotator.domain import ImageStatus
from annotator.engine import Engine
from annotator.features.content import ContentExtractor
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    BrokenEngine,
    make_window,
    missing_weights_factory,
    no_thread_leaks,
    open_demo_project,
    qt_isolated,
    show_image,
    slow_factory,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")


def predicted(project):  # noqa: ANN001, ANN201
    return project.paths_with_status(ImageStatus.PREDICTED)


def test_cancel_mid_propagation(qtbot, tmp_path):  # noqa: ANN001
    window = make_window(qtbot, slow_factory(0.3))
    project = open_demo_project(window, tmp_path)
    with qtbot.waitSignal(window.controller.prediction_ready, timeout=20_000):
        assert window.propagate()
    assert window.cancel_button.isVisible()
    with qtbot.waitSignal(window.controller.run_finished, timeout=5000) as finished:
        qtbot.mouseClick(window.cancel_button, Qt.MouseButton.LeftButton)
    assert finished.args == ["cancelled"]
    assert not window.controller.busy and not window.cancel_button.isVisible()
    qtbot.wait(800)  # results the worker still sends for the cancelled run are dropped
    window.flush_predictions()
    n = len(predicted(project))
    assert 1 <= n < 5
    # the worker is free again: a new run completes the rest
    with qtbot.waitSignal(window.controller.run_finished, timeout=30_000) as again:
        window.propagate()
    assert again.args == ["done"] and len(predicted(project)) == 5
    window.close()


def test_worker_exception_becomes_a_message(qtbot, tmp_path):  # noqa: ANN001
    window = make_window(qtbot, lambda settings: BrokenEngine())
    project = open_demo_project(window, tmp_path)
    with qtbot.waitSignal(window.controller.run_finished, timeout=10_000) as finished:
        window.propagate()
    assert finished.args == ["failed"]
    assert [(m[0], m[1]) for m in window.messages] == [("error", "Worker error")]
    assert "boom" in window.messages[0][2]
    assert predicted(project) == []
    with qtbot.waitSignal(window.controller.run_finished, timeout=10_000) as again:
        window.propagate()  # the worker thread survived and serves the next request
    assert again.args == ["failed"] and len(window.messages) == 2
    window.close()


def test_missing_weights_keeps_manual_annotation(qtbot, tmp_path):  # noqa: ANN001
    window = make_window(qtbot, missing_weights_factory)
    project = open_demo_project(window, tmp_path)
    with qtbot.waitSignal(window.controller.run_finished, timeout=10_000):
        window.propagate()
    level, title, text = window.messages[0]
    assert (level, title) == ("warning", "Models unavailable")
    assert "offline" in text and "Settings" in text and "Manual annotation" in text
    assert window.model_label.text() == "models: unavailable"
    show_image(window, "chelsea_small.jpg")
    canvas = window.editor.canvas
    p = canvas.to_widget(30, 30)
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=p.toPoint())
    assert project.annotation("chelsea_small.jpg").has_labels
    window.close()


def test_close_mid_run_cancels_and_joins(qtbot, tmp_path):  # noqa: ANN001
    from annotator.gui.worker import running_worker_threads

    window = make_window(qtbot, slow_factory(0.3))
    open_demo_project(window, tmp_path)
    with qtbot.waitSignal(window.controller.prediction_ready, timeout=20_000):
        window.propagate()
    t = time.perf_counter()
    window.close()
    elapsed = time.perf_counter() - t
    print(f"\nclose during propagation joined the worker in {elapsed * 1000:.0f} ms")
    assert running_worker_threads() == []
    assert elapsed < 10


def test_event_loop_serves_timers_while_worker_runs(qtbot, tmp_path):  # noqa: ANN001
    """Measure the longest gap between 5 ms timer ticks during a run (reported, no threshold)."""
    window = make_window(qtbot, lambda settings: Engine(extractor=ContentExtractor()))
    open_demo_project(window, tmp_path)
    clock = QElapsedTimer()
    clock.start()
    ticks: list[int] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(clock.elapsed()))
    timer.start()
    with qtbot.waitSignal(window.controller.run_finished, timeout=30_000):
        window.propagate()
    timer.stop()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    print(f"\nevent loop during propagation: {len(ticks)} ticks, longest gap {max(gaps)} ms, "
          f"run {ticks[-1] - ticks[0]} ms")
    assert len(ticks) > 10
    window.close()


def test_heatmap_is_computed_on_the_worker(qtbot, tmp_path):  # noqa: ANN001
    window = make_window(qtbot)
    open_demo_project(window, tmp_path)
    show_image(window, "chelsea_mirror.jpg")
    with qtbot.waitSignal(window.controller.heatmap_ready, timeout=20_000) as got:
        window.editor.heatmap_box.setChecked(True)
    heat = got.args[0]
    w, h = window.editor.canvas.image_size
    assert heat.ndim == 2 and abs(heat.shape[1] / heat.shape[0] - w / h) < 0.05
    assert window.editor.canvas.has_heatmap
    window.editor.heatmap_box.setChecked(False)
    assert not window.editor.canvas.has_heatmap
    window.close()


class DownloadingEngine:
    """Reports a weight download while its models load, then works as the content engine."""

    def __init__(self) -> None:
        self.on_download = None
        self._engine = Engine(extractor=ContentExtractor())

    @property
    def extractor(self):  # noqa: ANN201
        for done in range(1, 4):
            self.on_download("Stable Diffusion", done, 3)
        return self._engine.extractor

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._engine, name)


def test_first_run_shows_download_progress(qtbot, tmp_path):  # noqa: ANN001
    window = make_window(qtbot, lambda settings: DownloadingEngine())
    open_demo_project(window, tmp_path)
    texts = []
    window.controller.model_state.connect(lambda state, detail: texts.append((state, detail)))
    with qtbot.waitSignal(window.controller.run_finished, timeout=30_000):
        window.propagate()
    assert ("downloading", "Stable Diffusion: 3/3 files") in texts
    assert texts[-1][0] == "ready" and window.model_label.text() == "models: ready"
    window.close()


class EndlessDownloadEngine(DownloadingEngine):
    """A weight download that would take for ever unless the worker abandons it."""

    @property
    def extractor(self):  # noqa: ANN201
        done = 0
        while True:
            done += 1
            self.on_download("Stable Diffusion", done, 10**9)
            time.sleep(0.01)


def test_closing_during_a_weight_download_does_not_hang(qtbot, tmp_path):  # noqa: ANN001
    window = make_window(qtbot, lambda settings: EndlessDownloadEngine())
    project = open_demo_project(window, tmp_path)
    states = []
    window.controller.model_state.connect(lambda state, detail: states.append(state))
    window.propagate()
    qtbot.waitUntil(lambda: "downloading" in states, timeout=10_000)
    ref = project.reference_paths()[0]
    project.move_keypoint(ref, 0, 9.0, 9.0)  # an edit right before closing
    timer = QElapsedTimer()
    timer.start()
    window.close()
    print(f"\nclose during download: {timer.elapsed()} ms")
    assert timer.elapsed() < 10_000
    assert not window.controller.busy or not window.isVisible()
    from annotator.io.project_file import load_project

    saved = load_project(window.project_path or str(tmp_path / "demo" / "demo.kpproj.json"))
    assert saved.annotation(ref).instances[0].keypoints[0].x == 9.0
