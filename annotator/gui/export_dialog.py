"""The one export dialog (File > Export COCO... and File > Export as...): the format, where
to write it and which labels go out, the same widgets for every format."""

from __future__ import annotations

import importlib.util
import os

from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from annotator.domain import ImageStatus, Project
from annotator.io.coco import ExportChoice, ExportScope
from annotator.io.formats import FORMATS, FORMATS_EXTRA, ExportOptions, default_output_name

LABELS = {
    "coco": "COCO keypoints (.json)",
    "yolo-pose": "Ultralytics YOLO pose (dataset folder)",
    "dlc": "DeepLabCut project (folder)",
    "sleap": "SLEAP labels (.slp, needs sleap-io)",
    "label-studio": "Label Studio tasks (.json)",
}
FOLDER_FORMATS = ("yolo-pose", "dlc")
FILTERS = {"coco": "JSON (*.json)", "sleap": "SLEAP (*.slp)", "label-studio": "JSON (*.json)"}
LOSSES = {
    "coco": "Keeps everything, including confidences and review state.",
    "yolo-pose": "Copies the images; keeps visibility 0/1/2, boxes and left/right partners "
                 "(flip_idx). Positions to 6 decimals of the image size.",
    "dlc": "Copies the images. DLC has no occluded flag: occluded points are written as "
           "labelled (or left out). Boxes and left/right partners are not kept.",
    "sleap": "Refers to the images by path. Keeps visibility, skeleton and partners; "
             "boxes are not kept.",
    "label-studio": "Keeps visibility (an 'occluded' choice) and boxes; Label Studio has "
                    "no skeleton.",
}


def count_text(n: int, noun: str) -> str:
    """``1 image``, ``2 images``, ``1,000 more images``: singular for one."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


class ExportDialog(QDialog):
    """Returns the chosen ``format()``, ``path()``, ``choice()`` (which labels go out, as
    an :class:`ExportChoice`) and ``options()`` once accepted."""

    def __init__(self, project: Project, stem: str, start_dir: str, fmt: str = "coco",
                 start: ExportChoice | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export")
        self.resize(620, 320)
        self._stem, self._dir = stem, start_dir
        self.format_box = QComboBox()
        for name in FORMATS:
            self.format_box.addItem(LABELS[name], name)
        if importlib.util.find_spec("sleap_io") is None:  # looked up, not imported
            i = FORMATS.index("sleap")
            self.format_box.setItemText(i, f"{LABELS['sleap']} -- not installed: {FORMATS_EXTRA}")
        self.path_edit = QLineEdit()
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        path_row = QWidget()
        row = QHBoxLayout(path_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.path_edit, 1)
        row.addWidget(browse)
        self.losses = QLabel()
        self.losses.setWordWrap(True)

        # which labels go out: the same choice, with the same counts, for every format
        start = start or ExportChoice(min_confidence=project.settings.review_threshold)
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
            "predicted point)")
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
        scope = QWidget()
        scope_rows = QVBoxLayout(scope)
        scope_rows.setContentsMargins(0, 0, 0, 0)
        confident_row = QHBoxLayout()
        confident_row.addWidget(self.confident)
        confident_row.addWidget(self.threshold)
        confident_row.addStretch(1)
        scope_rows.addWidget(self.reviewed)
        scope_rows.addWidget(self.predictions)
        scope_rows.addLayout(confident_row)
        note = QLabel("Images whose labels are left out are left out of the export, so no "
                      "reader takes them for images without objects.")
        note.setWordWrap(True)
        scope_rows.addWidget(note)

        self.val_fraction = QDoubleSpinBox()
        self.val_fraction.setRange(0.0, 0.9)
        self.val_fraction.setSingleStep(0.05)
        self.image_prefix = QLineEdit()
        self.image_prefix.setPlaceholderText("e.g. /data/local-files/?d=photos/")
        self.drop_occluded = QCheckBox("Leave occluded points out")

        form = QFormLayout(self)
        form.addRow("Format", self.format_box)
        form.addRow("Write to", path_row)
        form.addRow("", self.losses)
        form.addRow("Labels", scope)
        self._val_label = QLabel("Validation share")
        form.addRow(self._val_label, self.val_fraction)
        self._prefix_label = QLabel("Image URL prefix")
        form.addRow(self._prefix_label, self.image_prefix)
        self._occluded_label = QLabel("Occluded points (DLC)")
        form.addRow(self._occluded_label, self.drop_occluded)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)

        self.format_box.currentIndexChanged.connect(self._format_changed)
        self.confident.toggled.connect(self._update)
        self.path_edit.textChanged.connect(self._update)
        self.format_box.setCurrentIndex(FORMATS.index(fmt))
        self._format_changed()

    # ------------------------------------------------------------------ state
    def format(self) -> str:
        return str(self.format_box.currentData())

    def set_format(self, fmt: str) -> None:
        self.format_box.setCurrentIndex(FORMATS.index(fmt))

    def path(self) -> str:
        return self.path_edit.text().strip()

    def choice(self) -> ExportChoice:
        """Which labels go out (COCO's terms; :meth:`options` says the same for the rest)."""
        if self.predictions.isChecked():
            return ExportChoice(ExportScope.PREDICTIONS, self.threshold.value())
        if self.confident.isChecked():
            return ExportChoice(ExportScope.CONFIDENT, self.threshold.value())
        return ExportChoice(ExportScope.REVIEWED, self.threshold.value())

    def options(self) -> ExportOptions:
        fmt = self.format()
        return ExportOptions(
            include_predictions=not self.reviewed.isChecked(),
            min_confidence=self.threshold.value() if self.confident.isChecked() else None,
            val_fraction=self.val_fraction.value() if fmt == "yolo-pose" else 0.0,
            image_prefix=self.image_prefix.text() if fmt == "label-studio" else "",
            drop_occluded=self.drop_occluded.isChecked() and fmt == "dlc",
        )

    def _format_changed(self) -> None:
        fmt = self.format()
        self.path_edit.setText(os.path.join(self._dir, default_output_name(fmt, self._stem)))
        self.losses.setText(LOSSES[fmt])
        for widgets, shown in (
            ((self._val_label, self.val_fraction), fmt == "yolo-pose"),
            ((self._prefix_label, self.image_prefix), fmt == "label-studio"),
            ((self._occluded_label, self.drop_occluded), fmt == "dlc"),
        ):
            for w in widgets:
                w.setVisible(shown)
        self._update()

    def _update(self) -> None:
        self.threshold.setEnabled(self.confident.isChecked())
        self.ok_button.setEnabled(bool(self.path()))

    def _browse(self) -> None:
        fmt = self.format()
        if fmt in FOLDER_FORMATS:
            parent = QFileDialog.getExistingDirectory(self, "Folder to create the dataset in",
                                                      self._dir)
            if parent:
                self.path_edit.setText(os.path.join(parent,
                                                    default_output_name(fmt, self._stem)))
        else:
            path = QFileDialog.getSaveFileName(self, "Export as", self.path(), FILTERS[fmt])[0]
            if path:
                self.path_edit.setText(path)

    def _accept(self) -> None:
        if self.path():
            self.accept()
