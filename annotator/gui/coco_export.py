"""COCO export: the choice of what goes out (the write runs in :mod:`annotator.gui.export_job`)."""

from __future__ import annotations

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
from annotator.io.coco import ExportChoice, ExportScope


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
