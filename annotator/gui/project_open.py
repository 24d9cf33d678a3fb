"""Opening a big project off the GUI thread: the store is read on a pool thread with
progress and cancel, and the window stays responsive meanwhile.

A thin adapter over :func:`annotator.io.project_file.open_project_file`: the same checks and
errors as a synchronous open. The loader thread holds the GIL only between bytecodes, so the
GUI thread gets it back every switch interval (5 ms) and keeps painting and answering input.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal

from annotator.gui.gc_pause import made_and_frozen
from annotator.gui.pool_owner import PoolOwner
from annotator.gui.release import FreesHeld, hold_frees
from annotator.gui.thumbnails import register_pool_user

log = logging.getLogger(__name__)

#: a store with at least this many images is opened in the background. Read on the GUI
#: thread, a project of N x 3 instances froze the window about 0.25 ms per image (100: 45-58
#: ms, 1,000: 190-290 ms, 3,000: 0.7-1.0 s); in the background the worst stall was 18-55 ms
#: at every size from 100 up. Below it, the few-dozen-millisecond synchronous open shows the
#: project at once (no progress bar flashing by).
BACKGROUND_OPEN_IMAGES = 100
#: a JSON project of a previous version at least this big (bytes; about 50 images of three
#: 17-keypoint instances) is read and migrated to a store in the background too
BACKGROUND_OPEN_JSON_BYTES = 100_000
#: the frees of a project closed just before (four threads, 5-10 s at 100,000 x 3) wait from
#: the start of a store's open until this long after its preview is on show (the gallery's
#: first paint included): beside them the preview's handler stalled the window 31-39 ms, and
#: 10-14 ms while they waited (BENCHMARKS.md, section 7q)
PREVIEW_SHOWN_FREES_WAIT_MS = 500


Prepare = Callable[[Any], Any]
#: made after the full load: (the opened project, what the preview made or None)
PrepareOpened = Callable[[Any, Any], Any]


def _frozen(make: Callable[..., Any], arg: Any, images: int, *more: Any) -> Any:
    """``make(arg)`` in :func:`~annotator.gui.gc_pause.made_and_frozen` (as after loading a
    big project, :func:`annotator.io.project_file.load_project_recovering`): what is made
    for a big project (gallery rows, 10^5 keys) lives as long as it, and no later
    collection walks it holding the GIL."""
    with made_and_frozen(images):
        return make(arg, *more)


class _Emitter(QObject):
    progress = Signal(str, int)  # path, per mille
    preview = Signal(object, str)  # (ProjectPreview, prepared), path
    done = Signal(object, str, str)  # OpenedProject (None on error or cancel), error, path


class _OpenTask(QRunnable):
    def __init__(self, emitter: _Emitter, path: str, cancel: threading.Event,
                 prepare: PrepareOpened | None, preview: Prepare | None,
                 held: FreesHeld | None) -> None:
        super().__init__()
        self._emitter, self._path, self._cancel = emitter, path, cancel
        self._prepare, self._preview = prepare, preview
        # what holds the frees back (ProjectOpener.start): released here when no preview is
        # sent, else by the opener once it is on show
        self._held = held
        self._previewed: Any = None  # what preview() made, for prepare() after the load
        self._last = -1

    def _progress(self, fraction: float) -> None:
        from annotator.io.project_file import LoadCancelled

        if self._cancel.is_set():
            raise LoadCancelled
        permille = int(fraction * 1000)
        if permille != self._last:
            self._last = permille
            self._emitter.progress.emit(self._path, permille)

    def _send_preview(self) -> None:
        """The store's gallery rows first (under a second at 100,000 images): the window
        shows them while the rest loads. A problem here is left to the full load, which
        reports it (or opens the project without a preview)."""
        from annotator.io.project_file import read_preview

        assert self._preview is not None
        try:
            preview = read_preview(self._path)
            prepared = _frozen(self._preview, preview, len(preview.project))
        except Exception:  # noqa: BLE001 (never in the way of the open itself)
            log.info("no preview of %s", self._path, exc_info=True)
            self._release_frees()
            return
        if self._cancel.is_set():
            self._release_frees()
        else:
            self._previewed = prepared
            self._emitter.preview.emit((preview, prepared), self._path)

    def _release_frees(self) -> None:
        if self._held is not None:
            self._held.release()

    def run(self) -> None:
        from annotator.io.project_file import LoadCancelled, ProjectFileError, open_project_file

        try:
            if self._preview is not None:
                self._send_preview()
            opened = open_project_file(self._path, progress=self._progress)
        except LoadCancelled:
            self._emitter.done.emit(None, "", self._path)
        except (ProjectFileError, OSError) as exc:
            self._emitter.done.emit(None, str(exc), self._path)
        except Exception as exc:  # noqa: BLE001 (reported on the GUI thread, never lost)
            log.error("opening %s failed", self._path, exc_info=True)
            self._emitter.done.emit(None, f"{type(exc).__name__}: {exc}", self._path)
        else:
            counts = None
            if self._prepare is not None:
                try:
                    counts = _frozen(self._prepare, opened, len(opened.project),
                                     self._previewed)
                except Exception:  # noqa: BLE001 (the GUI thread counts again)
                    log.warning("preparing %s in the background failed", self._path,
                                exc_info=True)
            self._emitter.done.emit((opened, counts), "", self._path)


class ProjectOpener(QObject, PoolOwner):
    """Opens one project at a time on a pool thread. :attr:`progress` carries the fraction
    read (per mille); :attr:`previewed` what the gallery can show before the full load
    (:class:`ProjectPreview` and what ``preview(preview)`` made of it on the pool thread);
    :attr:`finished` the :class:`OpenedProject`, or None with the error ("" when
    cancelled)."""

    progress = Signal(str, int)
    previewed = Signal(object, object, str)  # ProjectPreview, prepared, path
    finished = Signal(object, str, str)  # OpenedProject or None, error, path

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._emitter = _Emitter(self)
        self._emitter.progress.connect(self._on_progress)
        self._emitter.preview.connect(self._on_preview)
        self._emitter.done.connect(self._on_done)
        self._cancel: threading.Event | None = None
        self.path: str | None = None
        self.counts: Any = None
        self._held: FreesHeld | None = None  # the frees waiting for this open's preview
        register_pool_user(self)

    @property
    def busy(self) -> bool:
        return self.path is not None

    @property
    def cancelled(self) -> bool:
        """Whether the running open was cancelled (it is still busy until it ends)."""
        return self._cancel is not None and self._cancel.is_set()

    def start(self, path: str, prepare: PrepareOpened | None = None,
              preview: Prepare | None = None) -> bool:
        """Open ``path`` in the background; False while another open is running.
        ``prepare(opened, previewed)`` runs on the pool thread too, after loading (what the
        window would otherwise compute over every image on its own thread; ``previewed``:
        what ``preview`` made, None without one); its result is :attr:`counts` while
        ``finished`` is emitted. With ``preview`` (a store), the
        store's gallery rows are read first and :attr:`previewed` is emitted with
        ``preview(project_preview)`` (run on the pool thread). The frees of closed projects
        wait until the preview is on show (:data:`PREVIEW_SHOWN_FREES_WAIT_MS`), or the
        open ends without one."""
        if self.busy:
            return False
        self.path = path
        self._cancel = threading.Event()
        self._held = hold_frees() if preview is not None else None
        self._pool.start(_OpenTask(self._emitter, path, self._cancel, prepare, preview,
                                   self._held))
        return True

    def cancel(self) -> None:
        """Stop the running open (it ends with ``finished(None, "", path)``)."""
        if self._cancel is not None:
            self._cancel.set()

    def _on_progress(self, path: str, permille: int) -> None:
        if path == self.path and not self.cancelled:
            self.progress.emit(path, permille)

    def _on_preview(self, result: tuple[Any, Any], path: str) -> None:
        held, self._held = self._held, None
        try:
            if path == self.path and not self.cancelled:
                self.previewed.emit(result[0], result[1], path)
        finally:
            if held is not None:  # after the gallery's first paint; a lambda: PySide holds
                # a bound method weakly, and nothing else refers to the hold
                QTimer.singleShot(PREVIEW_SHOWN_FREES_WAIT_MS, lambda: held.release())

    def _on_done(self, result: object, error: str, path: str) -> None:
        cancelled = self.cancelled
        self.path, self._cancel = None, None
        held, self._held = self._held, None
        if held is not None:  # no preview was shown
            held.release()
        opened, self.counts = result if isinstance(result, tuple) else (None, None)
        try:
            self.finished.emit(None if cancelled else opened, error, path)
        finally:
            self.counts = None

