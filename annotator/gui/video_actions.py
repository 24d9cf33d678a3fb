"""File > New project from video / Add video, and the Video timeline dock of the main
window (kept here so the window only installs it)."""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QAction, QGuiApplication
from PySide6.QtWidgets import QDockWidget, QInputDialog

from annotator.domain.schema import KeypointSchema
from annotator.gui.video_panel import VideoTimeline
from annotator.io.project_file import PROJECT_SUFFIX, save_project
from annotator.io.video import VideoError, add_video_frames, new_video_project, video_path

# the main window (annotator.gui.main_window imports this module: not imported back here)
MainWindow = Any

log = logging.getLogger(__name__)

VIDEO_FILTER = "Videos (*.mp4 *.avi *.mov *.mkv *.m4v *.mpg *.mpeg *.wmv *.webm);;All files (*)"


class VideoSupport(QObject):
    """The window's video actions and its timeline dock (created on first use)."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self._timeline: VideoTimeline | None = None
        self.dock: QDockWidget | None = None
        # which project the timeline follows; weak: a closed project is never kept alive
        self._project: Callable[[], object] = lambda: None

    def install(self, file_menu: object) -> tuple[QAction, QAction]:
        w = self.window
        new = w._action(file_menu, "New project from &video...", self.new_project_dialog)
        add = w._action(file_menu, "Add v&ideo...", self.add_video_dialog)
        w.editor.image_shown.connect(self.on_image_shown)
        return new, add

    # ------------------------------------------------------------ timeline
    @property
    def timeline(self) -> VideoTimeline:
        if self._timeline is None:
            self._timeline = VideoTimeline()
            self._timeline.add_frame_wanted.connect(self.add_frame)
            self.dock = QDockWidget("Video", self.window)
            self.dock.setObjectName("video-dock")
            self.dock.setWidget(self._timeline)
            self.window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.dock)
        return self._timeline

    def on_image_shown(self, path: str) -> None:
        """Follow the shown image: its video on the timeline, at its frame."""
        project = self.window.project
        if project is None:
            return
        try:
            rec = project.image(path)
        except KeyError:
            return
        if project is not self._project() and self._timeline is not None:
            self._timeline.set_video(None)  # another project: probe its videos afresh
        self._project = weakref.ref(project)
        if rec.video is None:
            if self.dock is not None:
                self.dock.hide()
            return
        self.timeline.set_video(str(video_path(project.image_root, rec.video)), rec.frame or 0)
        assert self.dock is not None
        self.dock.show()

    def add_frame(self, video: str, frame: int) -> str | None:
        """Add ``frame`` of ``video`` to the project (if new) and show it."""
        project = self.window.project
        if project is None:
            return None
        try:
            add_video_frames(project, video, [frame])
        except VideoError as exc:
            self.window.show_message("error", "Add frame", str(exc))
            return None
        path = next(r.path for r in project.images
                    if r.video is not None and r.frame == frame
                    and str(video_path(project.image_root, r.video)) == os.path.realpath(video))
        self.window.editor.gallery.model.refresh()
        self.window.editor.show_image(path)
        return path

    # ------------------------------------------------------------- actions
    def _pick(self, video: str, n: int, method: str) -> list[int] | None:
        from annotator.jobs.frame_pick import pick_frames

        QGuiApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            return None if n <= 0 else pick_frames(video, n, method)
        finally:
            QGuiApplication.restoreOverrideCursor()

    def create_project(self, videos: list[str], schema: KeypointSchema, path: str,
                       n: int = 50, method: str = "kmeans") -> bool:
        """A new project of ``n`` frames per video picked by ``method`` (n <= 0: every
        frame), saved at ``path`` and shown."""
        w = self.window
        if not w._saved_or_confirmed():
            return False
        try:
            picked = [(v, self._pick(v, n, method)) for v in videos]
            project = new_video_project(picked, schema)
            save_project(project, path)
        except (VideoError, ValueError, OSError) as exc:
            w.show_message("error", "New project from video", str(exc))
            return False
        w.set_project(project, path)
        return True

    def add_video(self, video: str, n: int = 50, method: str = "kmeans") -> list[str]:
        """Add ``n`` frames of ``video`` (picked by ``method``; n <= 0: all) to the project."""
        w = self.window
        if w.project is None:
            return []
        try:
            added = add_video_frames(w.project, video, self._pick(video, n, method))
        except (VideoError, ValueError) as exc:
            w.show_message("error", "Add video", str(exc))
            return []
        w.editor.gallery.model.refresh()
        w.statusBar().showMessage(f"{len(added)} frame(s) of {Path(video).name} added", 8000)
        return added

    def _ask_count(self, title: str) -> tuple[int, str] | None:
        methods = ["kmeans", "uniform", "all frames"]
        method, ok = QInputDialog.getItem(self.window, title, "Pick frames by:", methods, 0,
                                          False)
        if not ok:
            return None
        if method == "all frames":
            return 0, "uniform"
        n, ok = QInputDialog.getInt(self.window, title, "Frames per video:", 50, 1, 100_000)
        return (n, method) if ok else None

    def new_project_dialog(self) -> None:
        from annotator.gui.schema_dialog import SchemaDialog
        from annotator.io.templates import load_template

        w = self.window
        video = w._ask_open_file("Video", VIDEO_FILTER)
        if not video:
            return
        choice = self._ask_count("New project from video")
        if choice is None:
            return
        try:
            start = load_template("quadruped")
        except ValueError:
            start = None
        dialog = SchemaDialog(start, w)
        if dialog.exec() != SchemaDialog.DialogCode.Accepted:
            return
        default = os.path.join(os.path.dirname(video), Path(video).stem + PROJECT_SUFFIX)
        path = w._ask_save_file("Save the new project as", default,
                                f"Projects (*{PROJECT_SUFFIX})")
        if path:
            self.create_project([video], dialog.schema, path, *choice)

    def add_video_dialog(self) -> None:
        video = self.window._ask_open_file("Add video", VIDEO_FILTER)
        if video:
            choice = self._ask_count("Add video")
            if choice is not None:
                self.add_video(video, *choice)

    def shutdown(self) -> None:
        if self._timeline is not None:
            self._timeline.shutdown()
