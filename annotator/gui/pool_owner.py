"""The waiting side of a GUI helper that runs its work on a QThreadPool of its own."""

from __future__ import annotations

import shiboken6
from PySide6.QtCore import QThreadPool


class PoolOwner:
    """``wait`` and ``active_threads`` for a QObject whose work runs on ``self._pool``
    (a QThreadPool parented to it, so it may already be gone when the window closes)."""

    _pool: QThreadPool

    def wait(self, timeout_ms: int = 120_000) -> bool:
        """Wait for running work (closing the window); returns whether it ended."""
        if not shiboken6.isValid(self._pool):
            return True
        return bool(self._pool.waitForDone(timeout_ms))

    @property
    def active_threads(self) -> int:
        if not shiboken6.isValid(self._pool):
            return 0
        return self._pool.activeThreadCount()
