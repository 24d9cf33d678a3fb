"""File > Import...: any format ``annotator convert`` reads (COCO, YOLO pose, DeepLabCut,
SLEAP ``.slp``/``.pkg.slp``, Label Studio) read into a new project on a pool thread.

A thin adapter over :func:`annotator.io.formats.import_dataset` and
:func:`annotator.io.project_file.save_project`: the same checks and errors as the CLI, off
the GUI thread (a DLC project copies nothing but a ``.pkg.slp`` extracts its frames).
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from annotator.gui.pool_owner import PoolOwner
from annotator.gui.thumbnails import register_pool_user

log = logging.getLogger(__name__)

IMPORT_FILTER = ("Datasets (*.json *.slp *.csv *.yaml *.yml);;COCO or Label Studio (*.json);;"
                 "SLEAP (*.slp);;DeepLabCut (config.yaml *.csv);;YOLO pose (data.yaml);;All (*)")
# formats whose image paths are looked up in an image folder the user may choose
ASKS_IMAGE_FOLDER = ("coco", "label-studio", "sleap")


class _Emitter(QObject):
    done = Signal(object, str, str)  # project (None on error), error, project path


class _ImportTask(QRunnable):
    def __init__(self, emitter: _Emitter, source: str, image_root: str | None,
                 out: str) -> None:
        super().__init__()
        self._emitter, self._source, self._root, self._out = emitter, source, image_root, out

    def run(self) -> None:
        from annotator.io.formats import FormatError, import_dataset
        from annotator.io.project_file import ProjectFileError, save_project

        try:
            project = import_dataset(self._source, None, self._root)
            save_project(project, self._out)
        except (FormatError, ProjectFileError, OSError, ValueError) as exc:
            self._emitter.done.emit(None, str(exc), self._out)
        except Exception as exc:  # noqa: BLE001 (reported on the GUI thread, never lost)
            log.error("import of %s failed", self._source, exc_info=True)
            self._emitter.done.emit(None, f"{type(exc).__name__}: {exc}", self._out)
        else:
            self._emitter.done.emit(project, "", self._out)


class FormatImporter(QObject, PoolOwner):
    """Runs one import at a time on a pool thread; :attr:`finished` carries the new project
    (saved at the path given) or the error."""

    finished = Signal(object, str, str)  # project or None, error ("" on success), path

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._emitter = _Emitter(self)
        self._emitter.done.connect(self._on_done)
        self._running = False
        register_pool_user(self)

    @property
    def busy(self) -> bool:
        return self._running

    def start(self, source: str, image_root: str | None, out: str) -> bool:
        """Import ``source`` (image folder ``image_root``, None: the format's default) and
        save the project at ``out`` in the background; False while one is running."""
        if self._running:
            return False
        self._running = True
        self._pool.start(_ImportTask(self._emitter, source, image_root, out))
        return True

    def _on_done(self, project: object, error: str, path: str) -> None:
        self._running = False
        self.finished.emit(project, error, path)

