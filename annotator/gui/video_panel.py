"""The video timeline: a slider over every frame of the current video with a preview decoded
off the GUI thread (a thin layer over :mod:`annotator.io.video`).

:class:`FrameDecoder` owns one Python thread; :meth:`FrameDecoder.request` only records the
latest wanted frame (older pending requests are dropped, so scrubbing never queues work) and
the decoded, downscaled QImage comes back through a queued signal.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSlider, QVBoxLayout, QWidget

from annotator.gui.qimage import rgb_to_qimage
from annotator.io.images import ImageLoadError
from annotator.io.video import FrameReaders, VideoError, VideoInfo, probe

log = logging.getLogger(__name__)


class FrameDecoder(QObject):
    """Decodes the latest requested (video, frame) on its own thread."""

    frame_ready = Signal(str, int, QImage)
    failed = Signal(str, int, str)

    def __init__(self, max_side: int = 480, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.max_side = max_side
        self._cond = threading.Condition()
        self._pending: tuple[str, int] | None = None
        self._stop = False
        self.decoded = 0  # frames decoded (for tests and the status)
        self._thread = threading.Thread(target=self._run, name="frame-decoder", daemon=True)
        self._thread.start()

    def request(self, video: str, index: int) -> None:
        """Decode frame ``index`` of ``video`` next (replacing any request not started)."""
        with self._cond:
            self._pending = (str(video), int(index))
            self._cond.notify()

    def idle(self) -> bool:
        with self._cond:
            return self._pending is None

    def _run(self) -> None:
        import cv2

        readers = FrameReaders()
        try:
            while True:
                with self._cond:
                    while self._pending is None and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        return
                    video, index = self._pending  # type: ignore[misc]
                    self._pending = None
                try:
                    rgb = readers.read(video, index)
                    h, w = rgb.shape[:2]
                    scale = self.max_side / max(h, w)
                    if scale < 1:
                        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                                         interpolation=cv2.INTER_AREA)
                    image = rgb_to_qimage(rgb)
                except ImageLoadError as exc:
                    self.failed.emit(video, index, str(exc))
                    continue
                except Exception as exc:  # never let the thread die silently
                    log.exception("decoding frame %d of %s failed", index, video)
                    self.failed.emit(video, index, f"{type(exc).__name__}: {exc}")
                    continue
                self.decoded += 1
                self.frame_ready.emit(video, index, image)
        finally:
            readers.close()

    def shutdown(self, timeout_s: float = 2.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout_s)


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60.0)
    return f"{int(m)}:{s:04.1f}"


class VideoTimeline(QWidget):
    """Slider over the frames of one video, its frame number and time, and a preview.
    ``add_frame_wanted(video, frame)`` asks the window to add the shown frame to the project."""

    add_frame_wanted = Signal(str, int)

    def __init__(self, parent: QWidget | None = None, max_side: int = 480) -> None:
        super().__init__(parent)
        self.decoder = FrameDecoder(max_side, self)
        self.decoder.frame_ready.connect(self._on_frame)
        self.decoder.failed.connect(self._on_failed)
        self.video: str | None = None
        self.info: VideoInfo | None = None
        self.shown: tuple[str, int] | None = None  # the frame the preview shows
        self.preview = QLabel("no video")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setMinimumSize(160, 120)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setEnabled(False)
        self.slider.valueChanged.connect(self._on_slider)
        self.label = QLabel("-")
        self.add_button = QPushButton("Add this frame")
        self.add_button.setEnabled(False)
        self.add_button.clicked.connect(self._on_add)
        row = QHBoxLayout()
        row.addWidget(self.label, 1)
        row.addWidget(self.add_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.preview, 1)
        layout.addWidget(self.slider)
        layout.addLayout(row)

    def set_video(self, video: str | None, frame: int = 0) -> bool:
        """Show ``video`` (an absolute path; None clears) at ``frame``; False (with the
        reason shown) when the video cannot be read."""
        if video is None:
            self.video = self.info = None
            self.slider.setEnabled(False)
            self.add_button.setEnabled(False)
            self.preview.setText("no video")
            self.label.setText("-")
            return True
        if video != self.video:
            try:
                info = probe(video)
            except VideoError as exc:
                self.video, self.info = None, None
                self.slider.setEnabled(False)
                self.add_button.setEnabled(False)
                self.preview.setText(str(exc))
                self.label.setText("video unreadable")
                return False
            self.video, self.info = video, info
            self.slider.blockSignals(True)
            self.slider.setRange(0, info.n_frames - 1)
            self.slider.blockSignals(False)
            self.slider.setEnabled(True)
            self.add_button.setEnabled(True)
        self.set_frame(frame)
        return True

    def set_frame(self, frame: int) -> None:
        if self.info is None:
            return
        frame = min(max(0, int(frame)), self.info.n_frames - 1)
        if self.slider.value() == frame:
            self._on_slider(frame)
        else:
            self.slider.setValue(frame)

    def _on_slider(self, value: int) -> None:
        if self.video is None or self.info is None:
            return
        self.label.setText(f"{Path(self.video).stem}  frame {value} / {self.info.n_frames - 1}"
                           f"  {_clock(self.info.time_of(value))}")
        self.decoder.request(self.video, value)

    def _on_frame(self, video: str, index: int, image: QImage) -> None:
        if video != self.video:
            return  # a stale frame of the previous video
        self.shown = (video, index)
        self.preview.setPixmap(QPixmap.fromImage(image))

    def _on_failed(self, video: str, index: int, message: str) -> None:
        if video == self.video:
            self.preview.setText(message)

    def _on_add(self) -> None:
        if self.video is not None:
            self.add_frame_wanted.emit(self.video, self.slider.value())

    def shutdown(self) -> None:
        self.decoder.shutdown()
