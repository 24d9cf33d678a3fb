"""The waiting side of a GUI helper that runs its work on a QThreadPool of its own."""

from __future__ import annotations

from typing import Any

import shiboken6
from PySide6.QtCore import QThreadPool

from annotator.io.video import ImageSource


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
        """Pool threads working now (0 once the owner's C++ side is gone)."""
        if not shiboken6.isValid(self._pool):
            return 0
        return self._pool.activeThreadCount()


class ImagePool(PoolOwner):
    """A PoolOwner decoding the images under one root into ``self._cache``; a result whose
    ``self._generation`` is older than the current one is dropped. Subclasses drop their
    queued work in :meth:`_forget`."""

    _cache: Any
    _generation: int
    _root: str
    _source: ImageSource

    def set_root(self, root: str, source: ImageSource | None = None) -> None:
        """Forget everything and serve images under ``root``, through ``source`` (the
        project's :meth:`ImageSource.live`, so its video frames decode; default: files)."""
        self._generation += 1
        self._root = root
        self._source = source if source is not None else ImageSource(root)
        self._cache.clear()
        self._forget()

    def drop_work(self) -> None:
        """Drop waiting work and the results of the running decodes (nothing waits)."""
        self._generation += 1
        self._forget()

    def stop(self, timeout_ms: int = 10_000) -> bool:
        """Drop waiting work and wait for the running decodes (their results are dropped)."""
        self.drop_work()
        return self.wait(timeout_ms)

    def _forget(self) -> None:
        """Drop the work queued for the old generation."""
