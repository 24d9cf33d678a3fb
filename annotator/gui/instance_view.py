"""Which instances the canvas draws: with ~10 detected boxes per image it gets cluttered.

Image > Show other instances (O) hides every instance but the current one; the toolbar's
"Hide boxes below" score hides unreviewed detections scored below it (and their points).
The current instance, user boxes and reviewed boxes are always drawn; nothing is changed in
the project, and hidden instances cannot be clicked.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QDoubleSpinBox, QLabel, QMenu, QToolBar, QWidget

from annotator.domain.annotation import Instance


@dataclass(frozen=True)
class InstanceFilter:
    """``show_others``: draw the instances other than the current one; ``min_box_score``:
    of those, hide detections (a box with a score) scored below it."""

    show_others: bool = True
    min_box_score: float = 0.0

    def shows(self, index: int, inst: Instance, current: int) -> bool:
        if index == current:
            return True
        if not self.show_others:
            return False
        return inst.box_score is None or inst.box_score >= self.min_box_score


class InstanceViewControls:
    """The menu toggle and the toolbar score threshold; they set ``editor.instance_filter``."""

    def __init__(self, editor: QWidget, menu: QMenu, toolbar: QToolBar) -> None:
        self._editor = editor
        self.show_others = QAction("Show &other instances", editor)
        self.show_others.setCheckable(True)
        self.show_others.setChecked(True)
        self.show_others.setShortcut(QKeySequence("O"))
        self.show_others.setToolTip("Draw the instances other than the selected one (O)")
        menu.addAction(self.show_others)
        toolbar.addAction(self.show_others)
        self.min_score = QDoubleSpinBox()
        self.min_score.setRange(0.0, 1.0)
        self.min_score.setSingleStep(0.05)
        self.min_score.setDecimals(2)
        self.min_score.setToolTip("Hide detected boxes (and their points) scored below this; "
                                  "the selected instance and your own boxes always show")
        toolbar.addSeparator()
        toolbar.addWidget(QLabel(" Hide boxes below "))
        toolbar.addWidget(self.min_score)
        self.show_others.toggled.connect(self._changed)
        self.min_score.valueChanged.connect(self._changed)

    def _changed(self, *_args: object) -> None:
        self._editor.set_instance_filter(  # type: ignore[attr-defined]
            InstanceFilter(self.show_others.isChecked(), self.min_score.value()))
