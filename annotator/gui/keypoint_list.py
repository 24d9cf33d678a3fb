"""The list of the schema's keypoints with the state of each one on the current image."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import QListWidget, QListWidgetItem, QWidget

from annotator.domain import Keypoint, KeypointSchema, Origin, Visibility
from annotator.gui.colors import confidence_color


def _swatch(color: QColor, filled: bool) -> QIcon:
    pm = QPixmap(14, 14)
    pm.fill(Qt.GlobalColor.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.setPen(color)
    if filled:
        p.setBrush(color)
    p.drawEllipse(1, 1, 12, 12)
    p.end()
    return QIcon(pm)


def describe(kp: Keypoint) -> str:
    """``placed``, ``predicted 0.42``, ``occluded``, ``reviewed`` or ``-``."""
    if not kp.labelled:
        return "-"
    text = {Origin.MANUAL: "placed", Origin.PREDICTED: "predicted", Origin.REVIEWED: "reviewed"}[
        kp.origin
    ]
    if kp.origin == Origin.PREDICTED and kp.confidence is not None:
        text += f" {kp.confidence:.2f}"
    if kp.v == Visibility.OCCLUDED:
        text += ", occluded"
    return text


class KeypointList(QListWidget):
    """One row per keypoint; the current row is the keypoint a click places."""

    current_keypoint_changed = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setIconSize(QSize(14, 14))
        self.currentRowChanged.connect(self._on_row)
        self._updating = False
        self.threshold = 0.5

    def set_keypoints(
        self, schema: KeypointSchema, keypoints: tuple[Keypoint, ...], current: int
    ) -> None:
        self._updating = True
        try:
            if self.count() != len(schema):
                self.clear()
                for _ in schema.keypoints:
                    self.addItem(QListWidgetItem())
            for i, name in enumerate(schema.keypoints):
                kp = keypoints[i] if i < len(keypoints) else Keypoint()
                item = self.item(i)
                item.setText(f"{i + 1}. {name}   {describe(kp)}")
                color = (
                    confidence_color(kp.confidence, self.threshold)
                    if kp.origin == Origin.PREDICTED and kp.labelled
                    else QColor(schema.colors[i])
                )
                item.setIcon(_swatch(color, kp.labelled))
                font = item.font()
                font.setItalic(not kp.labelled)
                item.setFont(font)
            if 0 <= current < self.count():
                self.setCurrentRow(current)
        finally:
            self._updating = False

    def _on_row(self, row: int) -> None:
        if not self._updating and row >= 0:
            self.current_keypoint_changed.emit(row)
