"""Retraining the project's keypoint head from the GUI: Run > Retrain, an automatic retrain
a few seconds after the reviewed images change, and the "model: ..." status line.

The training itself runs on the worker thread (:meth:`WorkerController.retrain`, from a frozen
snapshot); this module only decides when, and says what the model is. It never imports torch:
what a saved head was trained on is read on the worker (:meth:`request_head_info`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QLabel

from annotator.domain import ImageStatus, Project
from annotator.gui.worker import WorkerController, too_few_message
from annotator.jobs.head_predict import MIN_TRAINING_IMAGES

log = logging.getLogger(__name__)

#: an automatic retrain starts this long after the last change to the reviewed images
RETRAIN_DELAY_MS = 3000


def is_training_image(project: Project, path: str) -> bool:
    """Whether the head learns from ``path``: reviewed or a reference, with labels (the rule
    of ``Project.reference_paths``)."""
    return (project.status(path) in (ImageStatus.REFERENCE, ImageStatus.REVIEWED)
            and project.annotation(path).has_labels)


def format_age(seconds: float) -> str:
    """"12 s", "5 min", "3 h", "2 days"."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h"
    days = s // 86400
    return f"{days} day{'s' if days != 1 else ''}"


class RetrainScheduler(QObject):
    """Keeps the project's head current and ``label`` saying what it is.

    ``message(text, manual)``: a refusal or failure to show (a dialog for a retrain the user
    asked for, the status bar for an automatic one). ``params`` (a
    ``matching.head.HeadParams``, None for its defaults) and ``delay_ms`` may be set.
    """

    message = Signal(str, bool)

    def __init__(self, controller: WorkerController, label: QLabel,
                 parent: QObject | None = None, delay_ms: int = RETRAIN_DELAY_MS,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(parent)
        self.controller = controller
        self.label = label
        self.params: Any = None
        self._clock = clock
        self._project: Project | None = None
        self._paths: set[str] = set()
        self._config: object = None  # what the saved head depends on besides the images
        self._info: dict[str, Any] | None = None
        self._pending = False  # an automatic retrain waits for the propagation to finish
        self._manual = False  # the running retrain was asked for by the user
        self.started = 0  # retrains sent (for tests and logs)
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(delay_ms)
        self.timer.timeout.connect(self._auto)
        self.ticker = QTimer(self)  # "M s ago" stays true as time passes
        self.ticker.setInterval(1000)
        self.ticker.timeout.connect(self.refresh)
        controller.trained.connect(self._on_trained)
        controller.training_started.connect(self.refresh)
        controller.training_finished.connect(self._on_training_finished)
        controller.training_error.connect(self._on_training_error)
        controller.head_info.connect(self._on_head_info)
        controller.run_finished.connect(self._on_run_finished)

    # ------------------------------------------------------------ project
    @property
    def delay_ms(self) -> int:
        return self.timer.interval()

    @delay_ms.setter
    def delay_ms(self, value: int) -> None:
        self.timer.setInterval(int(value))

    @property
    def reviewed(self) -> int:
        """Images the head can learn from now."""
        return len(self._paths)

    @property
    def info(self) -> dict[str, Any] | None:
        """What the current head was trained on ({"num_images", "saved", ...}), or None."""
        return self._info

    def attach(self, project: Project | None, refs: list[str] | None = None) -> None:
        """Follow ``project`` (None: none); reads what its saved head was trained on.
        ``refs``: its reference paths, when made already (off the GUI thread)."""
        self.timer.stop()
        self._pending = False
        self.controller.cancel_training()
        self._project, self._info = project, None
        if refs is not None:
            self._paths = set(refs)
        else:
            self._recount()
        if project is not None:
            self._config = self._head_config(project)
            self.controller.request_head_info(project)
            self.ticker.start()
        else:
            self.ticker.stop()
        self.refresh()

    def stop(self) -> None:
        self.timer.stop()
        self.ticker.stop()
        self._pending = False

    def _recount(self) -> None:
        p = self._project
        self._paths = set(p.reference_paths()) if p is not None else set()

    @staticmethod
    def _head_config(project: Project) -> object:
        return (project.schema, dataclasses.replace(project.settings, review_threshold=0.0))

    def project_changed(self, paths: frozenset[str]) -> None:
        """After every project change: a change to the reviewed images (which ones, or their
        points) schedules a retrain; settings or schema changes re-read the saved head."""
        project = self._project
        if project is None:
            return
        changed = False
        if not paths:  # the whole project (schema, settings, undo of those)
            before = set(self._paths)
            self._recount()
            changed = before != self._paths
            config = self._head_config(project)
            if config != self._config:
                self._config = config
                self._info = None
                self.controller.request_head_info(project)
                changed = True
                if not project.settings.use_head:
                    self.timer.stop()
                    self._pending = False
                    self.controller.cancel_training()
        else:
            for path in paths:
                was, now = path in self._paths, is_training_image(project, path)
                if now:
                    self._paths.add(path)
                else:
                    self._paths.discard(path)
                changed = changed or was or now
        if changed:
            self.schedule()
        self.refresh()

    # ------------------------------------------------------------ retrain
    def eligible(self) -> bool:
        """Whether an automatic retrain may run: learning on, enough reviewed images."""
        p = self._project
        return p is not None and p.settings.use_head and self.reviewed >= MIN_TRAINING_IMAGES

    def schedule(self) -> None:
        """(Re)start the debounce: a retrain runs ``delay_ms`` after the last change."""
        if self.eligible():
            self.timer.start()

    def _auto(self) -> None:
        if not self.eligible():
            return
        if self.controller.busy:  # never during a propagation: right after it
            self._pending = True
            return
        self._send(manual=False)

    def retrain(self) -> bool:
        """Run > Retrain: train now (behind a propagation in progress); returns whether a
        retrain was sent. Too few reviewed images: a message, nothing trains."""
        p = self._project
        if p is None:
            return False
        if not p.settings.use_head:
            self.message.emit("Learning from reviewed images is off: turn it on in Edit > "
                              "Settings (\"Learn from reviewed images\") to train a model.",
                              True)
            return False
        if self.reviewed < MIN_TRAINING_IMAGES:
            self.message.emit(too_few_message(self.reviewed), True)
            return False
        self._send(manual=True)
        return True

    def _send(self, manual: bool) -> None:
        assert self._project is not None
        self.timer.stop()
        self._pending = False
        self._manual = manual
        self.started += 1
        log.info("retraining the keypoint head on %d reviewed images (%s)", self.reviewed,
                 "asked" if manual else "automatic")
        self.controller.retrain(self._project, self.params)
        self.refresh()

    def _on_run_finished(self, _outcome: str) -> None:
        if self._pending:
            self._pending = False
            self._auto()

    # ------------------------------------------------------------ results
    def _on_trained(self, info: object) -> None:
        if isinstance(info, dict):
            self._info = info
            skipped = info.get("skipped") or []
            if skipped:
                self.message.emit(f"Retrained; {len(skipped)} unreadable image(s) skipped",
                                  False)

    def _on_training_finished(self, _outcome: str) -> None:
        self.refresh()

    def _on_training_error(self, kind: str, text: str) -> None:
        prefix = "" if kind == "training" else "Retrain failed: "
        self.message.emit(prefix + text, self._manual)
        self.refresh()

    def _on_head_info(self, info: object) -> None:
        if self.controller.training:
            return  # the retrain in progress tells what it trained
        self._info = info if isinstance(info, dict) else None
        self.refresh()

    # ------------------------------------------------------------ status
    def status_text(self) -> str:
        """The status line: "model: trained on N images, M s ago", "model: off", ..."""
        p = self._project
        if p is None:
            return ""
        if not p.settings.use_head:
            return "model: off"
        if self.controller.training:
            return "model: training..."
        info = self._info
        if info and info.get("num_images"):
            age = format_age(self._clock() - float(info.get("saved") or self._clock()))
            text = f"model: trained on {int(info['num_images'])} images, {age} ago"
            if self.reviewed < MIN_TRAINING_IMAGES:
                text += f" (unused: fewer than {MIN_TRAINING_IMAGES} reviewed)"
            return text
        if self.reviewed < MIN_TRAINING_IMAGES:
            return f"model: not trained (needs {MIN_TRAINING_IMAGES} reviewed images)"
        return "model: not trained yet"

    def refresh(self) -> None:
        text = self.status_text()
        if self.label.text() != text:
            self.label.setText(text)
        self.label.setVisible(bool(text))
