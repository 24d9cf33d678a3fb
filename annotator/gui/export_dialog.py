"""File > Export as...: choose a format, where to write it and which labels go out."""

from __future__ import annotations

import importlib.util
import os

from PySide6.QtWidgets import (
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
    QWidget,
)

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


class ExportDialog(QDialog):
    """Returns the chosen ``format()``, ``path()`` and ``options()`` once accepted."""

    def __init__(self, stem: str, start_dir: str, review_threshold: float,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export as")
        self.resize(620, 300)
        self._stem, self._dir = stem, start_dir
        self.format_box = QComboBox()
        for fmt in FORMATS:
            self.format_box.addItem(LABELS[fmt], fmt)
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
        self.include_predictions = QCheckBox(
            "Also export images with unreviewed predictions (default: reviewed and "
            "reference images only)"
        )
        self.min_confidence = QDoubleSpinBox()
        self.min_confidence.setRange(0.0, 1.0)
        self.min_confidence.setSingleStep(0.05)
        self.min_confidence.setValue(review_threshold)
        self.use_min_confidence = QCheckBox("Leave out predicted points below confidence")
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
        form.addRow("", self.include_predictions)
        form.addRow(self.use_min_confidence, self.min_confidence)
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
        self.include_predictions.toggled.connect(self._update)
        self.use_min_confidence.toggled.connect(self._update)
        self.path_edit.textChanged.connect(self._update)
        self._format_changed()

    # ------------------------------------------------------------------ state
    def format(self) -> str:
        return str(self.format_box.currentData())

    def set_format(self, fmt: str) -> None:
        self.format_box.setCurrentIndex(FORMATS.index(fmt))

    def path(self) -> str:
        return self.path_edit.text().strip()

    def options(self) -> ExportOptions:
        fmt = self.format()
        include = self.include_predictions.isChecked()
        return ExportOptions(
            include_predictions=include,
            min_confidence=(self.min_confidence.value()
                            if include and self.use_min_confidence.isChecked()
                            and fmt != "coco" else None),
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
        include = self.include_predictions.isChecked()
        self.use_min_confidence.setEnabled(include and self.format() != "coco")
        self.min_confidence.setEnabled(include and self.use_min_confidence.isChecked()
                                       and self.format() != "coco")
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
