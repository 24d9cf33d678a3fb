"""The image view: zoom to cursor, pan, fit; click to place, drag to move, right-click menu.

Interaction model (no single stray click changes a placed point):

- a left click on the image places the selected keypoint only while it is unplaced; on a
  placed one the click is refused (:attr:`ImageCanvas.place_refused`) unless re-placing was
  armed first (:meth:`ImageCanvas.arm_replace`, the R key), which lasts for one click;
- a placed point moves only by dragging it, and only once the mouse has travelled the
  platform's drag distance; it keeps its offset from the cursor, so it never jumps;
- pressing on several points stacked within the hit radius picks the selected one if it is
  among them, otherwise the nearest; clicking the stack again (without dragging) selects the
  next point of the stack.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QAction,
    QColor,
    QContextMenuEvent,
    QImage,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QPixmap,
    QResizeEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import QApplication, QMenu, QSizePolicy, QWidget

from annotator.domain import Keypoint, Origin, Visibility
from annotator.gui.colors import confidence_color

HIT_RADIUS = 10.0  # screen pixels
HANDLE = 5.0  # half side of a box resize handle, screen pixels
MIN_BOX = 2.0  # image pixels: a smaller drag is a click, not a box
POINT_RADIUS = 6.0
MIN_SCALE, MAX_SCALE = 0.02, 64.0
_drag_ids = itertools.count(1)


@dataclass(frozen=True)
class PointStyle:
    """What the canvas needs to draw one keypoint slot."""

    name: str
    color: str
    keypoint: Keypoint


@dataclass(frozen=True)
class BoxStyle:
    """One instance box: (x, y, w, h) image pixels; ``score`` for an unreviewed detection."""

    index: int
    box: tuple[float, float, float, float]
    score: float | None = None
    current: bool = False


_CORNERS = ("tl", "tr", "bl", "br")


def _box_edges(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x, y, w, h = box
    return x, y, x + w, y + h


def _moved_box(kind: str, box: tuple[float, float, float, float], dx: float, dy: float,
               size: tuple[int, int]) -> tuple[float, float, float, float]:
    """``box`` moved ("move") or resized by a corner handle, by (dx, dy), kept in the image."""
    x0, y0, x1, y1 = _box_edges(box)
    w_img, h_img = size
    if kind == "move":
        w, h = x1 - x0, y1 - y0
        nx = min(max(x0 + dx, 0.0), max(w_img - w, 0.0))
        ny = min(max(y0 + dy, 0.0), max(h_img - h, 0.0))
        return (nx, ny, w, h)
    if "l" in kind:
        x0 += dx
    else:
        x1 += dx
    if "t" in kind:
        y0 += dy
    else:
        y1 += dy
    x0, x1 = sorted((min(max(x0, 0.0), w_img), min(max(x1, 0.0), w_img)))
    y0, y1 = sorted((min(max(y0, 0.0), h_img), min(max(y1, 0.0), h_img)))
    return (x0, y0, max(x1 - x0, 1.0), max(y1 - y0, 1.0))


class ImageCanvas(QWidget):
    """Shows one image with its keypoints; emits edit requests, never edits the project.

    Instances: the current instance's keypoints are editable, the others' are drawn dimmed
    (:meth:`set_instances`). In box mode (:attr:`box_mode`) a left drag on empty image draws
    a box (:attr:`box_drawn`), a drag inside a box moves it and a drag on a corner handle of
    the current box resizes it (:attr:`box_edited`, then :attr:`box_edit_finished`).
    """

    box_drawn = Signal(float, float, float, float)  # x, y, w, h (image pixels)
    box_edited = Signal(int, float, float, float, float, int)  # instance, x, y, w, h, drag id
    box_edit_finished = Signal(int)  # instance
    instance_clicked = Signal(int)  # instance

    place_requested = Signal(int, float, float)  # keypoint index, x, y (image pixels)
    place_refused = Signal(int)  # a click on the image while keypoint index is placed
    drag_moved = Signal(int, float, float, int)  # index, x, y, drag id
    drag_finished = Signal(int)  # index
    keypoint_clicked = Signal(int)
    visibility_requested = Signal(int, int)  # index, v
    zoom_changed = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMinimumSize(200, 150)
        self._pixmap: QPixmap | None = None
        self._message = "No image"
        self._points: list[PointStyle] = []
        self._skeleton: tuple[tuple[int, int], ...] = ()
        self._current = 0
        self._heat: QImage | None = None
        self._scale = 1.0
        self._offset = QPointF(0, 0)
        self._fitted = True
        self._drag: tuple[int, int] | None = None
        # a press on a point: (index, press position, point minus press in image pixels,
        # points stacked under the press, whether it was selected before); it becomes a drag
        # past the drag distance
        self._press: tuple[int, QPointF, QPointF, tuple[int, ...], bool] | None = None
        self._replace_armed = False
        self._pan_from: QPointF | None = None
        self.threshold = 0.5
        self.show_names = True
        self._boxes: list[BoxStyle] = []
        self._others: list[tuple[int, list[PointStyle]]] = []  # (instance, its points)
        self._box_drag: tuple[str, int, QPointF, tuple[float, float, float, float], int] | None \
            = None
        self._rubber: tuple[QPointF, QPointF] | None = None
        self.box_mode = False

    # ------------------------------------------------------------- content

    @property
    def dragging(self) -> bool:
        """Whether the user is dragging a keypoint or a box right now."""
        return self._drag is not None or self._box_drag is not None or self._rubber is not None

    def set_instances(self, boxes: list[BoxStyle],
                      others: list[tuple[int, list[PointStyle]]]) -> None:
        """Instance boxes, and the keypoints of the instances other than the current one
        as (instance index, points): drawn dimmed; clicking one selects its instance."""
        self._boxes = boxes
        self._others = others
        self.update()

    def set_box_mode(self, on: bool) -> None:
        self.box_mode = bool(on)
        self._rubber = None
        self.setCursor(Qt.CursorShape.CrossCursor if on else Qt.CursorShape.ArrowCursor)
        self.update()

    def _handle_at(self, pos: QPointF) -> tuple[str, BoxStyle] | None:
        """The box part under ``pos``: a corner of the current box, else the inside of a box
        (the current one first, then the smallest)."""
        for b in self._boxes:
            if not b.current:
                continue
            x0, y0, x1, y1 = _box_edges(b.box)
            for kind, (x, y) in zip(_CORNERS, ((x0, y0), (x1, y0), (x0, y1), (x1, y1))):
                w = self.to_widget(x, y)
                if abs(w.x() - pos.x()) <= HANDLE + 2 and abs(w.y() - pos.y()) <= HANDLE + 2:
                    return kind, b
        x, y = self.to_image(pos)
        inside = [b for b in self._boxes
                  if b.box[0] <= x <= b.box[0] + b.box[2] and b.box[1] <= y <= b.box[1] + b.box[3]]
        if not inside:
            return None
        inside.sort(key=lambda b: (not b.current, b.box[2] * b.box[3]))
        return "move", inside[0]

    @property
    def replace_armed(self) -> bool:
        """Whether the next click re-places the selected keypoint even though it is placed."""
        return self._replace_armed

    def arm_replace(self, on: bool = True) -> None:
        """Let the next click on the image place the selected keypoint wherever it is."""
        self._replace_armed = on
        self.setCursor(Qt.CursorShape.CrossCursor) if on else self.unsetCursor()

    def set_image(self, image: QImage | None, message: str = "") -> None:
        """Show ``image`` fitted to the window (``message`` when there is none)."""
        self._pixmap = QPixmap.fromImage(image) if image is not None else None
        self._message = message
        self._heat = None
        self._drag = None
        self._box_drag = self._rubber = None
        self._press = None
        self.arm_replace(False)
        self.fit()

    def set_points(
        self,
        points: list[PointStyle],
        skeleton: tuple[tuple[int, int], ...],
        current: int,
    ) -> None:
        self._points = points
        self._skeleton = skeleton
        self._current = current
        self.update()

    def set_current(self, index: int) -> None:
        self._current = index
        self.update()

    def set_heatmap(self, heat: QImage | None) -> None:
        self._heat = heat
        self.update()

    @property
    def has_heatmap(self) -> bool:
        return self._heat is not None

    @property
    def image_size(self) -> tuple[int, int] | None:
        return (self._pixmap.width(), self._pixmap.height()) if self._pixmap else None

    # ------------------------------------------------------------ geometry
    @property
    def scale(self) -> float:
        return self._scale

    def to_widget(self, x: float, y: float) -> QPointF:
        """Image pixels -> widget coordinates."""
        return QPointF(self._offset.x() + x * self._scale, self._offset.y() + y * self._scale)

    def to_image(self, p: QPointF) -> tuple[float, float]:
        """Widget coordinates -> image pixels."""
        return ((p.x() - self._offset.x()) / self._scale, (p.y() - self._offset.y()) / self._scale)

    def fit(self) -> None:
        """Scale the whole image into the window and centre it."""
        self._fitted = True
        if self._pixmap is not None and self.width() > 0 and self.height() > 0:
            iw, ih = self._pixmap.width(), self._pixmap.height()
            self._scale = max(MIN_SCALE, min(self.width() / iw, self.height() / ih) * 0.98)
            self._offset = QPointF(
                (self.width() - iw * self._scale) / 2, (self.height() - ih * self._scale) / 2
            )
            self.zoom_changed.emit(self._scale)
        self.update()

    def zoom_at(self, factor: float, anchor: QPointF) -> None:
        """Zoom by ``factor`` keeping the image point under ``anchor`` fixed."""
        new = min(MAX_SCALE, max(MIN_SCALE, self._scale * factor))
        x, y = self.to_image(anchor)
        self._scale = new
        self._offset = QPointF(anchor.x() - x * new, anchor.y() - y * new)
        self._fitted = False
        self.zoom_changed.emit(new)
        self.update()

    def pan_by(self, dx: float, dy: float) -> None:
        self._offset += QPointF(dx, dy)
        self._fitted = False
        self.update()

    def hits(self, pos: QPointF) -> list[int]:
        """Indices of the labelled keypoints within the hit radius of ``pos``, nearest first
        (equal distances in index order)."""
        found = []
        for i, p in enumerate(self._points):
            if not p.keypoint.labelled:
                continue
            w = self.to_widget(p.keypoint.x, p.keypoint.y)
            d = ((w.x() - pos.x()) ** 2 + (w.y() - pos.y()) ** 2) ** 0.5
            if d <= HIT_RADIUS:
                found.append((d, i))
        return [i for _d, i in sorted(found)]

    def hit(self, pos: QPointF) -> int | None:
        """The keypoint a press at ``pos`` picks: the selected one if it is within the hit
        radius (it wins ties and stacks), otherwise the nearest; None when none is near."""
        near = self.hits(pos)
        if not near:
            return None
        return self._current if self._current in near else near[0]

    def _hit_other(self, pos: QPointF) -> int | None:
        """Instance of the dimmed keypoint nearest ``pos`` within the hit radius."""
        best, best_d = None, HIT_RADIUS
        for instance, points in self._others:
            for p in points:
                if not p.keypoint.labelled:
                    continue
                w = self.to_widget(p.keypoint.x, p.keypoint.y)
                d = ((w.x() - pos.x()) ** 2 + (w.y() - pos.y()) ** 2) ** 0.5
                if d <= best_d:
                    best, best_d = instance, d
        return best

    def _inside(self, x: float, y: float) -> bool:
        size = self.image_size
        return size is not None and 0 <= x < size[0] and 0 <= y < size[1]

    # --------------------------------------------------------------- events
    def resizeEvent(self, event: QResizeEvent) -> None:
        if self._fitted:
            self.fit()
        super().resizeEvent(event)

    def wheelEvent(self, event: QWheelEvent) -> None:
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.zoom_at(1.15**steps, event.position())
        event.accept()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        pan = event.button() == Qt.MouseButton.MiddleButton or (
            event.button() == Qt.MouseButton.LeftButton
            and event.modifiers() & Qt.KeyboardModifier.ControlModifier
        )
        if pan:
            self._pan_from = pos
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
            return
        if event.button() != Qt.MouseButton.LeftButton or self._pixmap is None:
            return
        if self.box_mode:
            part = self._handle_at(pos)
            if part is not None:
                kind, b = part
                if not b.current:
                    self.instance_clicked.emit(b.index)
                self._box_drag = (kind, b.index, pos, b.box, next(_drag_ids))
            elif self._inside(*self.to_image(pos)):
                self._rubber = (pos, pos)
            return
        if not self._replace_armed and self.hit(pos) is None:
            other = self._hit_other(pos)
            if other is not None:  # a dimmed point: select its instance, place nothing
                self.instance_clicked.emit(other)
                return
        x, y = self.to_image(pos)
        index = None if self._replace_armed else self.hit(pos)
        if index is not None:
            kp = self._points[index].keypoint
            offset = QPointF(kp.x - x, kp.y - y)
            was_selected = index == self._current
            self._press = (index, QPointF(pos), offset, tuple(self.hits(pos)), was_selected)
            if not was_selected:
                self._current = index
                self.keypoint_clicked.emit(index)
                self.update()
            return
        if not (self._inside(x, y) and 0 <= self._current < len(self._points)):
            return
        if self._replace_armed or not self._points[self._current].keypoint.labelled:
            self.arm_replace(False)
            self.place_requested.emit(self._current, x, y)
        else:
            self.place_refused.emit(self._current)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        if self._pan_from is not None:
            d = pos - self._pan_from
            self._pan_from = pos
            self.pan_by(d.x(), d.y())
            return
        if self._box_drag is not None:
            kind, index, start, box, drag_id = self._box_drag
            dx = (pos.x() - start.x()) / self._scale
            dy = (pos.y() - start.y()) / self._scale
            new = _moved_box(kind, box, dx, dy, self.image_size or (1, 1))
            self.box_edited.emit(index, *new, drag_id)
            return
        if self._rubber is not None:
            self._rubber = (self._rubber[0], pos)
            self.update()
            return
        if self._press is not None and self._drag is None:
            index, start = self._press[0], self._press[1]
            moved = (pos - start).manhattanLength()
            if moved < QApplication.startDragDistance():
                return  # a click, however shaky, is not a move
            self._drag = (index, next(_drag_ids))
        if self._drag is not None and self._press is not None:
            offset = self._press[2]
            x, y = self.to_image(pos)
            x, y = x + offset.x(), y + offset.y()
            size = self.image_size or (1, 1)
            x = min(max(x, 0.0), size[0] - 1e-3)
            y = min(max(y, 0.0), size[1] - 1e-3)
            self.drag_moved.emit(self._drag[0], x, y, self._drag[1])

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self._pan_from is not None:
            self._pan_from = None
            self.unsetCursor()
            return
        if self._box_drag is not None:
            index = self._box_drag[1]
            self._box_drag = None
            self.box_edit_finished.emit(index)
            return
        if self._rubber is not None:
            (a, b), self._rubber = self._rubber, None
            size = self.image_size or (1, 1)
            (x0, y0), (x1, y1) = self.to_image(a), self.to_image(b)
            x0, x1 = sorted((min(max(x0, 0.0), size[0]), min(max(x1, 0.0), size[0])))
            y0, y1 = sorted((min(max(y0, 0.0), size[1]), min(max(y1, 0.0), size[1])))
            self.update()
            if x1 - x0 >= MIN_BOX and y1 - y0 >= MIN_BOX:
                self.box_drawn.emit(x0, y0, x1 - x0, y1 - y0)
            else:  # a click: select the instance whose box is there
                part = self._handle_at(a)
                if part is not None:
                    self.instance_clicked.emit(part[1].index)
            return
        press, self._press = self._press, None
        if self._drag is not None:
            index = self._drag[0]
            self._drag = None
            self.drag_finished.emit(index)
        elif press is not None:
            index, stack, was_selected = press[0], press[3], press[4]
            if was_selected and len(stack) > 1:
                # a click on the selected point of a stack: select the next one under it
                nxt = stack[(stack.index(index) + 1) % len(stack)]
                self._current = nxt
                self.keypoint_clicked.emit(nxt)
                self.update()

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        index = self.hit(QPointF(event.pos()))
        if index is None:
            return
        self.keypoint_clicked.emit(index)
        self.visibility_menu(index).exec(event.globalPos())

    def visibility_menu(self, index: int) -> QMenu:
        """The right-click menu of keypoint ``index``."""
        menu = QMenu(self)
        for label, v in (
            ("Visible (2)", Visibility.VISIBLE),
            ("Occluded (1)", Visibility.OCCLUDED),
            ("Delete / not labelled (0)", Visibility.UNLABELLED),
        ):
            action = QAction(label, menu)
            action.triggered.connect(lambda _=False, v=v: self.visibility_requested.emit(index, v))
            menu.addAction(action)
        return menu

    # ---------------------------------------------------------------- paint
    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("#1b1b1b"))
        if self._pixmap is None:
            painter.setPen(QColor("#c0c0c0"))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self._message)
            return
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self._scale < 2)
        target = QRectF(
            self._offset.x(), self._offset.y(),
            self._pixmap.width() * self._scale, self._pixmap.height() * self._scale,
        )
        painter.drawPixmap(target, self._pixmap, QRectF(self._pixmap.rect()))
        if self._heat is not None:
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            painter.drawImage(target, self._heat, QRectF(self._heat.rect()))
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        self._paint_others(painter)
        self._paint_boxes(painter)
        self._paint_skeleton(painter)
        self._paint_points(painter)

    def _paint_others(self, painter: QPainter) -> None:
        """The other instances' keypoints, dimmed."""
        painter.setBrush(Qt.BrushStyle.NoBrush)
        for _, points in self._others:
            for p in points:
                if not p.keypoint.labelled:
                    continue
                color = QColor(p.color)
                color.setAlpha(90)
                painter.setPen(QPen(color, 1.5))
                painter.setBrush(color)
                painter.drawEllipse(self.to_widget(p.keypoint.x, p.keypoint.y),
                                    POINT_RADIUS - 2, POINT_RADIUS - 2)

    def _paint_boxes(self, painter: QPainter) -> None:
        for b in self._boxes:
            x0, y0, x1, y1 = _box_edges(b.box)
            rect = QRectF(self.to_widget(x0, y0), self.to_widget(x1, y1))
            color = QColor("#ffd740") if b.current else QColor(200, 200, 200, 110)
            pen = QPen(color, 2 if b.current else 1.2)
            if b.score is not None:  # a detection not yet reviewed
                pen.setStyle(Qt.PenStyle.DashLine)
            painter.setPen(pen)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(rect)
            label = f"#{b.index + 1}" + (f" {b.score:.2f}" if b.score is not None else "")
            painter.drawText(rect.topLeft() + QPointF(3, -4), label)
            if b.current and self.box_mode:
                painter.setBrush(color)
                for corner in (rect.topLeft(), rect.topRight(), rect.bottomLeft(),
                               rect.bottomRight()):
                    painter.drawRect(QRectF(corner.x() - HANDLE, corner.y() - HANDLE,
                                            2 * HANDLE, 2 * HANDLE))
        if self._rubber is not None:
            painter.setPen(QPen(QColor("#ffd740"), 1.5, Qt.PenStyle.DashLine))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(QRectF(self._rubber[0], self._rubber[1]).normalized())

    def _paint_skeleton(self, painter: QPainter) -> None:
        for a, b in self._skeleton:
            if a >= len(self._points) or b >= len(self._points):
                continue
            ka, kb = self._points[a].keypoint, self._points[b].keypoint
            if not (ka.labelled and kb.labelled):
                continue
            pen = QPen(QColor(0, 0, 0, 160), 4)
            painter.setPen(pen)
            pa, pb = self.to_widget(ka.x, ka.y), self.to_widget(kb.x, kb.y)
            painter.drawLine(pa, pb)
            color = QColor(self._points[a].color)
            color.setAlpha(220)
            painter.setPen(QPen(color, 2))
            painter.drawLine(pa, pb)

    def _paint_points(self, painter: QPainter) -> None:
        for i, p in enumerate(self._points):
            kp = p.keypoint
            if not kp.labelled:
                continue
            c = self.to_widget(kp.x, kp.y)
            own = QColor(p.color)
            predicted = kp.origin == Origin.PREDICTED
            fill = confidence_color(kp.confidence, self.threshold) if predicted else own
            if i == self._current:
                painter.setPen(QPen(QColor("#ffff40"), 2))
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.drawEllipse(c, POINT_RADIUS + 4, POINT_RADIUS + 4)
            pen = QPen(own if predicted else QColor("white"), 2.5 if predicted else 1.5)
            if kp.v == Visibility.OCCLUDED:
                pen.setStyle(Qt.PenStyle.DashLine)
                painter.setBrush(Qt.BrushStyle.NoBrush)
                pen.setColor(fill)
            else:
                painter.setBrush(fill)
            painter.setPen(pen)
            painter.drawEllipse(c, POINT_RADIUS, POINT_RADIUS)
            if self.show_names and (i == self._current or self._drag is not None):
                painter.setPen(QColor("white"))
                painter.drawText(c + QPointF(POINT_RADIUS + 4, -POINT_RADIUS), p.name)
