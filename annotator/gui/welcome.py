"""The start page: new project, open, import COCO, the demo, recent projects."""

from __future__ import annotations

import os

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from annotator.gui.recent import recent_projects

FIRST_RUN_NOTE = (
    "First run: the first Propagate downloads the feature models once, Stable Diffusion 1.5 "
    "and DINOv2 (about 2.5 GB in half precision, 4.5 GB in full precision), unless Edit > "
    "Settings points at local copies. Labelling, review and export work without them. "
    "Help > Keyboard shortcuts (F1) lists the keys."
)


class WelcomePage(QWidget):
    """Buttons for the ways to start; the main window connects them."""

    recent_chosen = Signal(str)

    def __init__(self, parent: QWidget | None = None, show_recent: bool = True) -> None:
        super().__init__(parent)
        self._show_recent = show_recent  # False: never read the user's settings
        title = QLabel("<h1>Keypoint-transfer annotator</h1>"
                       "<p>Label one image, propagate to the rest, review the worst first.</p>")
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.new_button = QPushButton("New project from an image folder...")
        self.open_button = QPushButton("Open project...")
        self.import_button = QPushButton(
            "Import a dataset (COCO, YOLO, DeepLabCut, SLEAP, Label Studio)...")
        self.demo_button = QPushButton("Open the demo project (cat faces)")
        self.first_run_note = QLabel(FIRST_RUN_NOTE)
        self.first_run_note.setWordWrap(True)
        self.first_run_note.setStyleSheet("color: #909090")
        self.recent = QListWidget()
        self.recent.setMaximumHeight(220)
        buttons = QVBoxLayout()
        for b in (self.new_button, self.open_button, self.import_button, self.demo_button):
            b.setMinimumHeight(36)
            buttons.addWidget(b)
        buttons.addWidget(self.first_run_note)
        buttons.addWidget(QLabel("Recent projects"))
        buttons.addWidget(self.recent)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addLayout(buttons, 2)
        row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addStretch(1)
        layout.addWidget(title)
        layout.addLayout(row)
        layout.addStretch(2)
        self.recent.itemActivated.connect(
            lambda item: self.recent_chosen.emit(item.data(Qt.ItemDataRole.UserRole))
        )
        self.refresh()

    def refresh(self) -> None:
        self.recent.clear()
        for path in recent_projects() if self._show_recent else []:
            item = QListWidgetItem(f"{os.path.basename(path)}   ({os.path.dirname(path)})")
            item.setData(Qt.ItemDataRole.UserRole, path)
            self.recent.addItem(item)
