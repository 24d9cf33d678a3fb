"""Work on the GUI thread split over turns of the event loop."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable

from PySide6.QtCore import QObject, QTimer

log = logging.getLogger(__name__)


class TurnSteps(QObject):
    """Steps run one per turn of the event loop, in order: between two steps the loop
    handles input, timers and paints, so no single turn of the GUI thread is long even when
    the thread runs several times slower than usual (as it sometimes does on a shared
    machine). ``then`` runs once after the last step, or when the steps are dropped or run
    at once. A step that raises is logged; the next steps still run."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._steps: deque[Callable[[], object]] = deque()
        self._then: Callable[[], object] | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._next)

    @property
    def pending(self) -> int:
        """Steps not run yet."""
        return len(self._steps)

    def start(self, steps: Iterable[Callable[[], object]],
              then: Callable[[], object] | None = None) -> None:
        """Run ``steps`` over the next turns (steps still pending from before run first,
        at once)."""
        self.finish()
        self._steps.extend(steps)
        self._then = then
        if self._steps:
            self._timer.start()
        else:
            self._end()

    def finish(self) -> None:
        """Run the pending steps now (the window is closing)."""
        self._timer.stop()
        while self._steps:
            self._run(self._steps.popleft())
        self._end()

    def drop(self) -> None:
        """Forget the pending steps (what they would undo was replaced meanwhile)."""
        self._timer.stop()
        self._steps.clear()
        self._end()

    def _next(self) -> None:
        if self._steps:
            self._run(self._steps.popleft())
        if self._steps:
            self._timer.start()
        else:
            self._end()

    def _end(self) -> None:
        then, self._then = self._then, None
        if then is not None:
            self._run(then)

    @staticmethod
    def _run(step: Callable[[], object]) -> None:
        try:
            step()
        except Exception:  # one failed step must not leave the others (a hold) undone
            log.exception("a step split over turns of the event loop failed")


__all__ = ["TurnSteps"]
