"""Entry points for benchmarks and scripted use of the real main window.

:func:`open_window` shows a :class:`MainWindow` over a :class:`Project` already in memory,
isolated from the user's state: no recent-files entry is read or written (QSettings), no
autosaver runs and nothing is saved. :func:`content_engine_factory` builds the weight-free
engine (content descriptor) for :meth:`MainWindow.start_propagation`, so a propagation keeps the
worker busy without model weights. :class:`StallMeter` measures event-loop stalls.
"""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import QEventLoop, Qt, QTimer
from PySide6.QtWidgets import QApplication

from annotator.domain import Project, ProjectSettings
from annotator.gui.main_window import MainWindow
from annotator.gui.worker import EngineFactory, Preloader


def open_window(
    project: Project,
    engine_factory: EngineFactory | None = None,
    size: tuple[int, int] = (1400, 860),
    show: bool = True,
    preloader: Preloader | None = None,
) -> MainWindow:
    """A main window showing ``project``, touching none of the user's settings or files.

    With ``show`` the window is shown and one event-loop pass has run, so the gallery is laid
    out and its first thumbnails are requested when this returns. ``preloader`` is what
    ``window.controller.preload()`` runs on the worker (default: nothing).
    """
    window = MainWindow(engine_factory=engine_factory, isolated=True, preload_models=False)
    if preloader is not None:  # measured by the caller through controller.preload()
        window.controller.set_preloader(preloader)
    window.resize(*size)
    window.set_project(project, None)
    if show:
        window.show()
        app = QApplication.instance()
        if app is not None:
            app.processEvents()
    return window


def content_engine_factory(settings: ProjectSettings | None = None) -> Any:
    """The weight-free engine: content descriptor, ``fast`` preset, hard argmax.

    Called on the worker thread (it imports the engine stack, not torch's models).
    """
    from annotator.jobs.engine_factory import build_engine

    return build_engine(ProjectSettings(preset="fast"), extractor="content", use_cache=False)


class StallMeter:
    """The longest gap between ticks of a fast timer, less its interval: an event-loop stall."""

    def __init__(self, interval_ms: int = 2) -> None:
        self.interval = interval_ms / 1000
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.last = time.perf_counter()
        self.max_gap = 0.0
        self.ticks = 0
        self.long_stalls = 0  # gaps over 50 ms

    def _tick(self) -> None:
        now = time.perf_counter()
        gap = now - self.last - self.interval
        self.max_gap = max(self.max_gap, gap)
        self.long_stalls += gap > 0.050
        self.last = now
        self.ticks += 1

    def start(self) -> None:
        self.last = time.perf_counter()
        self.max_gap = 0.0
        self.ticks = 0
        self.long_stalls = 0
        self.timer.start()

    def stop_ms(self) -> float:
        """Stop; the longest stall since :meth:`start`, in milliseconds."""
        self.timer.stop()
        return max(0.0, self.max_gap * 1000)


def run_for(seconds: float) -> None:
    """Run the event loop for ``seconds``."""
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def run_until(condition: Any, timeout_s: float, poll_ms: int = 20) -> bool:
    """Run the event loop until ``condition()`` is true or ``timeout_s`` passes."""
    loop = QEventLoop()
    deadline = time.perf_counter() + timeout_s

    def check() -> None:
        if condition() or time.perf_counter() > deadline:
            loop.quit()

    poll = QTimer()
    poll.setInterval(poll_ms)
    poll.timeout.connect(check)
    poll.start()
    if not condition():
        loop.exec()
    poll.stop()
    return bool(condition())
