"""COCO export: the choice of what goes out (dialog) and the write on a pool thread (exporter).

The snapshot the export reads (:class:`~annotator.io.coco.CocoSource`) is taken on the GUI
thread in milliseconds; building the document and the atomic write run on a pool thread, with
progress coming back through a queued signal, so a 10,000-image export never freezes the window.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from annotator.domain import ImageStatus, Project
from annotator.gui.pool_owner import PoolOwner
from annotator.gui.thumbnails import register_pool_user
from annotator.io.coco import CocoSource, ExportChoice, ExportScope
from annotator.io.video_formats import write_coco_with_frames

log = logging.getLogger(__name__)


def count_text(n: int, noun: str) -> str:
    """``1 image``, ``2 images``, ``1,000 more images``: singular for one."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


class CocoExportDialog(QDialog):
    """Pick an :class:`ExportChoice`, with the counts of what each choice writes."""

    def __init__(
        self, project: Project, start: ExportChoice | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export COCO keypoints")
        threshold = project.settings.review_threshold
        start = start or ExportChoice(min_confidence=threshold)
        checked = predicted = 0
        for rec in project.images:
            status = project.status(rec.path)
            if status in (ImageStatus.REVIEWED, ImageStatus.REFERENCE):
                checked += 1
            elif status == ImageStatus.PREDICTED:
                predicted += 1
        self.reviewed = QRadioButton(
            f"Reviewed and reference images only ({count_text(checked, 'image')})")
        self.predictions = QRadioButton(
            f"Also unreviewed predictions ({count_text(predicted, 'more image')}, every "
            "predicted point)"
        )
        self.confident = QRadioButton("Also unreviewed predicted points scored at least")
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setDecimals(2)
        self.threshold.setValue(start.min_confidence)
        group = QButtonGroup(self)
        for button in (self.reviewed, self.predictions, self.confident):
            group.addButton(button)
        {ExportScope.REVIEWED: self.reviewed, ExportScope.PREDICTIONS: self.predictions,
         ExportScope.CONFIDENT: self.confident}[start.scope].setChecked(True)
        note = QLabel("Images whose labels are left out are left out of the file, so no reader "
                      "takes them for images without objects. The file records the choice in "
                      "info.annotator_export.")
        note.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.confident)
        row.addWidget(self.threshold)
        row.addStretch(1)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("What should the COCO file contain?"))
        layout.addWidget(self.reviewed)
        layout.addWidget(self.predictions)
        layout.addLayout(row)
        layout.addWidget(note)
        layout.addWidget(buttons)

    def choice(self) -> ExportChoice:
        if self.predictions.isChecked():
            return ExportChoice(ExportScope.PREDICTIONS, self.threshold.value())
        if self.confident.isChecked():
            return ExportChoice(ExportScope.CONFIDENT, self.threshold.value())
        return ExportChoice(ExportScope.REVIEWED, self.threshold.value())


class _Emitter(QObject):
    """Lives on the GUI thread; the pool thread emits through it (queued to the GUI)."""

    progress = Signal(int, int)  # done, total
    done = Signal(str, str, int, int)  # path, error ("" when written), images, annotations


class _ExportTask(QRunnable):
    def __init__(self, emitter: _Emitter, source: CocoSource, path: str,
                 choice: ExportChoice) -> None:
        super().__init__()
        self._emitter, self._source, self._path, self._choice = emitter, source, path, choice

    def run(self) -> None:
        try:
            images, annotations = write_coco_with_frames(
                self._source, self._path, self._choice, progress=self._emitter.progress.emit)
            self._emitter.done.emit(self._path, "", images, annotations)
        except Exception as exc:  # noqa: BLE001 (reported on the GUI thread, never lost)
            log.error("export to %s failed", self._path, exc_info=True)
            known = isinstance(exc, (OSError, ValueError))
            error = str(exc) if known else f"{type(exc).__name__}: {exc}"
            self._emitter.done.emit(self._path, error, 0, 0)


class CocoExporter(QObject, PoolOwner):
    """Runs one export at a time on a pool thread; :attr:`finished` reports the outcome."""

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
        register_pool_user(self)

    @property
    def busy(self) -> bool:
        return self._running is not None

    def start(self, project: Project, path: str, choice: ExportChoice) -> bool:
        """Snapshot ``project`` now and write it to ``path`` in the background; False when
        an export is still running."""
        if self._running is not None:
            return False
        source = CocoSource.of(project)  # immutable: the user may edit on meanwhile
        self._running = path
        self._pool.start(_ExportTask(self._emitter, source, path, choice))
        return True

    def _on_done(self, path: str, error: str, images: int, annotations: int) -> None:
        self._running = None
        self.finished.emit(path, error, images, annotations)

