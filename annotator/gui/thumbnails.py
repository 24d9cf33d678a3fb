"""Lazy thumbnails: decoded on a QThreadPool off the GUI thread, newest request first, cached."""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from functools import partial

from PySide6.QtCore import QObject, QThreadPool, Signal
from PySide6.QtGui import QImage, QPixmap

from annotator.gui.pool_owner import ImagePool
from annotator.gui.qimage import decode_and_emit
from annotator.io.video import ImageSource

log = logging.getLogger(__name__)


class _Emitter(QObject):
    """Lives on the GUI thread; pool threads emit through it (queued to the GUI)."""

    done = Signal(int, str, object, str)  # generation, path, QImage or None, error


_LOADERS: weakref.WeakSet[QObject] = weakref.WeakSet()


def register_pool_user(loader: QObject) -> None:
    """Count ``loader.active_threads`` in :func:`busy_thumbnail_threads`."""
    _LOADERS.add(loader)


def busy_thumbnail_threads() -> int:
    """Pool threads of all loaders (thumbnails, full images) still decoding (for tests)."""
    return sum(loader.active_threads for loader in list(_LOADERS))  # type: ignore[attr-defined]


class ThumbnailLoader(QObject, ImagePool):
    """Serves cached thumbnails and loads missing ones in the background.

    Requests form a stack (the most recent first) and at most ``max_threads`` decodes run at
    once, so fast scrolling through 10,000 images only decodes what was last on screen.
    """

    loaded = Signal(str)  # path whose thumbnail (or error) is now available

    def __init__(
        self, size: int = 128, cache_size: int = 4000, max_threads: int = 2,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.size = size
        self._cache_size = cache_size
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max_threads)
        self._emitter = _Emitter(self)
        self._emitter.done.connect(self._on_done)
        self._cache: OrderedDict[str, QPixmap] = OrderedDict()
        self._errors: dict[str, str] = {}
        self._stack: list[str] = []
        self._queued: set[str] = set()
        self._in_flight: set[str] = set()
        self._root = ""
        self._source = ImageSource("")
        self._generation = 0
        self._max_stack = 512
        register_pool_user(self)

    def set_root(self, root: str, source: ImageSource | None = None) -> None:
        super().set_root(root, source)
        self._errors.clear()

    def _forget(self) -> None:
        self._stack.clear()
        self._queued.clear()
        self._in_flight.clear()

    def pixmap(self, path: str) -> QPixmap | None:
        """The cached thumbnail, or None (and a background load is scheduled)."""
        pm = self._cache.get(path)
        if pm is not None:
            self._cache.move_to_end(path)
            return pm
        if path not in self._errors:
            self.request(path)
        return None

    def error(self, path: str) -> str | None:
        """Why ``path`` could not be read, if it could not."""
        return self._errors.get(path)

    def request(self, path: str) -> None:
        if path in self._in_flight:
            return
        if path in self._queued:
            self._stack.remove(path)
        self._stack.append(path)
        self._queued.add(path)
        if len(self._stack) > self._max_stack:  # long-gone rows: forget them
            for old in self._stack[: -self._max_stack]:
                self._queued.discard(old)
            del self._stack[: -self._max_stack]
        self._pump()

    def _pump(self) -> None:
        while self._stack and len(self._in_flight) < self._pool.maxThreadCount():
            path = self._stack.pop()
            self._queued.discard(path)
            self._in_flight.add(path)
            task = partial(decode_and_emit, self._emitter.done.emit, self._generation, path,
                           partial(self._source.load, path, self.size))
            self._pool.start(task)

    def _on_done(self, generation: int, path: str, image: QImage | None, error: str) -> None:
        if generation != self._generation:
            return
        self._in_flight.discard(path)
        if image is not None:
            self._cache[path] = QPixmap.fromImage(image)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            log.info("thumbnail of %s failed: %s", path, error)
            self._errors[path] = error or "unreadable"
        self.loaded.emit(path)
        self._pump()

    def mark_unreadable(self, path: str, error: str) -> None:
        """Record an error found elsewhere (e.g. by the worker)."""
        self._errors[path] = error
        self.loaded.emit(path)

    @property
    def pending(self) -> int:
        """Thumbnails queued or being decoded for the current root."""
        return len(self._stack) + len(self._in_flight)

