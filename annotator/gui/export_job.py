"""Exports on a pool thread, one at a time, with progress and a cooperative cancel.

Both File > Export COCO (Ctrl+E) and File > Export as... run here. A saved project of at
least :data:`CHILD_MIN_IMAGES` images is exported by a child process that reads the project
store (:mod:`annotator.jobs.store_export`: no GIL shared with the GUI thread; its snapshot
pinned between two autosave transactions); a smaller or unsaved one from a snapshot taken on
the GUI thread in milliseconds, built and written on a pool thread. Either way progress
comes back through a queued signal, and cancel is a :class:`~annotator.jobs.progress.TaskState`:
the progress callback raises :class:`~annotator.jobs.progress.Cancelled`, and the writers
stage their output beside the target, so a cancelled export leaves nothing behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from annotator.domain import Project
from annotator.gui.gc_pause import gc_paused
from annotator.gui.pool_owner import PoolOwner
from annotator.gui.thumbnails import register_pool_user
from annotator.io.autosave import Autosaver
from annotator.io.coco import CocoSource, ExportChoice
from annotator.io.formats import ExportOptions, ProgressFn, export_project
from annotator.io.video_formats import write_coco_with_frames
from annotator.jobs.export_child import write_sleap_in_child
from annotator.jobs.progress import Cancelled, TaskState
from annotator.jobs.store_export import StoreExport, StoreExportChild

log = logging.getLogger(__name__)

#: the ``error`` of :attr:`Exporter.finished` for an export the user cancelled
CANCELLED = "cancelled"
#: a saved project at least this big is exported by a child process reading its store: in
#: this process, Export COCO of 600 images x 3 instances already stalled the window 23-92 ms
#: (BENCHMARKS 7g); a child adds about half a second, which tiny projects are spared
CHILD_MIN_IMAGES = 200


@dataclass(frozen=True)
class Written:
    """What an export wrote: counts and the line the status bar shows."""

    images: int
    annotations: int
    summary: str


Work = Callable[[ProgressFn], Written]


class _Emitter(QObject):
    """Lives on the GUI thread; the pool thread emits through it (queued to the GUI)."""

    progress = Signal(int, int)  # done, total
    done = Signal(str, str, object)  # path, error ("" when written), Written | None


class _ExportTask(QRunnable):
    """One export on the pool thread. Cancelled before the thread takes it up, ``work``
    does not run, unless ``own_cancel``: work that must run to stop what was started for
    it (an export's child process), and reports the cancel itself."""

    def __init__(self, emitter: _Emitter, path: str, work: Work, state: TaskState,
                 own_cancel: bool = False) -> None:
        super().__init__()
        self._emitter, self._path, self._work, self._state = emitter, path, work, state
        self._own_cancel = own_cancel

    def _progress(self, done: int, total: int) -> None:
        self._state.check()  # raises Cancelled: the writer removes what it staged
        self._emitter.progress.emit(done, total)

    def run(self) -> None:
        try:
            if not self._own_cancel:
                self._state.check()
            with gc_paused():  # see gc_pause: no full collection over what the export makes
                written = self._work(self._progress)
            self._emitter.done.emit(self._path, "", written)
        except Cancelled:
            log.info("export to %s cancelled", self._path)
            self._emitter.done.emit(self._path, CANCELLED, None)
        except Exception as exc:  # noqa: BLE001 (reported on the GUI thread, never lost)
            log.error("export to %s failed", self._path, exc_info=True)
            known = isinstance(exc, (OSError, ValueError))
            error = str(exc) if known else f"{type(exc).__name__}: {exc}"
            self._emitter.done.emit(self._path, error, None)


class Exporter(QObject, PoolOwner):
    """Runs one export at a time on a pool thread; :attr:`finished` reports the outcome
    (``error`` is "" when written, :data:`CANCELLED` after :meth:`cancel`); :attr:`last`
    holds what the export that just finished wrote."""

    progress = Signal(int, int)  # done, total
    finished = Signal(str, str, int, int)  # path, error ("" on success), images, annotations

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._emitter = _Emitter(self)
        self._emitter.progress.connect(self.progress)
        self._emitter.done.connect(self._on_done)
        self._running: str | None = None
        self._state: TaskState | None = None
        #: "coco" (Export COCO) or the format of the running / last export
        self.kind = ""
        self.last: Written | None = None
        #: see :data:`CHILD_MIN_IMAGES` (tests lower it to run small exports in a child)
        self.child_min_images = CHILD_MIN_IMAGES
        register_pool_user(self)

    @property
    def busy(self) -> bool:
        return self._running is not None

    def _child(self, project: Project, autosaver: Autosaver | None, job: StoreExport,
               written: Callable[[int, int, str], Written]) -> Work | None:
        """The work of an export by a child process reading ``autosaver``'s store, its
        snapshot queued now (after every edit so far); None when the project is small,
        unsaved, or its store lacks edits. The child runs from now on: the work must run
        even when the export is cancelled first, to stop it (else it would export on,
        unread, and could write the file after the cancel was reported)."""
        if (autosaver is None or autosaver.failing
                or len(project.images) < self.child_min_images):
            return None
        try:
            child = StoreExportChild(job)
        except OSError as exc:
            log.warning("no export process (%s): exporting in this one", exc)
            return None
        pinned = autosaver.after_writes(child.pin)

        def work(progress: ProgressFn) -> Written:
            result = child.finish(pinned, progress)
            return written(result.images, result.annotations, result.summary)

        return work

    def start(self, project: Project, path: str, choice: ExportChoice,
              autosaver: Autosaver | None = None) -> bool:
        """Export COCO: snapshot ``project`` now and write it to ``path`` in the background
        (video frames the file lists are decoded beside it); False when one is running.
        ``autosaver``: the project's, when it is saved (a big one is then exported by a
        child process reading the store)."""
        if self._running is not None:
            return False

        def coco_written(images: int, annotations: int, _summary: str) -> Written:
            return Written(images, annotations, f"Exported {path}: {images} images, "
                                                f"{annotations} annotations ({choice.describe()})")

        in_child = self._child(project, autosaver, StoreExport(
            str(autosaver.path) if autosaver else "", "coco", path, choice=choice),
            coco_written)
        if in_child is not None:  # its child stops on a cancel, whenever it comes
            return self._start("coco", path, in_child, own_cancel=True)
        source = CocoSource.of(project)  # immutable: the user may edit on meanwhile

        def work(progress: ProgressFn) -> Written:
            images, annotations = write_coco_with_frames(source, path, choice, progress)
            return Written(images, annotations, f"Exported {path}: {images} images, "
                                                f"{annotations} annotations ({choice.describe()})")

        return self._start("coco", path, work)

    def start_format(self, project: Project, fmt: str, path: str,
                     options: ExportOptions, autosaver: Autosaver | None = None) -> bool:
        """Export as: write ``project`` in ``fmt`` (see :mod:`annotator.io.formats`) from a
        snapshot taken now; False when an export is running. ``autosaver``: as in
        :meth:`start`."""
        if self._running is not None:
            return False
        in_child = self._child(project, autosaver, StoreExport(
            str(autosaver.path) if autosaver else "", fmt, path, options=options),
            lambda images, instances, summary: Written(images, instances, summary))
        if in_child is not None:
            return self._start(fmt, path, in_child, own_cancel=True)
        p = project  # immutable values: copied in milliseconds, rebuilt on the pool thread
        parts = (p.image_root, p.images, p.schema, p.annotations(), p.settings)

        def work(progress: ProgressFn) -> Written:
            snapshot = Project.of_checked_parts(*parts)
            if fmt == "sleap" and not any(r.video is not None for r in snapshot.images):
                # sleap-io's save_slp holds the GIL for long: written by a child process
                report = write_sleap_in_child(snapshot, path, options, progress)
            else:
                report = export_project(snapshot, fmt, path, options, progress)
            return Written(report.images, report.instances, report.summary())

        return self._start(fmt, path, work)

    def _start(self, kind: str, path: str, work: Work, own_cancel: bool = False) -> bool:
        if self._running is not None:
            return False
        self._running, self.kind = path, kind
        self._state = TaskState()
        self._pool.start(_ExportTask(self._emitter, path, work, self._state, own_cancel))
        return True

    def cancel(self) -> None:
        """Ask the running export to stop at its next progress step (nothing is written)."""
        if self._state is not None:
            self._state.cancel()

    def _on_done(self, path: str, error: str, written: Written | None) -> None:
        self._running, self._state, self.last = None, None, written
        self.finished.emit(path, error, written.images if written else 0,
                           written.annotations if written else 0)
