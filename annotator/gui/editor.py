"""The editing page: gallery, image canvas and keypoint list over one project.

All edits go through :class:`Project` methods (undoable); the page only translates widget
events into those calls and repaints when the project notifies a change.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from annotator.domain import ImageStatus, Keypoint, Project, Visibility
from annotator.gui.canvas import ImageCanvas, PointStyle
from annotator.gui.gallery import GalleryPanel
from annotator.gui.keypoint_list import KeypointList
from annotator.gui.qimage import heatmap_to_qimage, rgb_to_qimage
from annotator.gui.thumbnails import ThumbnailLoader
from annotator.io.images import ImageLoadError, load_image

log = logging.getLogger(__name__)


class EditorPage(QWidget):
    """Gallery | canvas | keypoint list, and the editing logic between them."""

    heatmap_wanted = Signal(str, float, float, str)  # reference, x, y, target
    heatmap_cleared = Signal()
    message = Signal(str)

    def __init__(self, loader: ThumbnailLoader, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project: Project | None = None
        self.current_path: str | None = None
        self.current_keypoint = 0
        self._images: OrderedDict[str, QImage] = OrderedDict()
        self.gallery = GalleryPanel(loader)
        self.canvas = ImageCanvas()
        self.keypoints = KeypointList()
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.accept_button = QPushButton("Accept image (A)")
        self.propagate_button = QPushButton("Propagate (Ctrl+R)")
        self.heatmap_box = QCheckBox("Similarity heatmap (H)")
        side = QVBoxLayout()
        side.addWidget(self.title)
        side.addWidget(QLabel("Keypoints: click the image to place the selected one"))
        side.addWidget(self.keypoints, 1)
        side.addWidget(self.heatmap_box)
        side.addWidget(self.accept_button)
        side.addWidget(self.propagate_button)
        side_widget = QWidget()
        side_widget.setLayout(side)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.gallery)
        self.splitter.addWidget(self.canvas)
        self.splitter.addWidget(side_widget)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setStretchFactor(2, 0)
        self.splitter.setSizes([330, 800, 260])
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.splitter)

        self.gallery.image_selected.connect(self.show_image)
        self.canvas.place_requested.connect(self._on_place)
        self.canvas.drag_moved.connect(self._on_drag)
        self.canvas.drag_finished.connect(self._on_drag_end)
        self.canvas.keypoint_clicked.connect(self.set_current_keypoint)
        self.canvas.visibility_requested.connect(self.set_visibility_of)
        self.keypoints.current_keypoint_changed.connect(self.set_current_keypoint)
        self.accept_button.clicked.connect(self.accept_image)
        self.heatmap_box.toggled.connect(self._on_heatmap_toggled)

    # ------------------------------------------------------------ project
    def set_project(self, project: Project | None) -> None:
        self.project = project
        self.current_path = None
        self.current_keypoint = 0
        self._images.clear()
        self.gallery.model.set_project(project)
        if project is not None:
            self.apply_settings()
            refs = project.reference_paths()
            first = refs[0] if refs else (project.images[0].path if len(project) else None)
            if first is not None:
                self.show_image(first)
        else:
            self.canvas.set_image(None, "No project")

    def apply_settings(self) -> None:
        if self.project is not None:
            t = self.project.settings.review_threshold
            self.canvas.threshold = self.keypoints.threshold = self.gallery.delegate.threshold = t

    def project_changed(self, paths: frozenset[str]) -> None:
        """Repaint after an edit of ``paths`` (everything when empty)."""
        self.gallery.model.images_changed(paths)
        if not paths:
            self.apply_settings()
            if self.project is not None:
                self.current_keypoint = min(self.current_keypoint, len(self.project.schema) - 1)
        if self.current_path is not None and (not paths or self.current_path in paths):
            self._refresh_points()

    # ------------------------------------------------------------- images
    def _load(self, path: str) -> QImage:
        img = self._images.get(path)
        if img is None:
            assert self.project is not None
            img = rgb_to_qimage(load_image(Path(self.project.image_root) / path))
            self._images[path] = img
            while len(self._images) > 6:
                self._images.popitem(last=False)
            rec = self.project.image(path)
            if rec.width is None:
                self.project.set_image_size(path, img.width(), img.height())
        self._images.move_to_end(path)
        return img

    def show_image(self, path: str) -> None:
        """Make ``path`` the current image."""
        if self.project is None:
            return
        changed = path != self.current_path
        self.current_path = path
        try:
            self.canvas.set_image(self._load(path))
        except ImageLoadError as exc:
            self.canvas.set_image(None, f"Unreadable image\n{exc}")
            self.gallery.model.mark_unreadable(path, str(exc))
            self.message.emit(f"Unreadable: {exc}")
        ann = self.project.annotation(path)
        if changed and not ann.has_labels:
            self.current_keypoint = 0
        self.gallery.select(path, emit=False)
        self._refresh_points()
        self._request_heatmap()

    def step_image(self, step: int) -> None:
        nxt = self.gallery.neighbour(self.current_path, step)
        if nxt is not None and nxt != self.current_path:
            self.show_image(nxt)

    def _keypoints(self) -> tuple[Keypoint, ...]:
        assert self.project is not None
        k = len(self.project.schema)
        if self.current_path is None:
            return tuple(Keypoint() for _ in range(k))
        ann = self.project.annotation(self.current_path)
        return ann.instances[0].keypoints if ann.instances else tuple(Keypoint() for _ in range(k))

    def _refresh_points(self) -> None:
        if self.project is None or self.current_path is None:
            return
        schema = self.project.schema
        kps = self._keypoints()
        styles = [PointStyle(n, c, kp) for n, c, kp in zip(schema.keypoints, schema.colors, kps)]
        self.canvas.set_points(styles, schema.skeleton, self.current_keypoint)
        self.keypoints.set_keypoints(schema, kps, self.current_keypoint)
        ann = self.project.annotation(self.current_path)
        conf = ann.worst_confidence()
        extra = f", worst confidence {conf:.2f}" if conf is not None else ""
        self.title.setText(f"<b>{self.current_path}</b><br>{ann.status.value}{extra}")

    # ----------------------------------------------------------- keypoints
    def set_current_keypoint(self, index: int) -> None:
        if self.project is None or not 0 <= index < len(self.project.schema):
            return
        if index != self.current_keypoint:
            self.current_keypoint = index
            self._refresh_points()
            self._request_heatmap()

    def step_keypoint(self, step: int) -> None:
        if self.project is not None and len(self.project.schema):
            self.set_current_keypoint((self.current_keypoint + step) % len(self.project.schema))

    def _on_place(self, index: int, x: float, y: float) -> None:
        if self.project is None or self.current_path is None:
            return
        self.project.move_keypoint(self.current_path, index, x, y)
        kps = self._keypoints()
        k = len(kps)
        for step in range(1, k + 1):  # advance to the next unlabelled keypoint
            j = (index + step) % k
            if not kps[j].labelled:
                self.set_current_keypoint(j)
                break

    def _on_drag(self, index: int, x: float, y: float, drag_id: int) -> None:
        if self.project is not None and self.current_path is not None:
            self.project.move_keypoint(self.current_path, index, x, y, drag_id=drag_id)

    def _on_drag_end(self, _index: int) -> None:
        if self.project is not None:
            self.project.history.end_merge()
            self._request_heatmap()

    def set_visibility_of(self, index: int, v: int) -> None:
        """Set visibility ``v`` (0 deletes) of keypoint ``index`` on the current image."""
        if self.project is None or self.current_path is None:
            return
        kp = self._keypoints()[index]
        if not kp.labelled and v != Visibility.UNLABELLED:
            self.message.emit("Place the keypoint first (click the image)")
            return
        if not kp.labelled:
            return
        self.project.set_visibility(self.current_path, index, Visibility(v))

    def set_visibility(self, v: int) -> None:
        self.set_visibility_of(self.current_keypoint, v)

    def accept_image(self) -> None:
        """Mark the current image reviewed (it becomes a reference) and go to the next one."""
        if self.project is None or self.current_path is None:
            return
        ann = self.project.annotation(self.current_path)
        if not ann.has_labels:
            self.message.emit("Nothing to accept: the image has no keypoints")
            return
        if ann.status != ImageStatus.REFERENCE:
            self.project.set_status(self.current_path, ImageStatus.REVIEWED)
        self.message.emit(f"Accepted {self.current_path}")
        self.step_image(1)

    # ------------------------------------------------------------- heatmap
    def _on_heatmap_toggled(self, on: bool) -> None:
        if on:
            self._request_heatmap()
        else:
            self.canvas.set_heatmap(None)
            self.heatmap_cleared.emit()

    def _request_heatmap(self) -> None:
        self.canvas.set_heatmap(None)
        if not self.heatmap_box.isChecked() or self.project is None or not self.current_path:
            return
        k = self.current_keypoint
        for ref in self.project.reference_paths():
            ann = self.project.annotation(ref)
            kp = ann.instances[0].keypoints[k] if ann.instances else None
            if kp is not None and kp.labelled:
                self.heatmap_wanted.emit(ref, kp.x, kp.y, self.current_path)
                return
        self.message.emit("Heatmap: no reference image has this keypoint")

    def set_heatmap(self, heat: object) -> None:
        if self.heatmap_box.isChecked():
            self.canvas.set_heatmap(heatmap_to_qimage(heat))  # type: ignore[arg-type]
