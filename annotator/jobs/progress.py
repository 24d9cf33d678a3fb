"""Progress and cooperative cancel for long work (plain Python, no Qt).

A job receives a :class:`TaskState`, reports progress through it and calls :meth:`check`
between units of work. The GUI's QThread worker and the CLI's tqdm bar are thin adapters.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


class Cancelled(Exception):
    """Raised by :meth:`TaskState.check` once cancel was requested."""


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    message: str
    elapsed_s: float

    @property
    def rate(self) -> float:
        """Units per second so far (0 before the first unit)."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 and self.done else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate, or None when unknown."""
        rate = self.rate
        return (self.total - self.done) / rate if rate > 0 else None


class TaskState:
    """Thread-safe progress sink and cancel flag handed to a job."""

    def __init__(
        self,
        on_progress: Callable[[Progress], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cancel = threading.Event()
        self._on_progress = on_progress
        self._clock = clock
        self._start = clock()
        self.last: Progress = Progress(0, 0, "", 0.0)

    def set_progress(self, done: int, total: int, message: str = "") -> None:
        self.last = Progress(done, total, message, self._clock() - self._start)
        if self._on_progress is not None:
            self._on_progress(self.last)

    def cancel(self) -> None:
        self._cancel.set()

    def is_cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancel was requested."""
        if self._cancel.is_set():
            raise Cancelled()
