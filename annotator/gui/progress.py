"""Rate and time-left estimates for a running job (pure Python)."""

from __future__ import annotations

import time
from collections.abc import Callable


def format_duration(seconds: float) -> str:
    """``1:05:03``, ``4:07`` or ``12 s``."""
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}:{m:02d}:{s:02d}"
    if m:
        return f"{m}:{s:02d}"
    return f"{s} s"


class RateEstimator:
    """Images per second and time left, from the start of a run."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.done = 0
        self._clock = clock
        self._start = clock()

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    @property
    def rate(self) -> float | None:
        """Images per second, or None before the first one finishes."""
        el = self.elapsed
        return self.done / el if self.done and el > 0 else None

    @property
    def eta(self) -> float | None:
        r = self.rate
        return (self.total - self.done) / r if r else None

    def text(self) -> str:
        """``3 / 10 images, 0.52 img/s, 0:13 left``."""
        parts = [f"{self.done} / {self.total} images"]
        r = self.rate
        if r is not None:
            parts.append(f"{r:.2f} img/s" if r >= 0.1 else f"{1 / r:.0f} s/img")
            parts.append(f"{format_duration(self.eta or 0)} left")
        return ", ".join(parts)
