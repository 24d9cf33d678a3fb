"""The editing page: gallery, image canvas and keypoint list over one project.

All edits go through :class:`Project` methods (undoable); the page only translates widget
events into those calls and repaints when the project notifies a change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QImage, QResizeEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from annotator.domain import ImageStatus, Keypoint, Origin, Project, Visibility
from annotator.gui.canvas import BoxStyle, ImageCanvas, PointStyle
from annotator.gui.gallery import GalleryPanel, PreparedOrder, Summary
from annotator.gui.image_loader import ImageLoader
from annotator.gui.instance_list import InstancePanel
from annotator.gui.instance_view import InstanceFilter
from annotator.gui.keypoint_list import KeypointList
from annotator.gui.qimage import heatmap_to_qimage
from annotator.gui.reference_pane import ReferencePane
from annotator.gui.thumbnails import ThumbnailLoader
from annotator.io.video import ImageSource

log = logging.getLogger(__name__)


class EditorPage(QWidget):
    """Gallery | canvas | keypoint list, and the editing logic between them."""

    heatmap_wanted = Signal(str, float, float, str)  # reference, x, y, target
    heatmap_cleared = Signal()
    message = Signal(str)
    image_shown = Signal(str)  # path whose image (or unreadable message) the canvas now shows

    def __init__(self, loader: ThumbnailLoader, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project: Project | None = None
        #: a project still loading is shown for browsing: edits are refused
        self.read_only = False
        #: called with a path before it is shown (a project still loading reads its
        #: annotation then)
        self.before_show: Callable[[str], None] | None = None
        self.current_path: str | None = None
        self.current_keypoint = 0
        # ((path, instance), labelled flags) of the points on show: what an undo unplaced
        self._shown_labelled: tuple[tuple[str | None, int], list[bool]] | None = None
        self.current_instance = 0  # the instance placed keypoints go to
        self.instance_filter = InstanceFilter()  # which instances the canvas draws
        self.shown_path: str | None = None  # the path whose image is on the canvas
        self._first_for: Project | None = None  # the project whose first image is due
        self.images = ImageLoader(parent=self)
        self.images.loaded.connect(self._on_image_loaded)
        self._heat: QImage | None = None  # the heatmap over the current image, once it came
        self.gallery = GalleryPanel(loader)
        self.canvas = ImageCanvas()
        self.keypoints = KeypointList()
        self.instances = InstancePanel()
        self.reference_pane = ReferencePane()  # the main window docks it
        self._pane_timer = QTimer(self)
        self._pane_timer.setSingleShot(True)
        self._pane_timer.setInterval(250)
        self._pane_timer.timeout.connect(self.reference_pane.update_view)
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.accept_button = QPushButton("Accept image (A)")
        self.reference_button = QPushButton("Use as reference (M)")
        self.reference_button.setToolTip(
            "Make this image a reference: propagation copies its keypoints to the others"
        )
        self.propagate_button = QPushButton("Propagate (Ctrl+R)")
        self.heatmap_box = QCheckBox("Similarity heatmap (H)")
        side = QVBoxLayout()
        side.addWidget(self.title)
        hint = QLabel("Click places the selected keypoint while it is unplaced; drag a point "
                      "to move it; R then a click re-places it.")
        hint.setWordWrap(True)
        side.addWidget(hint)
        instances_hint = QLabel("Instances (B: box tool, drag to draw a box)")
        instances_hint.setWordWrap(True)
        side.addWidget(instances_hint)
        side.addWidget(self.instances)
        side.addWidget(self.keypoints, 1)
        side.addWidget(self.heatmap_box)
        side.addWidget(self.accept_button)
        side.addWidget(self.reference_button)
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
        self._user_sized = False  # once the user drags a splitter handle, sizes are theirs
        self.splitter.splitterMoved.connect(self._on_splitter_moved)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.splitter)

        self.gallery.image_selected.connect(self.show_image)
        self.canvas.place_requested.connect(self._on_place)
        self.canvas.place_refused.connect(self._on_place_refused)
        self.canvas.drag_moved.connect(self._on_drag)
        self.canvas.drag_finished.connect(self._on_drag_end)
        self.canvas.keypoint_clicked.connect(self.set_current_keypoint)
        self.canvas.visibility_requested.connect(self.set_visibility_of)
        self.keypoints.current_keypoint_changed.connect(self.set_current_keypoint)
        self.accept_button.clicked.connect(self.accept_image)
        self.canvas.box_drawn.connect(self._on_box_drawn)
        self.canvas.box_edited.connect(self._on_box_edited)
        self.canvas.box_edit_finished.connect(self._on_drag_end)
        self.canvas.instance_clicked.connect(self.select_instance)
        self.instances.instance_selected.connect(self.select_instance)
        self.instances.add_requested.connect(self.add_instance)
        self.instances.delete_requested.connect(self.delete_instance)
        self.reference_button.clicked.connect(self.make_reference)
        self.heatmap_box.toggled.connect(self._on_heatmap_toggled)

    # ------------------------------------------------------------- layout
    PANEL_SHARE = (0.20, 0.20)  # gallery, side panel: at most this share of a narrow window
    PANEL_WIDTH = (330, 260)  # and at most this wide

    def _on_splitter_moved(self, _pos: int, _index: int) -> None:
        self._user_sized = True

    def fit_panels(self) -> None:
        """Let the gallery and the keypoint panel give way to the canvas in a narrow window
        (down to their minimum widths), unless the user has sized them."""
        if self._user_sized:
            return
        total = sum(self.splitter.sizes())
        if total <= 0:
            return
        widths = []
        for i, (share, most) in enumerate(zip(self.PANEL_SHARE, self.PANEL_WIDTH)):
            least = self.splitter.widget(2 * i).minimumSizeHint().width()
            widths.append(max(least, min(most, int(total * share))))
        gallery, side = widths
        self.splitter.setSizes([gallery, max(0, total - gallery - side), side])

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.fit_panels()

    # ------------------------------------------------------------ project
    def set_project(self, project: Project | None, *, refs: list[str] | None = None,
                    summary: Mapping[str, Summary] | None = None,
                    order: PreparedOrder | None = None, keep: str | None = None,
                    show_later: bool = False) -> None:
        """Show ``project``. Made off the GUI thread, when given: ``refs`` (its
        reference paths), ``order`` (the gallery rows); ``summary``: see
        :meth:`GalleryModel.set_project`. ``keep``: the image to show (the one the user
        was looking at), if the project has it. ``show_later``: that image is shown on the
        event loop's next turn (a project still loading: its gallery and the image's
        points, each 7-14 ms at 100,000 images, are put in place in two short turns of
        the GUI thread rather than one long one)."""
        self.project = project
        self._first_for = None
        self.current_path = None
        self.current_keypoint = 0
        self.current_instance = 0
        self.shown_path = None
        self.images.set_root(project.image_root if project is not None else "",
                             ImageSource.for_project(project))
        self.gallery.model.set_project(project, summary, order)
        self.reference_pane.set_project(project, refs)
        if project is not None:
            self.apply_settings()
            if keep is not None and self.gallery.model.row_of(keep) is not None:
                first: str | None = keep
            else:
                refs = project.reference_paths() if refs is None else refs
                first = refs[0] if refs else (project.images[0].path if len(project) else None)
            if first is not None and show_later:
                self._first_for = project
                QTimer.singleShot(0, self, lambda: self._show_first(project, first))
            elif first is not None:
                self.show_image(first)
        else:
            self.canvas.set_image(None, "No project")

    def _show_first(self, project: Project, path: str) -> None:
        """The deferred first image of ``project``, unless another project or image is on
        show by now (or the project is being closed)."""
        due, self._first_for = self._first_for is project, None  # never keeps it alive
        if due and self.project is project and self.current_path is None:
            self.show_image(path)

    def quiesce(self) -> None:
        """Stop acting on the project on show, which is being closed (its views are put
        away a turn or two later, :meth:`set_project`): no reference-pane update, live
        re-sort, deferred first image or image decode still to come lands on it."""
        self._first_for = None
        self._pane_timer.stop()
        self.gallery.live_timer.stop()
        self.images.drop_work()
        self.reference_pane.images.drop_work()

    def apply_settings(self) -> None:
        if self.project is not None:
            t = self.project.settings.review_threshold
            self.canvas.threshold = self.keypoints.threshold = self.gallery.delegate.threshold = t

    def project_changed(self, paths: frozenset[str]) -> None:
        """Repaint after an edit of ``paths`` (everything when empty)."""
        self.gallery.model.images_changed(paths)
        self.reference_pane.project_changed(paths)
        if not paths:
            self.apply_settings()
            if self.project is not None:
                self.current_keypoint = min(self.current_keypoint, len(self.project.schema) - 1)
        if self.current_path is not None and (not paths or self.current_path in paths):
            self._follow_unplaced()
            self._refresh_points()
        if not self._pane_timer.isActive():  # references change rarely; edits come in streams
            self._pane_timer.start()

    # ------------------------------------------------------------- images
    def show_image(self, path: str) -> None:
        """Make ``path`` the current image.

        The points, list and gallery follow at once; the image itself comes from the cache or
        from a decode on a pool thread (a "Loading" placeholder meanwhile, :attr:`image_shown`
        when it is on the canvas).
        """
        if self.project is None:
            return
        if self.before_show is not None:
            self.before_show(path)
        changed = path != self.current_path
        self.current_path = path
        self.reference_pane.set_current(path)  # never the edited image twice
        img = self.images.request(path)
        if img is not None:
            if changed or self.shown_path != path:
                self._display(path, img)
        else:
            self.shown_path = None
            self.canvas.set_image(None, f"Loading {path}...")
        ann = self.project.annotation(path)
        if changed:
            self.current_instance = 0
        if changed and not ann.has_labels:
            self.current_keypoint = 0
        self.gallery.select(path, emit=False)
        self._refresh_points()
        self._request_heatmap()
        nxt = self.gallery.neighbour(path, 1)
        if nxt is not None and nxt != path:
            self.images.prefetch(nxt)  # Accept and Next usually go there

    def _on_image_loaded(self, path: str, image: QImage | None, error: str) -> None:
        if self.project is None or path != self.current_path:
            return  # a stale result: the user has moved on
        if image is None:
            self.canvas.set_image(None, f"Unreadable image\n{error}")
            self.gallery.model.mark_unreadable(path, error)
            self.message.emit(f"Unreadable: {error}")
            self.shown_path = path
            self.image_shown.emit(path)
            return
        self._display(path, image)

    def _display(self, path: str, image: QImage) -> None:
        assert self.project is not None
        self.canvas.set_image(image)
        if self._heat is not None:  # it arrived before the image
            self.canvas.set_heatmap(self._heat)
        self.shown_path = path
        if self.project.image(path).width is None:
            self.project.set_image_size(path, image.width(), image.height())
        self.image_shown.emit(path)

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
        if self.current_instance < len(ann.instances):
            return ann.instances[self.current_instance].keypoints
        return tuple(Keypoint() for _ in range(k))

    def _follow_unplaced(self) -> None:
        """When an edit (an undo of a placement) unplaces exactly one keypoint of the shown
        instance, select it: the next click places that point again, not the one the
        selection had advanced to."""
        before = self._shown_labelled
        if self.project is None or before is None or before[0] != (self.current_path,
                                                                     self.current_instance):
            return
        now = [kp.labelled for kp in self._keypoints()]
        gone = [i for i, (a, b) in enumerate(zip(before[1], now)) if a and not b]
        if len(gone) == 1 and len(now) == len(before[1]):
            self.current_keypoint = gone[0]
            self.reference_pane.set_keypoint(gone[0])

    def set_instance_filter(self, instance_filter: InstanceFilter) -> None:
        """Which instances the canvas draws (see :mod:`annotator.gui.instance_view`)."""
        self.instance_filter = instance_filter
        self._refresh_points()

    def _refresh_points(self) -> None:
        if self.project is None or self.current_path is None:
            return
        schema = self.project.schema
        ann = self.project.annotation(self.current_path)
        self.current_instance = max(0, min(self.current_instance, len(ann.instances) - 1))
        kps = self._keypoints()
        self._shown_labelled = ((self.current_path, self.current_instance),
                                [kp.labelled for kp in kps])
        styles = [PointStyle(n, c, kp) for n, c, kp in zip(schema.keypoints, schema.colors, kps)]
        self.canvas.set_points(styles, schema.skeleton, self.current_keypoint)
        cur, shows = self.current_instance, self.instance_filter.shows
        boxes = [BoxStyle(i, inst.bbox, inst.box_score, i == cur)
                 for i, inst in enumerate(ann.instances)
                 if inst.bbox is not None and shows(i, inst, cur)]
        others = [(i, [PointStyle(n, c, kp) for n, c, kp in
                       zip(schema.keypoints, schema.colors, inst.keypoints)])
                  for i, inst in enumerate(ann.instances) if i != cur and shows(i, inst, cur)]
        self.canvas.set_instances(boxes, others)
        self.instances.set_instances(ann, len(schema), self.current_instance)
        self.keypoints.set_keypoints(schema, kps, self.current_keypoint)
        ann = self.project.annotation(self.current_path)
        conf = ann.worst_confidence()
        extra = f", worst confidence {conf:.2f}" if conf is not None else ""
        if ann.status == ImageStatus.UNLABELLED and ann.has_labels:
            extra += " (not a reference yet: M or Accept makes it one)"
        self.title.setText(f"<b>{self.current_path}</b><br>{ann.status.value}{extra}")
        is_ref = ann.status == ImageStatus.REFERENCE
        self.reference_button.setEnabled(ann.has_labels and not is_ref)
        self.reference_button.setText("Reference image" if is_ref else "Use as reference (M)")

    def _editable(self) -> bool:
        """Whether an edit of the current image may go ahead; while the project is still
        loading (:attr:`read_only`) it is refused, saying why, and the points on show are
        put back where the project has them."""
        if self.project is None or self.current_path is None:
            return False
        if self.read_only:
            self.message.emit(self.READ_ONLY_TEXT)
            self._refresh_points()
            return False
        return True

    READ_ONLY_TEXT = "The project is still loading: editing starts when it has loaded"

    # ----------------------------------------------------------- keypoints
    def set_current_keypoint(self, index: int) -> None:
        if self.project is None or not 0 <= index < len(self.project.schema):
            return
        if index != self.current_keypoint:
            self.current_keypoint = index
            self._refresh_points()
            self._request_heatmap()
            self.reference_pane.set_keypoint(index)

    def step_keypoint(self, step: int) -> None:
        if self.project is not None and len(self.project.schema):
            self.set_current_keypoint((self.current_keypoint + step) % len(self.project.schema))

    def _on_place(self, index: int, x: float, y: float) -> None:
        if not self._editable():
            return
        self.project.move_keypoint(self.current_path, index, x, y,
                                   instance=self._edit_instance(), make_reference=False)
        kps = self._keypoints()
        k = len(kps)
        for step in range(1, k + 1):  # advance to the next unlabelled keypoint
            j = (index + step) % k
            if not kps[j].labelled:
                self.set_current_keypoint(j)
                break

    def _on_place_refused(self, index: int) -> None:
        if self.project is None:
            return
        name = self.project.schema.keypoints[index]
        self.message.emit(f"{name} is placed already: drag it to move it, or press R and "
                          "click to re-place it")

    def arm_replace(self) -> None:
        """The next click on the image places the selected keypoint, placed or not."""
        if self.project is None or self.current_path is None:
            return
        self.canvas.arm_replace(True)
        name = self.project.schema.keypoints[self.current_keypoint]
        self.message.emit(f"Click the image to re-place {name}")

    def make_reference(self) -> None:
        """Make the current image a reference (explicit: placing points never does)."""
        if not self._editable():
            return
        ann = self.project.annotation(self.current_path)
        if not ann.has_labels:
            self.message.emit("Place keypoints first: a reference needs labels")
            return
        if ann.status == ImageStatus.REFERENCE:
            self.message.emit(f"{self.current_path} is a reference already")
            return
        self.project.set_status(self.current_path, ImageStatus.REFERENCE)
        self.message.emit(f"{self.current_path} is now a reference")

    def _on_drag(self, index: int, x: float, y: float, drag_id: int) -> None:
        if self._editable():
            self.project.move_keypoint(self.current_path, index, x, y,
                                       instance=self._edit_instance(), drag_id=drag_id,
                                       make_reference=False)

    def _on_drag_end(self, _index: int) -> None:
        if self.project is not None:
            self.project.history.end_merge()
            self._request_heatmap()

    def set_visibility_of(self, index: int, v: int) -> None:
        """Set visibility ``v`` (0 deletes) of keypoint ``index`` on the current image."""
        if not self._editable():
            return
        kp = self._keypoints()[index]
        if not kp.labelled and v != Visibility.UNLABELLED:
            self.message.emit("Place the keypoint first (click the image)")
            return
        if not kp.labelled:
            return
        self.project.set_visibility(self.current_path, index, Visibility(v),
                                    instance=self.current_instance)

    def set_visibility(self, v: int) -> None:
        self.set_visibility_of(self.current_keypoint, v)

    # ----------------------------------------------------------- instances
    def _edit_instance(self) -> int:
        """The instance an edit goes to: the selected one (0 creates the first)."""
        assert self.project is not None and self.current_path is not None
        n = len(self.project.annotation(self.current_path).instances)
        return min(self.current_instance, n)

    def select_instance(self, index: int) -> None:
        if self.project is None or self.current_path is None:
            return
        n = len(self.project.annotation(self.current_path).instances)
        if 0 <= index < n and index != self.current_instance:
            self.current_instance = index
            self._refresh_points()

    def add_instance(self) -> None:
        """A new empty instance, selected: the next keypoints placed go to it."""
        if not self._editable():
            return
        self.current_instance = self.project.add_instance(self.current_path)
        self.current_keypoint = 0
        self._refresh_points()

    def delete_instance(self, index: int | None = None) -> None:
        if not self._editable():
            return
        index = self.current_instance if index is None or index < 0 else index
        if index < len(self.project.annotation(self.current_path).instances):
            self.project.delete_instance(self.current_path, index)
            self.current_instance = max(0, index - 1)
            self._refresh_points()

    def delete_selected(self) -> None:
        """Del: in box mode the selected instance's box goes, else the selected keypoint."""
        if not self._editable():
            return
        if self.canvas.box_mode and self.project is not None and self.current_path is not None:
            ann = self.project.annotation(self.current_path)
            if self.current_instance < len(ann.instances):
                if ann.instances[self.current_instance].bbox is not None:
                    self.project.set_instance_box(self.current_path, self.current_instance, None)
            return
        self.set_visibility(0)

    def _on_box_drawn(self, x: float, y: float, w: float, h: float) -> None:
        """A drawn box goes to the selected instance when it has none, else to a new one."""
        if not self._editable():
            return
        ann = self.project.annotation(self.current_path)
        box = (x, y, w, h)
        if self.current_instance < len(ann.instances) and \
                ann.instances[self.current_instance].bbox is None:
            self.project.set_instance_box(self.current_path, self.current_instance, box)
        else:
            self.current_instance = self.project.add_instance(self.current_path, box)
        self._refresh_points()

    def _on_box_edited(self, index: int, x: float, y: float, w: float, h: float,
                       drag_id: int) -> None:
        if self._editable():
            self.current_instance = index
            self.project.set_instance_box(self.current_path, index, (x, y, w, h), drag_id)

    def accept_image(self) -> None:
        """Mark the current image reviewed (it becomes a reference) and go to the next one."""
        if not self._editable():
            return
        ann = self.project.annotation(self.current_path)
        if not ann.has_labels:
            self.message.emit("Nothing to accept: the image has no keypoints")
            return
        threshold = self.project.settings.review_threshold
        low = [
            name
            for inst in ann.instances
            for name, kp in zip(self.project.schema.keypoints, inst.keypoints)
            if kp.origin == Origin.PREDICTED and kp.confidence is not None
            and kp.confidence < threshold
        ]
        if ann.status != ImageStatus.REFERENCE:
            self.project.set_status(self.current_path, ImageStatus.REVIEWED)
        text = f"Accepted {self.current_path}"
        if low:
            text += (f", including {len(low)} keypoint(s) below the review threshold "
                     f"{threshold:g} as predicted: {', '.join(low)}")
        self.message.emit(text)
        self.step_image(1)

    # ------------------------------------------------------------- heatmap
    def _on_heatmap_toggled(self, on: bool) -> None:
        if on:
            self._request_heatmap()
        else:
            self._heat = None
            self.canvas.set_heatmap(None)
            self.heatmap_cleared.emit()

    def _request_heatmap(self) -> None:
        self._heat = None
        self.canvas.set_heatmap(None)
        self.heatmap_cleared.emit()  # a heatmap still on its way is for another keypoint
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
            self._heat = heatmap_to_qimage(heat)  # type: ignore[arg-type]
            self.canvas.set_heatmap(self._heat)
