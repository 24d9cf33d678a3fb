"""Full-size images for the canvas, decoded on a pool thread so the GUI never waits for a file.

The editor asks for the image it is about to show; only the newest request matters. At most one
decode runs at a time and at most one more waits (the newest wanted image, else a prefetch), so
paging quickly through a folder decodes the images the user stops at, not every one passed.
Results come back through a queued signal; a result for a path no longer wanted is cached but
not delivered, and results from before :meth:`ImageLoader.set_root` or :meth:`stop` are dropped.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from functools import partial

from PySide6.QtCore import QObject, QThreadPool, Signal
from PySide6.QtGui import QImage

from annotator.gui.pool_owner import ImagePool
from annotator.gui.qimage import decode_and_emit
from annotator.gui.thumbnails import register_pool_user
from annotator.io.video import ImageSource

log = logging.getLogger(__name__)


class _Emitter(QObject):
    """Lives on the GUI thread; the pool thread emits through it (queued to the GUI)."""

    done = Signal(int, str, object, str)  # generation, path, QImage or None, error


class ImageLoader(QObject, ImagePool):
    """Decodes the images the editor shows, newest request first, keeping a few recent ones."""

    loaded = Signal(str, object, str)  # path, QImage or None, error: for the wanted path only

    def __init__(self, cache_size: int = 6, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._emitter = _Emitter(self)
        self._emitter.done.connect(self._on_done)
        self._cache_size = cache_size
        self._cache: OrderedDict[str, QImage] = OrderedDict()
        self._root = ""
        self._source = ImageSource("")
        self._generation = 0
        self._wanted: str | None = None  # the path last requested
        self._next: str | None = None  # wanted, waiting for the running decode
        self._prefetch: str | None = None
        self._in_flight: str | None = None
        register_pool_user(self)

    def _forget(self) -> None:
        self._wanted = self._next = self._prefetch = self._in_flight = None

    def cached(self, path: str) -> QImage | None:
        img = self._cache.get(path)
        if img is not None:
            self._cache.move_to_end(path)
        return img

    def request(self, path: str) -> QImage | None:
        """The image at once if cached; otherwise None and :attr:`loaded` follows for it
        (unless another path is requested first)."""
        self._wanted = path
        img = self.cached(path)
        if img is not None:
            self._next = None
            return img
        if self._in_flight != path:
            self._next = path
            self._pump()
        return None

    def prefetch(self, path: str) -> None:
        """Decode ``path`` into the cache when nothing wanted is waiting (e.g. the next image)."""
        if path not in self._cache and path != self._in_flight:
            self._prefetch = path
            self._pump()

    @property
    def pending(self) -> int:
        """Decodes running or waiting."""
        return sum(p is not None for p in (self._in_flight, self._next, self._prefetch))

    def _pump(self) -> None:
        if self._in_flight is not None:
            return
        while True:
            if self._next is not None:
                path, self._next = self._next, None
            elif self._prefetch is not None:
                path, self._prefetch = self._prefetch, None
            else:
                return
            if path not in self._cache:
                break
        self._in_flight = path
        self._pool.start(partial(decode_and_emit, self._emitter.done.emit, self._generation, path,
                                 partial(self._source.load, path)))

    def _on_done(self, generation: int, path: str, image: QImage | None, error: str) -> None:
        if generation != self._generation:
            return
        self._in_flight = None
        if image is not None:
            self._cache[path] = image
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            log.info("image %s failed: %s", path, error)
        if path == self._wanted:
            self.loaded.emit(path, image, error or "unreadable")
        self._pump()

