"""The gallery: every image with its thumbnail, status and worst confidence.

The model filters and sorts itself (a plain Python sort over paths) instead of using a
QSortFilterProxyModel, so re-sorting 10,000 images costs milliseconds, not 140,000 Python
``lessThan`` calls. Thumbnails come from :class:`ThumbnailLoader`; until they arrive the model
returns a placeholder.
"""

from __future__ import annotations

import posixpath
from bisect import bisect_left
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from itertools import islice

from PySide6.QtCore import (
    QAbstractListModel,
    QEvent,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QPoint,
    QRect,
    QSize,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QColor, QFont, QPainter, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QListView,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

from annotator.domain import ImageAnnotation, ImageStatus, Project
from annotator.gui.colors import UNREADABLE_COLOR, confidence_color, status_color
from annotator.gui.release import drop_in_background
from annotator.gui.thumbnails import ThumbnailLoader
from annotator.io.gil_steps import dict_in_steps

PATH_ROLE = Qt.ItemDataRole.UserRole + 1
STATUS_ROLE = Qt.ItemDataRole.UserRole + 2
CONFIDENCE_ROLE = Qt.ItemDataRole.UserRole + 3
ERROR_ROLE = Qt.ItemDataRole.UserRole + 4
INSTANCES_ROLE = Qt.ItemDataRole.UserRole + 5
GALLERY_BACKGROUND = "#1b1b1b"  # behind the tiles (#252525): never a white strip

AnyIndex = QModelIndex | QPersistentModelIndex


class GalleryFilter(str, Enum):
    ALL = "All images"
    NEEDS_REVIEW = "Needs review"
    UNLABELLED = "Unlabelled"
    PREDICTED = "Predicted"
    REVIEWED = "Reviewed"
    REFERENCE = "References"
    UNREADABLE = "Unreadable"


class GallerySort(str, Enum):
    NAME = "Name"
    WORST_FIRST = "Worst first"
    STATUS = "Status"


_STATUS_RANK = {
    ImageStatus.PREDICTED: 0,
    ImageStatus.UNLABELLED: 1,
    ImageStatus.REVIEWED: 2,
    ImageStatus.REFERENCE: 3,
}


#: at most this many changed images are moved into place one by one; more re-sort everything
INCREMENTAL_MAX = 256
#: a live refresh (refresh_live) moves at most INCREMENTAL_MAX of the changed images and leaves
#: the rest for the next tick, while at most this many are waiting; more re-sort everything
LIVE_BACKLOG_MAX = 50_000
#: the rows of a project at least this big are freed on a background thread
RELEASE_ROWS = 5000

#: (status, worst confidence) of an image whose annotation is not loaded
Summary = tuple[ImageStatus, "float | None"]
#: (status, worst confidence, number of instances: 0 while not known) of an image
Facts = tuple[ImageStatus, "float | None", int]


@dataclass(frozen=True)
class PreparedOrder:
    """The gallery rows of a project in project order (sort by name, no filter), built off
    the GUI thread: a model shows them without touching every image itself."""

    rows: list[str]
    keys: list[tuple]
    index_of: dict[str, int]
    key_of: dict[str, tuple]


def prepare_order(project: Project, like: PreparedOrder | None = None) -> PreparedOrder:
    """:class:`PreparedOrder` of ``project`` (any thread; the project must not change
    meanwhile). ``like``: rows already on show (a preview's); when they are the project's,
    ``like`` itself is returned and the gallery keeps them (no model reset)."""
    rows = [r.path for r in project.images]
    if like is not None and like.rows == rows:
        return like
    keys = [(i,) for i in range(len(rows))]
    # on a loader thread: dicts built in steps, each a short C call (annotator.io.gil_steps)
    return PreparedOrder(rows, keys, dict_in_steps(rows, range(len(rows))),
                         dict_in_steps(rows, keys))


class GalleryModel(QAbstractListModel):
    """Rows are the project's images after the current filter and sort.

    Edits and predictions can change both; :attr:`order_stale` says so (the panel re-sorts
    a moment later, keeping the selected image in view)."""

    order_stale = Signal()
    #: every row may show something else (a whole-project change): the views repaint. Not
    #: ``dataChanged`` over all rows: an icon-mode QListView and the proxy before it walk
    #: every row of the range (7 ms at 100,000 rows); the delegate reads what it paints
    repaint_all = Signal()

    def __init__(self, loader: ThumbnailLoader, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._loader = loader
        self._project: Project | None = None
        # a project still loading: what the store says of the images not read yet
        self._summary: dict[str, Summary] | None = None
        self._rows: list[str] = []
        self._row_of: dict[str, int] = {}
        self._errors: dict[str, str] = {}
        self._worst_cache: dict[str, tuple[ImageAnnotation, float | None]] = {}
        # the sort key of every row (parallel to _rows, ascending), of every shown path, and the
        # project order they were computed for: a few changed images are moved into place
        # without re-sorting 10,000 (a full live re-sort cost 15-60 ms per edit there)
        self._keys: list[tuple] = []
        self._key_of: dict[str, tuple] = {}
        self._index_of: dict[str, int] = {}
        self._stale: set[str] | None = set()  # changed since the last refresh (None: all)
        self.filter = GalleryFilter.ALL
        self.sort = GallerySort.NAME
        self._placeholder = QPixmap(loader.size, loader.size)
        self._placeholder.fill(QColor("#3a3a3a"))
        loader.loaded.connect(self._on_thumbnail)

    # ----------------------------------------------------------- project
    def set_project(self, project: Project | None,
                    summary: Mapping[str, Summary] | None = None,
                    order: PreparedOrder | None = None) -> None:
        """Show ``project``. ``summary``: status and worst confidence of the
        images whose annotation the project does not hold yet (a store still loading);
        ``order``: the rows made off the GUI thread (used for the default sort and filter)."""
        big = len(self._rows) > RELEASE_ROWS  # what it replaces: freed off the GUI thread
        shown = order if (project is not None and self.sort == GallerySort.NAME
                          and self.filter == GalleryFilter.ALL) else None
        if shown is not None and shown.rows is self._rows \
                and shown.index_of is self._index_of:
            # the rows on show (the preview's) stay: resetting 100,000 rows costs the GUI
            # thread 5-9 ms; their facts are repainted instead
            old = self._take(project, summary)
            self._stale = set()
            self.images_changed(frozenset(), live=False)
        else:
            old = [self._rows, self._keys, self._key_of, self._index_of, self._row_of,
                   *self._take(project, summary)]
            self._show_order(shown)
        if big:
            drop_in_background(old)

    def _take(self, project: Project | None,
              summary: Mapping[str, Summary] | None) -> list[object]:
        """Take ``project`` and ``summary`` on; returns what they replace."""
        old = [self._summary, self._worst_cache]
        self._project = project
        # taken over, not copied (10^5 entries): annotation_loaded() drops entries
        self._summary = summary if isinstance(summary, dict) or summary is None \
            else dict(summary)
        self._errors.clear()
        self._worst_cache = {}
        return old

    def _show_order(self, order: PreparedOrder | None) -> None:
        """Put ``order``'s rows in place (None: compute them)."""
        if order is not None:
            self._stale = set()
            self._index_of, self._keys, self._key_of = order.index_of, order.keys, order.key_of
            self.beginResetModel()
            self._rows, self._row_of = order.rows, order.index_of
            self.endResetModel()
        else:
            self.refresh()

    def annotation_loaded(self, path: str) -> None:
        """The project now holds the annotation of ``path`` (its summary is dropped)."""
        if self._summary is not None:
            self._summary.pop(path, None)

    def facts(self, path: str) -> Facts:
        """(status, worst confidence, number of instances) of ``path`` (no instance count
        while only its summary is known: the badge waits for the annotation)."""
        if self._summary is not None:
            hit = self._summary.get(path)
            if hit is not None:
                return hit[0], hit[1], 0
        assert self._project is not None
        ann = self._project.annotation(path)
        return ann.status, self._worst(path, ann), len(ann.instances)

    def set_filter(self, value: GalleryFilter) -> None:
        self.filter = GalleryFilter(value)
        self.refresh()

    def set_sort(self, value: GallerySort) -> None:
        self.sort = GallerySort(value)
        self.refresh()

    def error(self, path: str) -> str | None:
        return self._errors.get(path) or self._loader.error(path)

    def mark_unreadable(self, path: str, message: str) -> None:
        self._errors[path] = message
        self.images_changed({path})

    def _keep(self, path: str) -> bool:
        f = self.filter
        if f == GalleryFilter.ALL:
            return True
        if f == GalleryFilter.UNREADABLE:
            return self.error(path) is not None
        assert self._project is not None
        status, conf, _n = self.facts(path)
        if f == GalleryFilter.NEEDS_REVIEW:
            threshold = self._project.settings.review_threshold
            return status == ImageStatus.PREDICTED and (conf is None or conf < threshold)
        wanted = {
            GalleryFilter.UNLABELLED: ImageStatus.UNLABELLED,
            GalleryFilter.PREDICTED: ImageStatus.PREDICTED,
            GalleryFilter.REVIEWED: ImageStatus.REVIEWED,
            GalleryFilter.REFERENCE: ImageStatus.REFERENCE,
        }[f]
        return status == wanted

    def take_stale(self) -> set[str] | None:
        """The images changed since the last refresh (None: too many or unknown), reset."""
        stale, self._stale = self._stale, set()
        return stale

    def refresh(self, changed: Collection[str] | None = None, live: bool = False) -> bool:
        """Re-apply the filter and the sort; returns whether the rows changed (when they did
        not, the rows are only repainted). With ``changed`` (the images edited since the last
        refresh), only those are moved into place when there are few of them; the result is
        the same as a full re-sort. With ``live`` (the timer's refresh during a stream of
        changes) a long ``changed`` is moved INCREMENTAL_MAX images at a time: the rest stay
        stale and :attr:`order_stale` asks for another refresh, so each one is bounded work
        (a full re-sort of 100,000 images holds the GUI thread for a few hundred ms)."""
        if changed is not None:
            changed = set(changed)
            if live and INCREMENTAL_MAX < len(changed) <= LIVE_BACKLOG_MAX:
                now = set(islice(changed, INCREMENTAL_MAX))
                if self._can_update(now):
                    if self._stale is not None:  # None: a full refresh is due anyway
                        self._stale |= changed - now
                    moved = self._update(now)
                    self.order_stale.emit()
                    return moved
            if self._can_update(changed):
                return self._update(changed)
        self._stale = set()
        rows, self._keys = self._compute_rows()
        self._key_of = dict(zip(rows, self._keys))
        return self._show(rows, frozenset())

    def _show(self, rows: list[str], changed: Collection[str]) -> bool:
        if rows == self._rows:
            self.images_changed(changed, live=False)
            return False
        self.beginResetModel()
        self._rows = rows
        self._row_of = {path: i for i, path in enumerate(self._rows)}
        self.endResetModel()
        return True

    def _can_update(self, changed: Collection[str]) -> bool:
        p = self._project
        # "Unreadable" also depends on thumbnail failures, which are not edits: always in full
        return (p is not None and self.filter != GalleryFilter.UNREADABLE
                and len(changed) <= INCREMENTAL_MAX
                and len(p.images) == len(self._index_of)
                and all(path in self._index_of for path in changed))

    def _update(self, changed: Collection[str]) -> bool:
        """Move the ``changed`` images to where a full sort would put them (keys are unique:
        they end with the path or the project index)."""
        rows, keys = list(self._rows), list(self._keys)
        for path in changed:
            old = self._key_of.pop(path, None)
            if old is not None:
                i = bisect_left(keys, old)
                del rows[i], keys[i]
        for path in changed:
            if self._keep(path):
                k = self._key(path)
                i = bisect_left(keys, k)
                rows.insert(i, path)
                keys.insert(i, k)
                self._key_of[path] = k
        self._keys = keys
        return self._show(rows, changed)

    def _key(self, path: str) -> tuple:
        """Sort key of ``path`` for the current sort (project order for NAME)."""
        p = self._project
        assert p is not None
        if self.sort == GallerySort.WORST_FIRST:
            status, conf, _n = self.facts(path)
            return (_STATUS_RANK[status], 2.0 if conf is None else conf, path)
        if self.sort == GallerySort.STATUS:
            return (_STATUS_RANK[self.facts(path)[0]], path)
        return (self._index_of[path],)

    def _worst(self, path: str, ann: ImageAnnotation) -> float | None:
        """``ann.worst_confidence()``, remembered while the image's annotation (an immutable
        value) stays the same, so live re-sorts of 10,000 images only rescore what changed."""
        hit = self._worst_cache.get(path)
        if hit is not None and hit[0] is ann:
            return hit[1]
        conf = ann.worst_confidence()
        self._worst_cache[path] = (ann, conf)
        return conf

    def _compute_rows(self) -> tuple[list[str], list[tuple]]:
        """(rows, their sort keys) after filter and sort; records the project order the keys
        were computed for (``_index_of``)."""
        p = self._project
        self._index_of = {} if p is None else {r.path: i for i, r in enumerate(p.images)}
        if p is None:
            return [], []
        rows = [r.path for r in p.images]
        if self.filter != GalleryFilter.ALL:
            rows = [path for path in rows if self._keep(path)]
        keyed = sorted((self._key(path), path) for path in rows)
        return [path for _, path in keyed], [k for k, _ in keyed]

    def images_changed(self, paths: set[str] | frozenset[str], live: bool = True) -> None:
        """Repaint the rows of ``paths`` (all rows when empty); with ``live``, say that the
        order or the filter may need applying again."""
        if live:
            if not paths or self._stale is None \
                    or len(self._stale) + len(paths) > LIVE_BACKLOG_MAX:
                self._stale = None
            else:
                self._stale.update(paths)
            if self.sort != GallerySort.NAME or self.filter != GalleryFilter.ALL:
                self.order_stale.emit()
        if not self._rows:
            return
        if not paths:
            self.repaint_all.emit()
            return
        for path in paths:
            row = self._row_of.get(path)
            if row is not None:
                idx = self.index(row)
                self.dataChanged.emit(idx, idx)

    def _on_thumbnail(self, path: str) -> None:
        row = self._row_of.get(path)
        if row is not None:
            idx = self.index(row)
            self.dataChanged.emit(idx, idx, [Qt.ItemDataRole.DecorationRole, ERROR_ROLE])

    # --------------------------------------------------------- Qt model
    def rowCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def path_at(self, row: int) -> str | None:
        return self._rows[row] if 0 <= row < len(self._rows) else None

    def row_of(self, path: str) -> int | None:
        return self._row_of.get(path)

    def data(self, index: AnyIndex, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        if not index.isValid() or self._project is None:
            return None
        path = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            rec = self._project.image(path)
            if rec.video is not None:  # a video frame: its video and frame number
                return f"{posixpath.splitext(posixpath.basename(rec.video))[0]} #{rec.frame}"
            return posixpath.basename(path)
        if role == PATH_ROLE:
            return path
        if role == Qt.ItemDataRole.DecorationRole:
            return self._loader.pixmap(path) or self._placeholder
        if role == STATUS_ROLE:  # a plain str: Qt would turn the enum into one anyway
            return self.facts(path)[0].value
        if role == CONFIDENCE_ROLE:
            return self.facts(path)[1]
        if role == ERROR_ROLE:
            return self.error(path)
        if role == INSTANCES_ROLE:
            return self.facts(path)[2]
        if role == Qt.ItemDataRole.ToolTipRole:
            status, conf, _n = self.facts(path)
            tip = f"{path}\n{status.value}"
            if conf is not None:
                tip += f", worst confidence {conf:.2f}"
            err = self.error(path)
            return tip + (f"\nunreadable: {err}" if err else "")
        return None


class GalleryDelegate(QStyledItemDelegate):
    """Thumbnail, file name, a status stripe and the worst confidence."""

    def __init__(self, thumb_size: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._thumb = thumb_size
        self.threshold = 0.5
        self.min_width = thumb_size + 12
        self.width = self.min_width  # widened by the panel so the tiles fill its rows

    def sizeHint(self, option: QStyleOptionViewItem, index: AnyIndex) -> QSize:
        return QSize(self.width, self._thumb + 30)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: AnyIndex) -> None:
        painter.save()
        r = option.rect  # type: ignore[attr-defined]
        selected = bool(option.state & QStyle.StateFlag.State_Selected)  # type: ignore[attr-defined]
        painter.fillRect(r, QColor("#2f5f9f") if selected else QColor("#252525"))
        pm = index.data(Qt.ItemDataRole.DecorationRole)
        box = QRect(r.x() + (r.width() - self._thumb) // 2, r.y() + 4, self._thumb, self._thumb)
        if isinstance(pm, QPixmap) and not pm.isNull():
            scaled = pm.size().scaled(box.size(), Qt.AspectRatioMode.KeepAspectRatio)
            target = QRect(0, 0, scaled.width(), scaled.height())
            target.moveCenter(box.center())
            painter.drawPixmap(target, pm)
        error = index.data(ERROR_ROLE)
        status = ImageStatus(index.data(STATUS_ROLE))
        stripe = QColor(UNREADABLE_COLOR) if error else status_color(status)
        painter.fillRect(QRect(box.x(), box.y(), 6, self._thumb), stripe)
        painter.setPen(QColor("#e8e8e8"))
        font = QFont(painter.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() - 1))
        painter.setFont(font)
        text_rect = QRect(r.x() + 4, r.y() + self._thumb + 6, r.width() - 8, 20)
        name = str(index.data(Qt.ItemDataRole.DisplayRole))
        elided = painter.fontMetrics().elidedText(name, Qt.TextElideMode.ElideMiddle,
                                                  text_rect.width())
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignCenter, elided)
        conf = index.data(CONFIDENCE_ROLE)
        if error:
            badge, color = "unreadable", stripe
        elif conf is not None:
            badge, color = f"{conf:.2f}", confidence_color(conf, self.threshold)
        else:
            badge, color = status.value, stripe
        fm = painter.fontMetrics()
        badge_rect = QRect(0, 0, fm.horizontalAdvance(badge) + 8, fm.height() + 2)
        badge_rect.moveTopRight(box.topRight() + QPoint(-2, 2))
        painter.fillRect(badge_rect, QColor(0, 0, 0, 170))
        painter.setPen(color)
        painter.drawText(badge_rect, Qt.AlignmentFlag.AlignCenter, badge)
        count = index.data(INSTANCES_ROLE) or 0
        if count > 1:  # several objects: the confidence badge is the worst over them
            text = f"{count} obj"
            count_rect = QRect(0, 0, fm.horizontalAdvance(text) + 8, fm.height() + 2)
            count_rect.moveBottomRight(box.bottomRight() + QPoint(-2, -2))
            painter.fillRect(count_rect, QColor(0, 0, 0, 170))
            painter.setPen(QColor("#e8e8e8"))
            painter.drawText(count_rect, Qt.AlignmentFlag.AlignCenter, text)
        painter.restore()


class GalleryPanel(QWidget):
    """Filter and sort controls above the thumbnail list."""

    image_selected = Signal(str)

    def __init__(self, loader: ThumbnailLoader, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = GalleryModel(loader, self)
        self.filter_box = QComboBox()
        self.filter_box.addItems([f.value for f in GalleryFilter])
        self.sort_box = QComboBox()
        self.sort_box.addItems([s.value for s in GallerySort])
        # The view reads the model through a pass-through proxy (no sort, no filter: its row
        # i is the model's row i). A QListView lays its items out by asking index(row) of
        # every row, and on a Python model each of those calls rowCount() in Python: 200,000
        # calls per layout at 100,000 images, each taking the GIL back from whatever worker
        # holds it (up to the 5 ms switch interval each: seconds of frozen window during an
        # export). Through the proxy those calls stay in C++; only drawn rows reach Python.
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setDynamicSortFilter(False)
        self.proxy.setSourceModel(self.model)
        self.view = QListView()
        self.view.setModel(self.proxy)
        self.delegate = GalleryDelegate(loader.size, self.view)
        self.view.setItemDelegate(self.delegate)
        self.view.setViewMode(QListView.ViewMode.IconMode)
        self.view.setResizeMode(QListView.ResizeMode.Adjust)
        self.view.setMovement(QListView.Movement.Static)
        self.view.setUniformItemSizes(True)
        self.view.setLayoutMode(QListView.LayoutMode.Batched)
        self.view.setBatchSize(500)
        self.view.setSelectionMode(QListView.SelectionMode.SingleSelection)
        self.view.setSpacing(2)
        # the tiles are widened to fill each row (fit_columns) and the background is the
        # tiles' own dark grey: no blank strip beside the last column
        self.view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # a scroll bar that comes and goes would change the width the rows fill
        self.view.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
        self.view.setStyleSheet(f"QListView {{ background: {GALLERY_BACKGROUND}; }}")
        self.view.viewport().installEventFilter(self)
        for box in (self.filter_box, self.sort_box):  # they may shrink in a narrow window
            box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            box.setMinimumContentsLength(6)
        controls = QHBoxLayout()
        controls.addWidget(self.filter_box, 1)
        controls.addWidget(self.sort_box, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(controls)
        layout.addWidget(self.view)
        self.filter_box.currentTextChanged.connect(self._on_filter)
        self.sort_box.currentTextChanged.connect(self._on_sort)
        # activated also fires when the user picks the item already shown: sort again
        self.filter_box.activated.connect(lambda _i: self._on_filter(self.filter_box.currentText()))
        self.sort_box.activated.connect(lambda _i: self._on_sort(self.sort_box.currentText()))
        self.view.selectionModel().currentChanged.connect(self._on_current)
        self._current: str | None = None
        # edits and predictions re-sort and re-filter at most every LIVE_MS, not per change
        self.live_timer = QTimer(self)
        self.live_timer.setSingleShot(True)
        self.live_timer.setInterval(self.LIVE_MS)
        self.live_timer.timeout.connect(self.refresh_live)
        self.model.order_stale.connect(self._on_order_stale)
        self.model.repaint_all.connect(self.view.viewport().update)

    LIVE_MS = 300

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.view.viewport() and event.type() == QEvent.Type.Resize:
            self.fit_columns()
        return super().eventFilter(watched, event)

    def fit_columns(self) -> None:
        """Widen the tiles so that whole columns fill the view's width (a row of n tiles
        needs ``spacing + n * (width + spacing) + spacing`` pixels, or the list wraps it)."""
        s = self.view.spacing()
        avail = self.view.viewport().width() - 2 * s
        cols = max(1, avail // (self.delegate.min_width + s))
        width = max(self.delegate.min_width, avail // cols - s)
        if width != self.delegate.width:
            self.delegate.width = width
            self.view.scheduleDelayedItemsLayout()

    def _on_filter(self, text: str) -> None:
        self.model.set_filter(GalleryFilter(text))
        self._after_user_change()

    def _on_sort(self, text: str) -> None:
        self.model.set_sort(GallerySort(text))
        self._after_user_change()

    def _after_user_change(self) -> None:
        """A new sort or filter: the selection stays selected, the list starts at the top."""
        self.live_timer.stop()
        if self._current is not None:
            self.select(self._current, emit=False, scroll=False)
        self.view.scrollToTop()

    def _on_order_stale(self) -> None:
        if not self.live_timer.isActive():  # a stream of changes re-sorts every LIVE_MS
            self.live_timer.start()

    def refresh_live(self) -> None:
        """Apply the sort and filter again after edits, keeping the selected image where the
        user sees it (or, with it not in view, the scroll position)."""
        self.live_timer.stop()
        bar = self.view.verticalScrollBar()
        scroll = bar.value()
        current = self._current
        row = self.model.row_of(current) if current is not None else None
        visible = row is not None and self.view.viewport().rect().intersects(
            self.view.visualRect(self.view_index(row)))
        if not self.model.refresh(self.model.take_stale(), live=True):
            return
        if current is not None and self.model.row_of(current) is not None:
            self.select(current, emit=False, scroll=False)
        if visible and current is not None and self.model.row_of(current) is not None:
            self.view.scrollTo(self.view_index(self.model.row_of(current)))
        else:
            bar.setValue(min(scroll, bar.maximum()))

    def view_index(self, row: int) -> QModelIndex:
        """The view's index of the model's ``row`` (what visualRect, scrollTo and the
        selection take)."""
        return self.proxy.index(row, 0)

    def _on_current(self, current: QModelIndex, _previous: QModelIndex) -> None:
        row = self.proxy.mapToSource(current).row() if current.isValid() else -1
        path = self.model.path_at(row) if row >= 0 else None
        if path is not None and path != self._current:
            self._current = path
            self.image_selected.emit(path)

    def select(self, path: str, emit: bool = True, scroll: bool = True) -> None:
        """Make ``path`` current (if it passes the filter); ``emit=False`` stays silent,
        ``scroll=False`` leaves the view where it is."""
        if not emit:
            self._current = path
        row = self.model.row_of(path)
        if row is None:
            return
        idx = self.view_index(row)
        self.view.setCurrentIndex(idx)
        if scroll:
            self.view.scrollTo(idx)

    def neighbour(self, path: str | None, step: int) -> str | None:
        """The image ``step`` rows away from ``path`` in the current order."""
        n = self.model.rowCount()
        if n == 0:
            return None
        row = self.model.row_of(path) if path is not None else None
        if row is None:
            return self.model.path_at(0)
        return self.model.path_at(min(n - 1, max(0, row + step)))
