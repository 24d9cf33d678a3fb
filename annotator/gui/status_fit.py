"""A status bar that stays readable in a narrow window (1024 px and less).

QStatusBar gives its permanent widgets their full width and the message only what is left,
so in a narrow window the message was cut off. :class:`StatusFit` hides secondary widgets
(least important first) while the message and the other widgets need their room, and shows
them again when there is room; their text stays in the bar's tooltip meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtWidgets import QLabel, QStatusBar, QWidget

MESSAGE_MARGIN = 24  # around the message, as QStatusBar draws it
SPACING = 6  # between permanent widgets (the bar's layout spacing and margins)


class StatusFit(QObject):
    """Hide ``secondary`` widgets of ``bar`` (least important first) while the message
    and the remaining widgets would not fit; only widgets it hid are shown again."""

    def __init__(self, bar: QStatusBar, secondary: Sequence[QWidget]) -> None:
        super().__init__(bar)
        self._bar = bar
        self._secondary = list(secondary)
        self._hidden: set[QWidget] = set()
        self._fitting = False
        bar.installEventFilter(self)
        bar.messageChanged.connect(lambda _text: self.refit())

    @property
    def hidden(self) -> list[QWidget]:
        """The widgets hidden for room now, least important first."""
        return [w for w in self._secondary if w in self._hidden]

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self._bar and event.type() in (QEvent.Type.Resize,
                                                     QEvent.Type.LayoutRequest):
            self.refit()
        return False

    def _shown(self, w: QWidget) -> bool:
        """Whether ``w`` would be on show but for this fitter."""
        return w in self._hidden or w.isVisibleTo(self._bar)

    def refit(self) -> None:
        if self._fitting:
            return
        bar = self._bar
        message = bar.currentMessage()
        need = bar.fontMetrics().horizontalAdvance(message) + MESSAGE_MARGIN if message else 0
        children = bar.findChildren(QWidget, options=Qt.FindChildOption.FindDirectChildrenOnly)
        widths = {w: w.sizeHint().width() + SPACING for w in children if self._shown(w)}
        used = sum(widths.values())
        hide: set[QWidget] = set()
        for w in self._secondary:
            if bar.width() - used >= need:
                break
            if w in widths:
                hide.add(w)
                used -= widths[w]
        if hide == self._hidden:
            return
        self._fitting = True
        try:
            for w in self._hidden - hide:
                w.show()
            for w in hide - self._hidden:
                w.hide()
            self._hidden = hide
            texts = [w.text() for w in self.hidden if isinstance(w, QLabel) and w.text()]
            texts += [label.text() for w in self.hidden for label in w.findChildren(QLabel)
                      if label.text() and label.isVisibleTo(w)]
            bar.setToolTip("\n".join(texts))
        finally:
            self._fitting = False
