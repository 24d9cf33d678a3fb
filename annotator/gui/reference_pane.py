"""The reference pane: a reference image beside the target, with the selected keypoint
highlighted, so the user sees what the point means while correcting it.

The project does not record which reference produced a prediction, so the pane shows the
first reference (in project order) that has the selected keypoint, and a list to pick another.
The image being edited is never shown again here: when it is a reference, the pane offers
the other references. The view is as tall as the image at the pane's width (no tall black
column around a small image); the room below stays empty.
"""

from __future__ import annotations

import math
from bisect import bisect_left

from PySide6.QtCore import QEvent, QObject, QSize, Qt
from PySide6.QtGui import QImage, QResizeEvent
from PySide6.QtWidgets import QComboBox, QLabel, QVBoxLayout, QWidget

from annotator.domain import ImageStatus, Keypoint, Project
from annotator.gui.canvas import ImageCanvas, PointStyle
from annotator.gui.image_loader import ImageLoader
from annotator.io.video import ImageSource


class ReferencePane(QWidget):
    """Shows one reference image and its keypoints; never edits anything."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project: Project | None = None
        self.keypoint = 0
        self.reference: str | None = None  # the path shown
        self.current: str | None = None  # the image being edited: not shown here again
        self._chosen: str | None = None  # picked by the user in the list
        self.images = ImageLoader(cache_size=3, parent=self)
        self.images.loaded.connect(self._on_loaded)
        self.choice = QComboBox()
        self.choice.setToolTip("Reference image shown")
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        self.canvas = ImageCanvas()
        self.canvas.setMinimumSize(160, 120)
        # a view, not an editor: clicks and drags never reach it
        self.canvas.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents, True)
        self.canvas.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.canvas.installEventFilter(self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.choice)
        layout.addWidget(self.canvas)
        layout.addWidget(self.caption)
        layout.addStretch(1)  # the room an image does not fill stays below, not around it
        self.choice.activated.connect(lambda _i: self._pick(self.choice.currentText()))

    def set_project(self, project: Project | None, refs: list[str] | None = None) -> None:
        """Follow ``project``; ``refs``: its :meth:`Project.reference_paths`, when made
        already (off the GUI thread)."""
        self.project = project
        self._refs: list[str] | None = list(refs) if refs is not None else None
        self._refs_revision = project.revision if project is not None else 0
        self.reference = self._chosen = self.current = None
        self.images.set_root(project.image_root if project is not None else "",
                             ImageSource.for_project(project))
        self.update_view()

    def sizeHint(self) -> QSize:
        return QSize(240, 320)

    def set_current(self, path: str | None) -> None:
        """The image being edited (the pane then shows another reference)."""
        if path != self.current:
            self.current = path
            self.update_view()

    def set_keypoint(self, index: int) -> None:
        self.keypoint = index
        self.update_view()

    def _pick(self, path: str) -> None:
        self._chosen = path or None
        self.update_view()

    def project_changed(self, paths: frozenset[str]) -> None:
        """Keep the reference list current in O(changed images) (a scan of 100,000 images
        costs a quarter second, and edits come in streams); a whole-project change (empty
        ``paths``) scans again at the next view update."""
        p = self.project
        if p is None or self._refs is None:
            return
        if not paths:
            self._refs = None
            return
        refs = self._refs
        if self._refs_revision != p.revision - 1:  # a change went unseen: scan again
            self._refs = None
            return
        self._refs_revision = p.revision
        for path in paths:
            ann = p.annotation(path)
            now = ann.status in (ImageStatus.REFERENCE, ImageStatus.REVIEWED) \
                and ann.has_labels
            i = bisect_left(_Indexed(p, refs), p.index_of(path))  # type: ignore[call-overload]
            was = i < len(refs) and refs[i] == path
            if now and not was:
                refs.insert(i, path)
            elif was and not now:
                del refs[i]

    def _references(self) -> list[str]:
        """The project's references in project order (scanned once per project, then kept
        current by :meth:`project_changed`)."""
        if self.project is None:
            return []
        if self._refs is None or self._refs_revision != self.project.revision:
            self._refs = self.project.reference_paths()
            self._refs_revision = self.project.revision
        return self._refs

    def _points(self, path: str) -> tuple[Keypoint, ...]:
        assert self.project is not None
        ann = self.project.annotation(path)
        return ann.instances[0].keypoints if ann.instances else ()

    def update_view(self) -> None:
        """Follow the project's references and the selected keypoint."""
        refs = [p for p in self._references() if p != self.current]
        self.choice.blockSignals(True)
        self.choice.clear()
        self.choice.addItems(refs)
        self.choice.blockSignals(False)
        if self.project is None or not refs:
            self.reference = None
            alone = self.project is not None and self.current in self._references()
            self.canvas.set_image(None, "This image is the only reference" if alone
                                  else "No reference image yet")
            self.caption.setText("")
            self._fit_height()
            return
        k = self.keypoint
        with_point = [p for p in refs
                      if k < len(self._points(p)) and self._points(p)[k].labelled]
        if self._chosen in refs:
            path = self._chosen
        else:
            path = with_point[0] if with_point else refs[0]
        self.choice.setCurrentText(path)
        if path != self.reference:
            self.reference = path
            img = self.images.request(path)
            if img is None:
                self.canvas.set_image(None, f"Loading {path}...")
            else:
                self.canvas.set_image(img)
            self._fit_height()
        self._show_points()

    def _on_loaded(self, path: str, image: QImage | None, error: str) -> None:
        if path != self.reference:
            return
        self.canvas.set_image(image, f"Unreadable reference\n{error}")
        self._fit_height()
        self._show_points()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit_height()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.canvas and event.type() == QEvent.Type.Resize:
            self._fit_height()  # a new width: a new height (a height alone changes nothing)
        return super().eventFilter(watched, event)

    def _fit_height(self) -> None:
        """Make the view as tall as the image is at the view's width (at least its minimum
        height; the whole pane's height at most)."""
        size = self.canvas.image_size
        least = self.canvas.minimumHeight()
        if size is None or not size[0]:
            if self.canvas.height() != least:
                self.canvas.setFixedHeight(least)
            return
        most = max(least, self.height() - self.choice.height() - self.caption.height() - 16)
        tall = math.ceil(self.canvas.width() * size[1] / size[0]) + 2
        height = max(least, min(most, tall))
        if height != self.canvas.height():
            self.canvas.setFixedHeight(height)

    def _show_points(self) -> None:
        if self.project is None or self.reference is None:
            return
        schema = self.project.schema
        kps = self._points(self.reference)
        if len(kps) != len(schema):
            kps = tuple(Keypoint() for _ in schema.keypoints)
        styles = [PointStyle(n, c, kp) for n, c, kp in zip(schema.keypoints, schema.colors, kps)]
        k = min(self.keypoint, len(schema) - 1)
        self.canvas.set_points(styles, schema.skeleton, k)
        name = schema.keypoints[k]
        where = "" if kps[k].labelled else " (not labelled on this reference)"
        self.caption.setText(f"<b>{name}</b> on {self.reference}{where}")


class _Indexed:
    """``refs`` seen as their project indexes, for a bisection without building the list."""

    def __init__(self, project: Project, refs: list[str]) -> None:
        self._p, self._refs = project, refs

    def __len__(self) -> int:
        return len(self._refs)

    def __getitem__(self, i: int) -> int:
        return self._p.index_of(self._refs[i])
