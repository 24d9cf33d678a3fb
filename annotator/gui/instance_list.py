"""The instance list of the side panel: one row per object of the image; add, delete, select."""

from __future__ import annotations

from PySide6.QtCore import QSize, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from annotator.domain.annotation import ImageAnnotation, Origin


def instance_label(index: int, ann: ImageAnnotation, num_keypoints: int) -> str:
    """"#2  box 0.81  3/5 kp  worst 0.42": index, box (with its score while a detection),
    labelled keypoints and the worst predicted confidence."""
    inst = ann.instances[index]
    parts = [f"#{index + 1}"]
    if inst.bbox is not None:
        parts.append("box" if inst.box_score is None else f"box {inst.box_score:.2f}")
    parts.append(f"{inst.num_labelled}/{num_keypoints} kp")
    confs = [kp.confidence for kp in inst.keypoints
             if kp.origin == Origin.PREDICTED and kp.confidence is not None]
    if confs:
        parts.append(f"worst {min(confs):.2f}")
    return "  ".join(parts)


class InstancePanel(QWidget):
    """Lists the current image's instances; the selected one receives placed keypoints."""

    instance_selected = Signal(int)
    add_requested = Signal()
    delete_requested = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.list = QListWidget()
        self.list.setMaximumHeight(120)
        self.add_button = QPushButton("Add instance")
        self.delete_button = QPushButton("Delete instance")
        buttons = QHBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.delete_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.list)
        layout.addLayout(buttons)
        self._updating = False
        self.list.currentRowChanged.connect(self._on_row)
        self.add_button.clicked.connect(lambda _=False: self.add_requested.emit())
        self.delete_button.clicked.connect(
            lambda _=False: self.delete_requested.emit(self.list.currentRow()))

    #: a long instance row (ten detected boxes): the panel is never narrower than this
    WIDEST_LABEL = "#10  box 0.00  9/9 kp  worst 0.00"

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        lst = self.list
        text = lst.fontMetrics().horizontalAdvance(self.WIDEST_LABEL)
        chrome = 2 * lst.frameWidth() + lst.verticalScrollBar().sizeHint().width() + 8
        return QSize(max(hint.width(), text + chrome), hint.height())

    def set_instances(self, ann: ImageAnnotation, num_keypoints: int, current: int) -> None:
        self._updating = True
        try:
            labels = [instance_label(i, ann, num_keypoints) for i in range(len(ann.instances))]
            if [self.list.item(i).text() for i in range(self.list.count())] != labels:
                self.list.clear()
                for text in labels:
                    self.list.addItem(QListWidgetItem(text))
            self.list.setCurrentRow(current if 0 <= current < len(labels) else -1)
            self.delete_button.setEnabled(bool(labels))
        finally:
            self._updating = False

    def _on_row(self, row: int) -> None:
        if not self._updating and row >= 0:
            self.instance_selected.emit(row)
