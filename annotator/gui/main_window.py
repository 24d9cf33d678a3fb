"""The main window: welcome page or editor, menus, propagation, saving and autosave."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QStandardPaths, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QWidget,
)

from annotator.domain import ImageAnnotation, ImageRecord, KeypointSchema, Project
from annotator.gui.editor import EditorPage
from annotator.gui.export_dialog import ExportDialog
from annotator.gui.export_job import CANCELLED, Exporter
from annotator.gui.format_import import ASKS_IMAGE_FOLDER, IMPORT_FILTER, FormatImporter
from annotator.gui.gallery import PreparedOrder, prepare_order
from annotator.gui.gc_pause import made_and_frozen
from annotator.gui.instance_view import InstanceViewControls
from annotator.gui.progress import RateEstimator
from annotator.gui.project_open import (
    BACKGROUND_OPEN_IMAGES,
    BACKGROUND_OPEN_JSON_BYTES,
    ProjectOpener,
)
from annotator.gui.recent import add_recent_project
from annotator.gui.release import drop_in_background, hold_frees, paused, start_freeing
from annotator.gui.requests import ProjectSnapshot
from annotator.gui.result_feed import BoundedFeed
from annotator.gui.retrain import RetrainScheduler
from annotator.gui.schema_dialog import SchemaDialog
from annotator.gui.settings_dialog import SettingsDialog
from annotator.gui.status_fit import StatusFit
from annotator.gui.thumbnails import ThumbnailLoader
from annotator.gui.turns import TurnSteps
from annotator.gui.video_actions import VideoSupport
from annotator.gui.welcome import WelcomePage
from annotator.gui.worker import EngineFactory, WorkerController, default_preloader
from annotator.io.autosave import Autosaver
from annotator.io.coco import CocoFormatError, ExportChoice, import_coco
from annotator.io.formats import ExportOptions, FormatError, detect_format
from annotator.io.images import list_images
from annotator.io.project_file import (
    JSON_SUFFIX,
    PROJECT_SUFFIX,
    OpenedProject,
    ProjectFileError,
    ProjectPreview,
    backup_path,
    is_json_path,
    load_project,
    new_project,
    open_project_file,
    read_annotation,
    save_json_copy,
    save_project,
    store_path_for,
)
from annotator.io.store import ProjectStore, StoreError, is_store, remove_sidecars
from annotator.io.templates import load_template
from annotator.io.video import ImageSource

log = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parents[2] / "resources" / "demo"
PROJECT_FILTER = (f"Annotator projects (*{PROJECT_SUFFIX} *{JSON_SUFFIX});;"
                  "All files (*)")
JSON_FILTER = f"JSON project copy (*{JSON_SUFFIX})"
#: a closed project at least this big is freed on a background thread
DROP_IN_BACKGROUND_IMAGES = 5000


def review_category(ann: ImageAnnotation, threshold: float) -> int:
    """1: reviewed or reference; 2: predicted below the review threshold; else 0."""
    from annotator.domain import ImageStatus

    if ann.status in (ImageStatus.REVIEWED, ImageStatus.REFERENCE):
        return 1
    if ann.status == ImageStatus.PREDICTED:
        conf = ann.worst_confidence()
        if conf is None or conf < threshold:
            return 2
    return 0


def count_categories(counts: dict[str, int]) -> tuple[int, int]:
    """(done, need review) over :func:`review_categories`' result."""
    values = list(counts.values())
    return values.count(1), values.count(2)


def review_categories(project: Project) -> dict[str, int]:
    """Path -> review category (:func:`review_category`) of every image that has one."""
    threshold = project.settings.review_threshold
    out = {}
    for path, ann in project.annotations().items():
        cat = review_category(ann, threshold)
        if cat:
            out[path] = cat
    return out


@dataclass(frozen=True)
class OpenPrep:
    """What the window shows of a project read in the background, made on the pool thread
    (at 100,000 images each would stall the GUI thread for a tenth of a second or more):
    review categories (:func:`review_categories`), reference paths, gallery rows, and the
    images found in the image folder that the project does not list yet (``None``: not
    looked for)."""

    counts: dict[str, int]
    order: PreparedOrder
    refs: list[str] | None = None
    new_images: list[str] | None = None
    #: the image list of the store, when ``new_images`` were added to the project already
    stored_images: tuple[ImageRecord, ...] | None = None
    #: :func:`count_categories` of ``counts`` (None: counted on the GUI thread)
    counted: tuple[int, int] | None = None


def prepare_preview(preview: ProjectPreview) -> OpenPrep:
    """:class:`OpenPrep` of a project still loading, from the store's summary rows."""
    from annotator.domain import ImageStatus

    threshold = preview.project.settings.review_threshold
    counts = {}
    for path, (status, worst) in preview.summary.items():
        if status in (ImageStatus.REVIEWED, ImageStatus.REFERENCE):
            counts[path] = 1
        elif status == ImageStatus.PREDICTED and (worst is None or worst < threshold):
            counts[path] = 2
    # no annotation read yet: no reference
    return OpenPrep(counts, prepare_order(preview.project), [],
                    counted=count_categories(counts))


def prepare_open(opened: OpenedProject, previewed: object = None) -> OpenPrep:
    """:class:`OpenPrep` of a project just loaded (on the loader's pool thread). The images
    found in its folder since are added here, while no listener follows the project yet:
    on the GUI thread a whole-project change would recount 10^5 images. ``previewed``: the
    :class:`OpenPrep` of its preview (its gallery rows stay when they are the same)."""
    project = opened.project
    stored = project.images
    found = _new_images(project, opened.path)
    if found:
        records = [ImageRecord(p) for p in found]  # any error before the project changes
        found = project.add_images(records)
    counts = review_categories(project)
    like = previewed.order if isinstance(previewed, OpenPrep) else None
    return OpenPrep(counts, prepare_order(project, like), project.reference_paths(), found,
                    stored if found else None, count_categories(counts))


def _new_images(project: Project, path: Path) -> list[str] | None:
    """Images in the image folder that ``project`` does not list, outside the folders the
    application exported to (recorded in the store at ``path``); None when the folder
    cannot be listed (the rescan then reports it)."""
    if not os.path.isdir(project.image_root):
        return None
    try:
        found = list_images(project.image_root)
    except (OSError, ValueError):
        return None
    skip: list[str] = []
    if is_store(path):
        try:
            store = ProjectStore(path, readonly=True)
            try:
                dirs = store.meta("exported_dirs", [])
            finally:
                store.close()
            skip = [d for d in dirs if isinstance(d, str)] if isinstance(dirs, list) else []
        except (StoreError, sqlite3.Error):
            pass
    known = {r.path for r in project.images}
    return [p for p in found if p not in known
            and not any(p.startswith(d.rstrip("/") + "/") for d in skip)]


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


class MainWindow(QMainWindow):
    """One window; ``engine_factory`` is injected by tests (default: the real engine).

    ``isolated=True`` (benchmarks, scripted use) leaves the user's state alone: no recent-files
    list is read or written (QSettings) and no autosaver is created, whatever path a project
    is shown with. See :mod:`annotator.bench.gui_support`.
    """

    #: a propagation or detection run is over for the user: its results are all applied
    #: (or dropped by a second Cancel) and its progress is hidden; the outcome
    run_ended = Signal(str)

    def __init__(
        self,
        engine_factory: EngineFactory | None = None,
        autosave_delay_s: float = 2.0,
        parent: QWidget | None = None,
        *,
        isolated: bool = False,
        preload_models: bool | None = None,
    ) -> None:
        super().__init__(parent)
        self.isolated = isolated
        self.setWindowTitle("Keypoint-transfer annotator")
        self.resize(1400, 860)
        self.project: Project | None = None
        self.project_path: str | None = None
        self.autosaver: Autosaver | None = None
        self._autosave_delay = autosave_delay_s
        self._unsubscribe: Callable[[], None] | None = None
        #: predictions received, applied a bounded slice per flush tick (gui.result_feed)
        self._pending: BoundedFeed[Any] = BoundedFeed(self._apply_predictions)
        #: every annotation as the run started (the snapshot the worker was sent: one copy)
        #: and, over it, what the run applied since: an image whose annotation is neither
        #: was edited by the user during the run, and its predictions are dropped
        self._baseline: Mapping[str, ImageAnnotation] = {}
        self._applied: dict[str, ImageAnnotation] = {}
        self._rate: RateEstimator | None = None
        #: the outcome of a run whose worker is done while its backlog is still applied
        self._finishing: str | None = None
        self._unreadable_in_run = 0
        self._reference_dock_decided = False
        self._shut_down = False
        self._backups: list[threading.Thread] = []  # backups, store closes after a close
        # a close's last steps (the closed project's views and caches), over the next turns
        self._closing = TurnSteps(self)
        self.messages: list[tuple[str, str, str]] = []  # (level, title, text), for tests
        self._recovered = 0  # journaled edits recovered when the project was opened
        self._counts: dict[str, int] = {}  # path -> 1 reviewed/reference, 2 needs review
        self._counted: tuple[int, int] = (0, 0)  # (done, need) over self._counts
        self._counts_stale = True  # recount at the next review_counts()
        self._manual_save = False  # a Ctrl+S save is running in the background

        self.loader = ThumbnailLoader(parent=self)
        self.exporter = Exporter(self)  # Export COCO and Export as, one at a time
        self.importer = FormatImporter(self)
        start_freeing()  # closes and opens hand to it; a thread start costs them 2-4 ms
        self.opener = ProjectOpener(self)
        self.opener.progress.connect(self._on_open_progress)
        self.opener.previewed.connect(self._on_open_preview)
        self.opener.finished.connect(self._on_open_finished)
        #: the store whose gallery is shown while its annotations load (read-only)
        self.loading_path: str | None = None
        self._preview_store: ProjectStore | None = None
        self._preview_read: set[str] = set()
        self._open_next: str | None = None
        #: stores with at least this many images open on a pool thread
        self.background_open_images = BACKGROUND_OPEN_IMAGES
        #: JSON projects (previous versions) of at least this many bytes migrate on a pool
        #: thread
        self.background_open_json_bytes = BACKGROUND_OPEN_JSON_BYTES
        self._export_choice: ExportChoice | None = None
        self._export_format = "coco"  # the format Export as... offers first
        # the model stack is imported in GIL-friendly steps on the worker: at idle once a
        # project is open when preload_models (default: with the real engine only; tests
        # inject light engines), and always before the real engine is first built
        self.preload_models = engine_factory is None if preload_models is None else preload_models
        self.controller = WorkerController(
            engine_factory, self,
            preloader=default_preloader if self.preload_models or engine_factory is None
            else None,
        )
        self.preload_timer = QTimer(self)
        self.preload_timer.setSingleShot(True)
        self.preload_timer.setInterval(3000)
        self.preload_timer.timeout.connect(self.controller.preload)
        self.welcome = WelcomePage(show_recent=not isolated)
        self.editor = EditorPage(self.loader)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.welcome)
        self.stack.addWidget(self.editor)
        self.setCentralWidget(self.stack)
        self.reference_dock = QDockWidget("Reference", self)
        self.reference_dock.setObjectName("reference-dock")
        self.reference_dock.setWidget(self.editor.reference_pane)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.reference_dock)
        self.reference_dock.hide()  # shown with a project, in a window wide enough for it
        self._build_status_bar()
        self._build_actions()
        self._connect()

        self.autosave_timer = QTimer(self)
        self.autosave_timer.setInterval(500)
        self.autosave_timer.timeout.connect(self._autosave_tick)
        if not isolated:
            self.autosave_timer.start()
        self.counts_timer = QTimer(self)
        self.counts_timer.setSingleShot(True)
        self.counts_timer.setInterval(250)
        self.counts_timer.timeout.connect(self._update_counts)
        self.flush_timer = QTimer(self)
        self.flush_timer.setInterval(250)
        self.flush_timer.timeout.connect(self._flush_tick)
        self.catch_up_timer = QTimer(self)  # a backlog: the next slice soon, input first
        self.catch_up_timer.setSingleShot(True)
        self.catch_up_timer.setInterval(15)
        self.catch_up_timer.timeout.connect(self._flush_tick)
        self._update_actions()

    # ---------------------------------------------------------------- layout
    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.progress_bar = QProgressBar()
        self.progress_bar.setMaximumWidth(220)
        self.progress_label = QLabel()
        self.cancel_button = QPushButton("Cancel")
        self.device_label = QLabel("device: -")
        self.model_label = QLabel("models: not loaded")
        self.cache_label = QLabel("cache: -")
        self.head_label = QLabel()  # "model: trained on N images, M s ago" (gui.retrain)
        self.head_label.setToolTip("The keypoint model learnt from your reviewed images "
                                   "(Run > Retrain; Edit > Settings turns it off)")
        self.review_label = QLabel()
        self.zoom_label = QLabel()
        bar.addPermanentWidget(self.review_label)
        bar.addPermanentWidget(self.zoom_label)
        self.export_bar = QProgressBar()
        self.export_bar.setMaximumWidth(120)
        self.export_bar.setFormat("export %p%")
        self.export_cancel = QPushButton("Cancel export")
        self.export_cancel.clicked.connect(self.cancel_export)
        for w in (self.export_bar, self.export_cancel):
            bar.addPermanentWidget(w)
            w.hide()
        self.open_bar = QProgressBar()
        self.open_bar.setMaximumWidth(160)
        self.open_bar.setRange(0, 1000)
        self.open_bar.setFormat("opening %p%")
        self.open_cancel = QPushButton("Cancel opening")
        self.open_cancel.clicked.connect(self.cancel_open)
        for w in (self.open_bar, self.open_cancel):
            bar.addPermanentWidget(w)
            w.hide()
        for w in (self.progress_bar, self.progress_label, self.cancel_button):
            bar.addPermanentWidget(w)
            w.hide()
        self.head_box = QWidget()  # the retrainer shows head_label; the status fit this box
        head_row = QHBoxLayout(self.head_box)
        head_row.setContentsMargins(0, 0, 0, 0)
        head_row.addWidget(self.head_label)
        for w in (self.head_box, self.device_label, self.model_label, self.cache_label):
            bar.addPermanentWidget(w)
        self.head_label.hide()
        # a narrow window: these give way to the message, least important first
        self.status_fit = StatusFit(bar, (self.cache_label, self.device_label,
                                          self.model_label, self.head_box))
        self.retrainer = RetrainScheduler(self.controller, self.head_label, self)
        self.cancel_button.clicked.connect(self.cancel_propagation)

    def _action(
        self, menu: Any, text: str, slot: Callable[[], Any], keys: tuple[Any, ...] = ()
    ) -> QAction:
        action = QAction(text, self)
        if keys:
            action.setShortcuts([QKeySequence(k) for k in keys])
        action.triggered.connect(lambda _=False: slot())
        menu.addAction(action)
        self.addAction(action)  # shortcuts work whichever widget has focus
        return action

    def _build_actions(self) -> None:
        K = QKeySequence.StandardKey
        m = self.menuBar().addMenu("&File")
        self.act_new = self._action(m, "&New project...", self.new_project_dialog, (K.New,))
        self.act_open = self._action(m, "&Open project...", self.open_project_dialog, (K.Open,))
        self.act_import = self._action(m, "&Import...", self.import_dataset_dialog)
        self.act_demo = self._action(m, "Open &demo project", self.open_demo)
        self.act_rescan = self._action(m, "&Rescan image folder", self.rescan_images)
        self.video = VideoSupport(self)
        self.act_new_video, self.act_add_video = self.video.install(m)
        m.addSeparator()
        self.act_save = self._action(m, "&Save", self.save, (K.Save,))
        self.act_save_as = self._action(m, "Save &as...", self.save_as_dialog, ("Ctrl+Shift+S",))
        self.act_save_json = self._action(m, "Save a copy as &JSON...", self.save_json_dialog)
        self.act_export = self._action(m, "&Export COCO...", self.export_coco_dialog, ("Ctrl+E",))
        self.act_export_as = self._action(m, "Export &as...", self.export_as_dialog)
        m.addSeparator()
        self.act_close_project = self._action(m, "&Close project", self.close_project)
        self._action(m, "&Quit", self.close, (K.Quit,))

        m = self.menuBar().addMenu("&Edit")
        self.act_undo = self._action(m, "&Undo", self.undo, ("Ctrl+Z",))
        self.act_redo = self._action(m, "&Redo", self.redo, ("Ctrl+Shift+Z", "Ctrl+Y"))
        m.addSeparator()
        self.act_schema = self._action(m, "Keypoint &schema...", self.edit_schema)
        self.act_settings = self._action(m, "Se&ttings...", self.edit_settings)

        m = self.menuBar().addMenu("&Image")
        e = self.editor
        self.act_accept = self._action(m, "&Accept (mark reviewed)", e.accept_image,
                                       ("A", "Ctrl+Return"))
        self.act_next = self._action(m, "&Next image", lambda: e.step_image(1), ("PgDown", "."))
        self.act_prev = self._action(m, "&Previous image", lambda: e.step_image(-1),
                                     ("PgUp", ","))
        self.act_next_kp = self._action(m, "Next &keypoint", lambda: e.step_keypoint(1), ("]",))
        self.act_prev_kp = self._action(m, "Previous keypoint", lambda: e.step_keypoint(-1),
                                        ("[",))
        self.act_reference = self._action(m, "Use as &reference", e.make_reference, ("M",))
        self.act_replace = self._action(m, "Re-place keypoint at next click", e.arm_replace,
                                        ("R",))
        m.addSeparator()
        self.act_v2 = self._action(m, "Visible (v=2)", lambda: e.set_visibility(2), ("2",))
        self.act_v1 = self._action(m, "Occluded (v=1)", lambda: e.set_visibility(1), ("1",))
        self.act_v0 = self._action(m, "Delete keypoint (v=0) / box in box mode",
                                   e.delete_selected, ("0", "Del", "Backspace"))
        m.addSeparator()
        self.act_fit = self._action(m, "&Fit to window", e.canvas.fit, ("F",))
        self.act_heatmap = self._action(
            m, "Similarity &heatmap", lambda: e.heatmap_box.toggle(), ("H",)
        )
        self.act_reference_pane = self.reference_dock.toggleViewAction()
        self.act_reference_pane.setText("Reference &pane")
        self.act_reference_pane.setShortcut(QKeySequence("V"))
        m.addAction(self.act_reference_pane)
        self.addAction(self.act_reference_pane)
        m.addSeparator()
        self.act_box_tool = self._action(m, "&Box tool", lambda: None, ("B",))
        self.act_box_tool.setCheckable(True)
        self.act_box_tool.toggled.connect(e.canvas.set_box_mode)
        self.act_add_instance = self._action(m, "Add &instance", e.add_instance, ("I",))
        self.act_delete_instance = self._action(m, "Delete instance", e.delete_instance,
                                                ("Shift+Del",))
        toolbar = self.addToolBar("Tools")
        toolbar.setObjectName("tools")
        toolbar.addAction(self.act_box_tool)
        toolbar.addAction(self.act_add_instance)
        self.instance_view = InstanceViewControls(e, m, toolbar)  # hide the clutter

        m = self.menuBar().addMenu("&Run")
        self.act_propagate = self._action(m, "&Propagate", self.propagate, ("Ctrl+R", "F5"))
        self.act_detect = self._action(m, "&Detect boxes", self.detect_boxes, ("Ctrl+D",))
        self.act_retrain = self._action(m, "Re&train model", self.retrain_model,
                                        ("Ctrl+Shift+R",))
        self.act_cancel = self._action(m, "&Cancel", self.cancel_propagation, ("Esc",))

        m = self.menuBar().addMenu("&Help")
        self.act_shortcuts = self._action(m, "&Keyboard shortcuts", self.show_shortcuts,
                                          ("F1",))
        self.act_models_note = self._action(m, "About the &models", self.show_models_note)
        self.project_actions = [
            self.act_detect, self.act_box_tool, self.act_add_instance, self.act_delete_instance,
            self.act_save, self.act_save_as, self.act_save_json, self.act_export,
            self.act_close_project,
            self.act_schema, self.act_settings, self.act_accept, self.act_next, self.act_prev,
            self.act_next_kp, self.act_prev_kp, self.act_v0, self.act_v1, self.act_v2,
            self.act_fit, self.act_heatmap, self.act_propagate, self.act_reference,
            self.act_rescan,
            self.act_replace, self.act_retrain,
        ]
        self.project_actions.append(self.act_export_as)
        self.project_actions.append(self.act_add_video)

    def _connect(self) -> None:
        w = self.welcome
        w.new_button.clicked.connect(self.new_project_dialog)
        w.open_button.clicked.connect(self.open_project_dialog)
        w.import_button.clicked.connect(self.import_dataset_dialog)
        w.demo_button.clicked.connect(self.open_demo)
        w.recent_chosen.connect(self.open_project)
        self.editor.propagate_button.clicked.connect(lambda _=False: self.propagate())
        self.editor.message.connect(lambda text: self.statusBar().showMessage(text, 5000))
        self.editor.heatmap_wanted.connect(self._on_heatmap_wanted)
        self.editor.heatmap_cleared.connect(self.controller.cancel_heatmap)
        self.editor.canvas.zoom_changed.connect(
            lambda scale: self.zoom_label.setText(f"zoom {scale * 100:.0f} %"))
        self.exporter.progress.connect(self._on_export_progress)
        self.exporter.finished.connect(self._on_export_finished)
        self.importer.finished.connect(self._on_import_finished)
        c = self.controller
        c.run_progress.connect(self._on_progress)
        c.prediction_ready.connect(self._on_prediction)
        c.run_finished.connect(self._on_run_finished)
        c.error.connect(self._on_worker_error)
        c.heatmap_ready.connect(self.editor.set_heatmap)
        c.model_state.connect(self._on_model_state)
        c.cache_usage.connect(self._on_cache_usage)
        self.retrainer.message.connect(self._on_retrain_message)

    # -------------------------------------------------------------- messages
    def show_message(self, level: str, title: str, text: str) -> None:
        """A message box (``level``: info, warning, error); recorded for tests."""
        self.messages.append((level, title, text))
        log.log(logging.ERROR if level == "error" else logging.INFO, "%s: %s", title, text)
        box = {"info": QMessageBox.information, "warning": QMessageBox.warning,
               "error": QMessageBox.critical}[level]
        box(self, title, text)

    def _ask_existing_dir(self, title: str, start: str = "") -> str:
        return QFileDialog.getExistingDirectory(self, title, start)

    def _ask_open_file(self, title: str, filters: str) -> str:
        return QFileDialog.getOpenFileName(self, title, "", filters)[0]

    def _ask_save_file(self, title: str, start: str, filters: str) -> str:
        return QFileDialog.getSaveFileName(self, title, start, filters)[0]

    # -------------------------------------------------------------- projects
    @property
    def loading(self) -> bool:
        """Whether the project on show is a big store whose annotations are still loading
        (browsing only: edits, propagation and exports wait for the full load)."""
        return self.loading_path is not None

    @property
    def closing(self) -> bool:
        """Whether a close's last steps (the closed project's gallery and image caches put
        away, over the turns after the welcome page is on show) are still to run."""
        return bool(self._closing.pending)

    def set_project(self, project: Project | None, path: str | None, *,
                    prep: OpenPrep | None = None, preview: ProjectPreview | None = None,
                    keep: str | None = None) -> None:
        """Show ``project`` (saved at ``path``); None returns to the welcome page.
        ``prep``: what was made for it off the GUI thread; ``preview``: the project is the
        preview of the store being opened (shown read-only until the full load arrives);
        ``keep``: the image to stay on."""
        # what it drops (the old gallery's rows, the old project) is freed once it is done:
        # a free sharing the GIL with it made a close take twice as long (90-150 ms)
        with paused():
            self._set_project(project, path, prep=prep, preview=preview, keep=keep)

    def _set_project(self, project: Project | None, path: str | None, *,
                     prep: OpenPrep | None, preview: ProjectPreview | None,
                     keep: str | None) -> None:
        if self.opener.busy and preview is None:
            self.cancel_open()  # another project was shown meanwhile (or none): it stays
        self._detach_project()
        old, self.project, self.project_path = self.project, project, path
        # the undo steps refer to the project: a reference cycle, which the collector never
        # frees once a big project was frozen after loading; freed with the project below
        steps = old.history.take() if old is not None else []
        self._counts_stale = True
        if project is not None and prep is not None:
            self.set_review_counts(prep.counts, prep.counted)
        loading = preview is not None
        if preview is not None:
            self.loading_path = str(preview.path)
            try:
                self._preview_store = ProjectStore(preview.path, readonly=True)
            except StoreError:  # the points show once loaded; the full load reports it
                log.info("cannot read %s while it loads", preview.path, exc_info=True)
        self.editor.read_only = loading
        self.editor.before_show = self._read_preview_annotation if loading else None
        # before the editor shows an image: reading its annotation is a project change
        self.retrainer.attach(None if loading else project, prep.refs if prep else None)
        if project is not None:
            self.loader.set_root(project.image_root, ImageSource.live(project))
            self._unsubscribe = project.subscribe(self._on_project_changed)
            if path and not self.isolated:
                self.attach_autosaver(path, dirty=self._recovered > 0,
                                      stored_images=prep.stored_images if prep else None)
                # a settings file read and written (4 ms): after the project is on show
                QTimer.singleShot(0, lambda p=path: add_recent_project(p))
            self.editor.set_project(project, refs=prep.refs if prep else None,
                                    summary=preview.summary if preview else None,
                                    order=prep.order if prep else None, keep=keep,
                                    show_later=loading)
            self._closing.drop()  # a close's last steps: what they would clear is replaced
            self.stack.setCurrentWidget(self.editor)
            if self.width() >= 1280 and not self._reference_dock_decided:
                self.reference_dock.show()
            self._reference_dock_decided = True
            if self.preload_models and not self.isolated and not loading:
                self.preload_timer.start()
            self.device_label.setText(f"device: {project.settings.device}")
        else:
            self.reference_dock.hide()
            self._reference_dock_decided = False
            self.welcome.refresh()
            self.stack.setCurrentWidget(self.welcome)
            self.editor.quiesce()
            # the closed project's gallery, image and thumbnail caches go over the next
            # turns, one per turn (each 1 ms at 100,000 images, but ten times that when the
            # machine slows the GUI thread down: together they stalled a close 50-90 ms);
            # the frees wait until they are done
            self._closing.start((lambda: self.editor.set_project(None),
                                 lambda: self.loader.set_root("")),
                                then=hold_frees().release)
        self._update_title()
        self._update_actions()
        self._update_counts()
        if old is not None and old is not project and len(old) >= DROP_IN_BACKGROUND_IMAGES:
            drop_in_background(old, steps=steps)  # a propagation's step: 30 ms to free

    def _detach_project(self, wait_backup: bool = False) -> None:
        """Stop editing the open project: its run cancelled, its edits saved. The store's
        backup copy, if still being made, finishes on its own thread (``wait_backup``: it is
        waited for, as when the application quits)."""
        self.loading_path = None
        self._preview_read = set()
        if self._preview_store is not None:
            self._preview_store.close()
            self._preview_store = None
        if self.controller.busy:
            self.controller.cancel()
        self.flush_predictions()
        if self.autosaver is not None:
            try:
                self.autosaver.close(wait_backup)
            except OSError as exc:
                self.show_message("error", "Autosave failed", str(exc))
            # a backup copy and the store's close finish on their own threads; waited for
            # when the application quits
            self._backups = [t for t in self._backups if t.is_alive()]
            self._backups.extend(self.autosaver.threads_left())
            self.autosaver = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def close_project(self) -> None:
        if self._saved_or_confirmed():
            self.set_project(None, None)

    def _is_open(self, path: str) -> bool:
        try:
            return bool(self.project_path) and os.path.samefile(path, self.project_path or "")
        except OSError:
            return False

    def new_project(self, image_root: str, schema: KeypointSchema, path: str) -> Project | None:
        """Create a project over the images under ``image_root`` and save it at ``path``."""
        if not self._saved_or_confirmed():
            return None
        path = self._store_path(path)
        try:
            project = new_project(image_root, schema)
        except (OSError, ValueError) as exc:
            self.show_message("error", "New project", str(exc))
            return None
        if not len(project):
            self.show_message("error", "New project", f"No images found under {image_root}")
            return None
        try:
            save_project(project, path)
        except OSError as exc:
            self.show_message("error", "New project", f"Cannot save {path}: {exc}")
            return None
        self.set_project(project, path)
        return project

    @staticmethod
    def _store_path(path: str) -> str:
        """Projects are edited in a store: a ``.json`` name becomes ``.kpproj``."""
        return str(store_path_for(path)) if is_json_path(path) else path

    def new_project_dialog(self) -> None:
        root = self._ask_existing_dir("Image folder")
        if not root:
            return
        try:
            start = load_template("person")
        except ValueError:
            start = None
        dialog = SchemaDialog(start, self)
        if dialog.exec() != SchemaDialog.DialogCode.Accepted:
            return
        # beside the image folder, not in it: nothing the application writes lands among
        # the images
        folder = Path(root).resolve()
        default = str(folder.parent / (folder.name + PROJECT_SUFFIX))
        path = self._ask_save_file("Save the new project as", default, PROJECT_FILTER)
        if path:
            self.new_project(root, dialog.schema, path)

    def _opens_in_background(self, path: str) -> bool:
        """A store, or a JSON project of a previous version (read and migrated to a
        store), big enough to be read on a pool thread."""
        if not is_store(path):
            try:
                return (os.path.isfile(path)
                        and os.path.getsize(path) >= self.background_open_json_bytes)
            except OSError:
                return False  # the synchronous open reports it
        try:
            store = ProjectStore(path, readonly=True)
        except StoreError:
            return False  # the synchronous open reports it (and offers the backup)
        try:
            return store.image_count() >= self.background_open_images
        except sqlite3.Error:
            return False
        finally:
            store.close()

    def open_project(self, path: str) -> Project | None:
        """Open the project at ``path``. A big store is read on a pool thread: the window
        stays responsive with a progress bar and a Cancel button, and the project shows when
        it is loaded (``opener.finished``); None is returned then."""
        if self.project is not None and self._is_open(path):
            return self.project  # already open: the file on disk may be older than the edits
        if (self.opener.busy and self.opener.path == path and not self.opener.cancelled
                and self._open_next is None):
            return None  # being opened already
        if self.opener.busy:
            self.opener.cancel()  # the latest request wins
            self._open_next = path
            return None
        if not self._saved_or_confirmed():
            return None
        if self._opens_in_background(path):
            self.set_project(None, None)
            self.opener.start(path, prepare_open, prepare_preview if is_store(path) else None)
            self.open_bar.setFormat("opening %p%")
            self.open_bar.setValue(0)
            self.open_bar.show()
            self.open_cancel.show()
            self.statusBar().showMessage(f"Opening {os.path.basename(path)}...")
            self._update_actions()
            return None
        note = ""
        try:
            opened = open_project_file(path)
            project, self._recovered = opened.project, opened.recovered
            if opened.migrated_from is not None:
                note = (f"Opened {opened.path.name}, the new project file made from "
                        f"{opened.migrated_from.name} (kept unchanged as a backup)")
            path = str(opened.path)
        except ProjectFileError as exc:
            self._recovered = 0
            restored = self._restore_from_backup(path, exc)
            if restored is None:
                return None
            project, note = restored
        return self._show_opened(project, path, note)

    def _on_open_progress(self, path: str, permille: int) -> None:
        self.open_bar.setValue(permille)

    def _on_open_preview(self, preview: ProjectPreview, prep: OpenPrep, path: str) -> None:
        """The gallery of the store being opened, before its annotations: browsing (images,
        statuses, worst confidences, the current image with its points) while the full
        load goes on; edits wait for it (nothing can be lost: nothing is edited)."""
        if self._shut_down or self._open_next is not None or self.project is not None:
            return
        self.set_project(preview.project, None, prep=prep, preview=preview)
        self.open_bar.setFormat("loading annotations %p%")
        self.statusBar().showMessage(
            f"{os.path.basename(path)}: {len(preview.project):,} images shown; the "
            "annotations are loading (editing, propagation and export start when they have "
            "loaded)")
        self._update_title()
        self._update_actions()

    def _read_preview_annotation(self, path: str) -> None:
        """Before a project still loading shows ``path``: read its annotation from the
        store (milliseconds), so the user sees its points."""
        store, project = self._preview_store, self.project
        if store is None or project is None or path in self._preview_read:
            return
        self._preview_read.add(path)
        try:
            ann = read_annotation(store, path)
        except ProjectFileError as exc:
            log.warning("cannot show the annotation of %s yet: %s", path, exc)
            return
        self.editor.gallery.model.annotation_loaded(path)
        if ann != project.annotation(path):
            project.set_annotations({path: ann}, "Read")
            project.history.clear()  # read, not edited: nothing to undo

    def cancel_open(self) -> None:
        """Stop a background open (the welcome page stays)."""
        self._open_next = None
        self.opener.cancel()

    def _on_open_finished(self, opened: OpenedProject | None, error: str, path: str) -> None:
        self.open_bar.hide()
        self.open_cancel.hide()
        self.statusBar().clearMessage()
        keep = self.editor.current_path if self.loading else None
        if self.loading and (opened is None or self._open_next is not None):
            self.set_project(None, None)  # the preview goes with its load
        nxt, self._open_next = self._open_next, None
        if nxt is not None:  # another project was asked for meanwhile
            self.open_project(nxt)
            return
        if self._shut_down:
            return
        if opened is None:
            if error:
                restored = self._restore_from_backup(path, ProjectFileError(error))
                if restored is not None:
                    self._show_opened(restored[0], path, restored[1])
            else:
                self.statusBar().showMessage(f"Opening {os.path.basename(path)} cancelled",
                                             8000)
            self._update_actions()
            return
        self._recovered = opened.recovered
        note = ""
        if opened.migrated_from is not None:
            note = (f"Opened {opened.path.name}, the new project file made from "
                    f"{opened.migrated_from.name} (kept unchanged as a backup)")
        prep = self.opener.counts if isinstance(self.opener.counts, OpenPrep) else None
        self._show_opened(opened.project, str(opened.path), note, prep, keep)

    def _show_opened(self, project: Project, path: str, note: str,
                     prep: OpenPrep | None = None, keep: str | None = None) -> Project:
        """Show a project just read, with one status message saying what happened
        (``prep``: what was made for it off the GUI thread; ``keep``: the image to stay
        on)."""
        if not os.path.isdir(project.image_root):
            self.show_message("warning", "Open project",
                              f"The image folder {project.image_root} is missing; images will "
                              "show as unreadable.")
        try:
            self.set_project(project, path, prep=prep, keep=keep)
        finally:
            recovered, self._recovered = self._recovered, 0
        if recovered:
            note = "; ".join(filter(None, [
                note, f"recovered {recovered} unsaved edit(s) from the edit journal"]))
        if prep is not None:  # found (and added) off the GUI thread
            added = prep.new_images or []
        else:
            added = self.rescan_images(quiet=True, show=False) \
                if os.path.isdir(project.image_root) else []
        if added:
            found = f"{len(added)} new image(s) found in {project.image_root}"
            note = f"{note}; {found}" if note else found
        if note:  # one message: what happened on open is never replaced at once
            self.statusBar().showMessage(note, 15_000)
        return project

    def rescan_images(self, quiet: bool = False, show: bool = True) -> list[str]:
        """Add the images put into the image folder since the project was made (never in a
        folder the application exported to); returns their paths. ``quiet``: say nothing
        when there are none (on open); ``show``: False leaves the status bar to the
        caller."""
        if self.project is None or self.loading:
            return []
        try:
            found = list_images(self.project.image_root)
        except (OSError, ValueError) as exc:
            if not quiet:
                self.show_message("warning", "Rescan image folder", str(exc))
            return []
        skip = self.autosaver.exported_dirs() if self.autosaver is not None else []
        found = [p for p in found if not any(p.startswith(d.rstrip("/") + "/") for d in skip)]
        added = self.project.add_images(ImageRecord(p) for p in found)
        if show and (added or not quiet):
            self.statusBar().showMessage(
                f"{len(added)} new image(s) found in {self.project.image_root}"
                if added else "No new images in the image folder", 8000)
        if added:
            self.editor.gallery.model.refresh()
        return added

    def _ask_yes_no(self, title: str, text: str) -> bool:
        buttons = QMessageBox.StandardButton
        answer = QMessageBox.question(self, title, text, buttons.Yes | buttons.No, buttons.Yes)
        return answer == buttons.Yes

    def _restore_from_backup(self, path: str,
                             error: Exception) -> tuple[Project, str] | None:
        """``path`` cannot be read: offer its previous version (``path~``). The unreadable
        file is kept beside it (``.unreadable-<time>``), so nothing is lost either way."""
        backup = backup_path(path)
        try:
            load_project(backup)
            usable = True
        except (ProjectFileError, OSError):
            usable = False
        if not usable:
            self.show_message("error", "Open project", str(error))
            return None
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(backup)))
        if not self._ask_yes_no(
            "Open project",
            f"{error}\n\nThe previous version of this project ({backup.name}, saved {when}) "
            "can be read. Restore it? The unreadable file is kept beside it.",
        ):
            return None
        aside = f"{path}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            if os.path.exists(path):
                shutil.copy2(path, aside)
            remove_sidecars(Path(path))  # the damaged file's write-ahead log must not apply
            shutil.copy2(backup, path)
            project = load_project(path)
        except (OSError, ProjectFileError) as exc:
            self.show_message("error", "Open project", f"Cannot restore {backup}: {exc}")
            return None
        return project, (f"Restored {os.path.basename(path)} from {backup.name}; the "
                         f"unreadable file is {os.path.basename(aside)}")

    def open_project_dialog(self) -> None:
        path = self._ask_open_file("Open project", PROJECT_FILTER)
        if path:
            self.open_project(path)

    def import_coco(self, json_path: str, image_root: str, path: str) -> Project | None:
        if not self._saved_or_confirmed():
            return None
        path = self._store_path(path)
        try:
            project = import_coco(json_path, image_root)
            save_project(project, path)
        except (CocoFormatError, OSError, ValueError) as exc:
            self.show_message("error", "Import COCO", str(exc))
            return None
        self.set_project(project, path)
        return project

    def import_coco_dialog(self) -> None:
        json_path = self._ask_open_file("COCO keypoints file", "COCO JSON (*.json);;All (*)")
        if not json_path:
            return
        root = self._ask_existing_dir("Image folder of that file", os.path.dirname(json_path))
        if not root:
            return
        default = os.path.splitext(json_path)[0] + PROJECT_SUFFIX
        path = self._ask_save_file("Save the imported project as", default, PROJECT_FILTER)
        if path:
            self.import_coco(json_path, root, path)

    def import_dataset(self, source: str, image_root: str | None, path: str) -> bool:
        """Import ``source`` in any format ``annotator convert`` reads into a new project
        saved at ``path``, on a pool thread (``importer.finished`` follows); errors are
        shown. Returns whether the import started."""
        if self.importer.busy:
            self.show_message("info", "Import", "An import is still running; try again when "
                              "it has finished.")
            return False
        if not self._saved_or_confirmed():
            return False
        self.export_bar.setRange(0, 0)
        self.export_bar.show()
        self.statusBar().showMessage(f"Importing {source}...")
        return self.importer.start(source, image_root, path)

    def _on_import_finished(self, project: Project | None, error: str, path: str) -> None:
        self.export_bar.hide()
        if project is None:
            self.statusBar().clearMessage()
            self.show_message("error", "Import", error)
            return
        if not self._saved_or_confirmed():  # edited meanwhile: the import stays saved
            self.statusBar().showMessage(f"Imported project saved as {path}", 10_000)
            return
        self.set_project(project, path)
        labelled = sum(1 for r in project.images if project.annotation(r.path).has_labels)
        self.statusBar().showMessage(
            f"Imported {len(project)} image(s), {labelled} labelled; saved as {path}", 10_000)

    def import_dataset_dialog(self) -> None:
        """File > Import...: a COCO, YOLO pose, DeepLabCut, SLEAP or Label Studio file."""
        source = self._ask_open_file("Import a dataset", IMPORT_FILTER)
        if not source:
            return
        try:
            fmt = detect_format(source)
        except FormatError as exc:
            self.show_message("error", "Import", str(exc))
            return
        root = None
        if fmt in ASKS_IMAGE_FOLDER:
            root = self._ask_existing_dir("Image folder of that file", os.path.dirname(source))
            if not root:
                return
        if fmt == "project":
            self.open_project(source)
            return
        stem = os.path.basename(os.path.dirname(source) if fmt in ("dlc", "yolo-pose")
                                else os.path.splitext(source)[0])
        default = os.path.join(os.path.dirname(source), stem + PROJECT_SUFFIX)
        path = self._ask_save_file("Save the imported project as", default, PROJECT_FILTER)
        if path:
            self.import_dataset(source, root, path)

    def open_demo(self, target: str | None = None) -> Project | None:
        """Copy the shipped demo to a writable folder (once) and open it."""
        base = target or os.path.join(
            QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
            or os.path.expanduser("~/.keypoint-annotator"),
            "demo",
        )
        store = os.path.join(base, "demo" + PROJECT_SUFFIX)
        shipped = os.path.join(base, "demo" + JSON_SUFFIX)  # migrated on its first opening
        try:
            if not os.path.isfile(store) and not os.path.isfile(shipped):
                shutil.copytree(DEMO_DIR, base, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("make_demo.py", "*~"))
        except OSError as exc:
            self.show_message("error", "Demo project", f"Cannot copy the demo: {exc}")
            return None
        return self.open_project(store if os.path.isfile(store) else shipped)

    def save(self) -> bool:
        if self.project is None:
            return False
        if not self.project_path:
            return self.save_as_dialog()
        return self.save_as(self.project_path)

    def attach_autosaver(self, path: str, dirty: bool = False,
                         stored_images: tuple[ImageRecord, ...] | None = None) -> None:
        """Journal every edit of the open project and save it to ``path`` in the background
        (see :class:`annotator.io.autosave.Autosaver`; ``stored_images``: the image list the
        store holds, when the project has images added since)."""
        assert self.project is not None
        try:
            self.autosaver = Autosaver(self.project, path, delay_s=self._autosave_delay,
                                       background=True, dirty=dirty, backup=True,
                                       stored_images=stored_images)
        except (StoreError, OSError) as exc:
            self.autosaver = None
            self.show_message("error", "Autosave", f"Edits will not be saved: {exc}")
            return
        self.autosave_timer.start()

    def save_json_copy(self, path: str) -> bool:
        """Write the project as a JSON document at ``path`` (for diffs and version
        control); the project stays in its store."""
        if self.project is None:
            return False
        self.flush_predictions()
        try:
            save_json_copy(self.project, path)
        except OSError as exc:
            self.show_message("error", "Save a copy as JSON", f"Cannot save {path}: {exc}")
            return False
        self.statusBar().showMessage(f"Saved a JSON copy at {path}", 5000)
        return True

    def save_json_dialog(self) -> bool:
        if self.project is None:
            return False
        start = str(Path(self.project_path or "project").with_suffix("")) + JSON_SUFFIX
        path = self._ask_save_file("Save a copy as JSON", start, JSON_FILTER)
        return self.save_json_copy(path) if path else False

    def save_as(self, path: str) -> bool:
        assert self.project is not None
        if is_json_path(path):  # a JSON document is a copy: editing goes on in the store
            return self.save_json_copy(path)
        if self.autosaver is not None and path == self.project_path:
            # Ctrl+S: snapshot here, write on a background thread; the tick reports the end
            self.flush_predictions()
            self._manual_save = True
            if not self.autosaver.save_async() and not self.autosaver.dirty:
                self._manual_save = False
                self.statusBar().showMessage(f"Saved {path}", 3000)
            else:
                self.statusBar().showMessage(f"Saving {path}...", 3000)
            return True
        try:
            save_project(self.project, path)
        except OSError as exc:
            self.show_message("error", "Save", f"Cannot save {path}: {exc}")
            return False
        if path != self.project_path:
            if self.autosaver is not None:  # everything is in the new file now
                self.autosaver.detach()
                self.autosaver = None
            self.project_path = path
            if not self.isolated:
                self.attach_autosaver(path)
                add_recent_project(path)
        self.statusBar().showMessage(f"Saved {path}", 3000)
        self._update_title()
        return True

    def save_as_dialog(self) -> bool:
        if self.project is None:
            return False
        path = self._ask_save_file("Save project as", self.project_path or "", PROJECT_FILTER)
        return self.save_as(path) if path else False

    def export_coco(self, path: str, choice: ExportChoice | None = None) -> bool:
        """Export to ``path`` in the background (default: reviewed and reference images
        only); the snapshot is taken now. Returns whether the export started;
        ``exporter.finished`` follows."""
        if self.project is None:
            return False
        if self.exporter.busy:
            self.show_message("info", "Export COCO", "An export is still being written; "
                              "try again when it has finished.")
            return False
        self.flush_predictions()
        choice = choice or ExportChoice(min_confidence=self.project.settings.review_threshold)
        self._export_choice = choice
        self._show_export_progress(f"Exporting {path} ({choice.describe()})...")
        return self.exporter.start(self.project, path, choice, self.autosaver)

    def _show_export_progress(self, text: str) -> None:
        self.export_bar.setRange(0, 0)
        self.export_bar.show()
        self.export_cancel.setEnabled(True)
        self.export_cancel.show()
        self.statusBar().showMessage(text)

    def cancel_export(self) -> None:
        """Stop the running export (Export COCO or Export as); nothing is written."""
        if self.exporter.busy:
            self.exporter.cancel()
            self.export_cancel.setEnabled(False)
            self.statusBar().showMessage("Cancelling the export...")

    def _on_export_progress(self, done: int, total: int) -> None:
        self.export_bar.setRange(0, max(total, 1))
        self.export_bar.setValue(done)

    def _on_export_finished(self, path: str, error: str, images: int, annotations: int) -> None:
        self.export_bar.hide()
        self.export_cancel.hide()
        title = "Export COCO" if self.exporter.kind == "coco" else "Export as"
        if error == CANCELLED:
            self.statusBar().showMessage(f"Export cancelled: {path} was not written", 8000)
            return
        if error:
            self.statusBar().clearMessage()
            self.show_message("error", title, f"Cannot export {path}: {error}")
            return
        self._record_export(path)
        summary = self.exporter.last.summary if self.exporter.last else path
        self.statusBar().showMessage(summary, 10_000)

    def export_coco_dialog(self) -> None:
        """Ctrl+E: the export dialog with COCO chosen."""
        self._export_dialog("coco")

    @property
    def export_as_busy(self) -> bool:
        return self.exporter.busy

    def export_as(self, fmt: str, path: str, options: ExportOptions) -> bool:
        """Export in ``fmt`` (see :mod:`annotator.io.formats`) on a background thread from a
        snapshot taken now (the user edits on meanwhile); returns whether it started. The
        outcome (or the error) is shown when it ends; :meth:`wait_export_as` waits."""
        if self.project is None:
            return False
        if self.export_as_busy:
            self.show_message("info", "Export as", "An export is still being written; try "
                              "again when it has finished.")
            return False
        self.flush_predictions()
        self._show_export_progress(f"Exporting {path}...")
        return self.exporter.start_format(self.project, fmt, path, options, self.autosaver)

    def wait_export_as(self, timeout: float | None = None) -> None:
        """Wait for a running export and deliver its outcome (tests, closing)."""
        self.exporter.wait(-1 if timeout is None else int(timeout * 1000))
        QApplication.processEvents()

    def default_export_dir(self) -> str:
        """Where exports go by default: the project file's folder, unless that is in the
        image folder; then ``<image folder>_exports`` beside it (never among the images)."""
        assert self.project is not None
        root = Path(self.project.image_root).resolve()
        base = Path(self.project_path).resolve().parent if self.project_path else root
        if base == root or root in base.parents:
            base = root.parent / f"{root.name}_exports"
        return str(base)

    def _record_export(self, path: str) -> None:
        """An export folder inside the image folder is recorded in the project: rescans
        skip it (the copies of images it holds are not new images)."""
        if self.project is None or self.autosaver is None or not os.path.isdir(path):
            return
        root = Path(self.project.image_root).resolve()
        out = Path(path).resolve()
        if root in out.parents:
            self.autosaver.record_export_dir(out.relative_to(root).as_posix())

    def export_as_dialog(self) -> None:
        """File > Export as...: the export dialog with the format used last."""
        self._export_dialog(self._export_format)

    def _export_dialog(self, fmt: str) -> None:
        """One dialog for every format (COCO included): format, path, which labels."""
        if self.project is None:
            return
        base = self.project_path or "annotations"
        stem = os.path.basename(base).removesuffix(JSON_SUFFIX).removesuffix(PROJECT_SUFFIX)
        stem = stem.removesuffix(".json")
        dialog = ExportDialog(self.project, stem, self.default_export_dir(), fmt,
                              self._export_choice, self)
        if dialog.exec() != ExportDialog.DialogCode.Accepted:
            return
        self._export_format = dialog.format()
        if dialog.format() == "coco":
            self.export_coco(dialog.path(), dialog.choice())
        else:
            self._export_choice = dialog.choice()
            self.export_as(dialog.format(), dialog.path(), dialog.options())

    def _autosave_tick(self) -> None:
        saver = self.autosaver
        if saver is None:
            return
        for ok, message in saver.poll():  # background saves that ended since the last tick
            if ok:
                if self._manual_save:
                    self.statusBar().showMessage(message, 3000)
            else:
                saver.notify()  # retry after the delay; the journal holds the edits
                if self._manual_save:
                    self.show_message("error", "Save", message)
                else:
                    self.statusBar().showMessage(f"Autosave failed: {message}", 10_000)
            self._manual_save = False
        try:
            saver.maybe_save()
        except OSError as exc:
            saver.notify()  # retry after the delay
            self.statusBar().showMessage(f"Autosave failed: {exc}", 10_000)
        self._update_title()

    # ----------------------------------------------------------------- help
    def shortcut_sheet(self) -> list[tuple[str, str]]:
        """(keys, what they do) for every menu action with a shortcut, in menu order."""
        rows = []
        for menu_action in self.menuBar().actions():
            menu = menu_action.menu()
            for action in menu.actions() if menu is not None else []:
                keys = [k.toString(QKeySequence.SequenceFormat.NativeText)
                        for k in action.shortcuts()]
                if keys:
                    what = action.text().replace("&", "")
                    rows.append((", ".join(keys), what))
        return rows

    def show_shortcuts(self) -> None:
        rows = "".join(f"<tr><td><b>{k}</b>&nbsp;&nbsp;</td><td>{w}</td></tr>"
                       for k, w in self.shortcut_sheet())
        extra = ("<p>Mouse: a click places the selected keypoint while it is unplaced; drag a "
                 "point to move it; click a stack of points again to pick the next one; wheel "
                 "zooms; middle drag or Ctrl + drag pans; right-click a point for its "
                 "visibility.</p>")
        box = QMessageBox(self)
        box.setWindowTitle("Keyboard shortcuts")
        box.setTextFormat(Qt.TextFormat.RichText)
        box.setText(f"<table>{rows}</table>{extra}")
        box.setModal(False)
        box.show()
        self.shortcut_box = box

    def show_models_note(self) -> None:
        from annotator.gui.welcome import FIRST_RUN_NOTE

        self.show_message("info", "About the models", FIRST_RUN_NOTE)

    # ---------------------------------------------------------------- edits
    def undo(self) -> None:
        if self.project is not None:
            text = self.project.undo()
            self._update_actions()  # the stack moves after the change is announced
            if text:
                self.statusBar().showMessage(f"Undid: {text}", 3000)

    def redo(self) -> None:
        if self.project is not None:
            text = self.project.redo()
            self._update_actions()
            if text:
                self.statusBar().showMessage(f"Redid: {text}", 3000)

    def edit_schema(self) -> None:
        if self.project is None:
            return
        if self.run_active:  # predictions in flight use the current keypoints
            self.show_message("info", "Keypoint schema",
                              "Propagation is running; cancel it or let it finish before "
                              "changing the keypoints.")
            return
        dialog = SchemaDialog(self.project.schema, self)
        if dialog.exec() == SchemaDialog.DialogCode.Accepted and (
            dialog.schema != self.project.schema
        ):
            self.project.set_schema(dialog.schema, dialog.index_map)

    def edit_settings(self) -> None:
        if self.project is None:
            return
        dialog = SettingsDialog(self.project.settings, self)
        if dialog.exec() == SettingsDialog.DialogCode.Accepted:
            self.project.set_settings(dialog.settings())
            self.device_label.setText(f"device: {self.project.settings.device}")

    def _on_project_changed(self, paths: frozenset[str]) -> None:
        self._count_changed(paths)
        self.retrainer.project_changed(paths)
        self.editor.project_changed(paths)
        self._update_actions()
        self._update_title()
        if not self.counts_timer.isActive():  # streams of edits: counted a few times a second
            self.counts_timer.start()

    def _category(self, ann: ImageAnnotation) -> int:
        assert self.project is not None
        return review_category(ann, self.project.settings.review_threshold)

    def _count_changed(self, paths: frozenset[str]) -> None:
        """Keep the review counts current in O(changed images); a whole-project change
        (schema, settings, threshold) recounts at the next :meth:`review_counts`."""
        if not paths or self._counts_stale:
            self._counts_stale = True
            return
        assert self.project is not None
        done, need = self._counted
        for path in paths:
            old = self._counts.pop(path, 0)
            new = self._category(self.project.annotation(path))
            if new:
                self._counts[path] = new
            done += (new == 1) - (old == 1)
            need += (new == 2) - (old == 2)
        self._counted = (done, need)

    def review_counts(self) -> tuple[int, int, int]:
        """(reviewed or reference, total, predicted below the review threshold)."""
        if self.project is None:
            return (0, 0, 0)
        if self._counts_stale:
            self.set_review_counts(review_categories(self.project))
        done, need = self._counted
        return done, len(self.project), need

    def set_review_counts(self, counts: dict[str, int],
                          counted: tuple[int, int] | None = None) -> None:
        """Review categories of every image (:func:`review_categories`), counted elsewhere
        (a background open counts them on its pool thread, and ``counted``, their
        :func:`count_categories`: 3-5 ms of the GUI thread at 100,000 images)."""
        old, self._counts = self._counts, counts
        self._counted = count_categories(counts) if counted is None else counted
        self._counts_stale = False
        if len(old) >= DROP_IN_BACKGROUND_IMAGES and old is not counts:
            drop_in_background(old)  # 10^5 entries: 1-2 ms to free here

    def _update_counts(self) -> None:
        if self.project is None:
            self.review_label.setText("")
            return
        done, total, need = self.review_counts()
        self.review_label.setText(f"{done:,} / {total:,} reviewed, {need:,} need review")

    def _update_actions(self) -> None:
        has = self.project is not None
        browse = (self.act_next, self.act_prev, self.act_next_kp, self.act_prev_kp,
                  self.act_fit, self.act_close_project)
        for action in self.project_actions:  # a project still loading is for browsing
            action.setEnabled(has and (not self.loading or action in browse))
        history = self.project.history if has else None
        self.act_undo.setEnabled(bool(history and history.can_undo))
        self.act_redo.setEnabled(bool(history and history.can_redo))
        self.act_undo.setText(f"&Undo {history.undo_text}" if history and history.can_undo
                              else "&Undo")
        self.act_redo.setText(f"&Redo {history.redo_text}" if history and history.can_redo
                              else "&Redo")
        self.act_cancel.setEnabled(self.run_active)

    def _update_title(self) -> None:
        title = "Keypoint-transfer annotator"
        if self.project is not None and self.loading_path is not None:
            title = f"{os.path.basename(self.loading_path)} (loading...) - {title}"
        elif self.project is not None:
            name = os.path.basename(self.project_path) if self.project_path else "unsaved"
            dirty = self.autosaver is None or self.autosaver.dirty
            title = f"{name}{' *' if dirty else ''} - {title}"
        self.setWindowTitle(title)

    # ----------------------------------------------------------- propagation
    def propagate(self, targets: list[str] | None = None) -> bool:
        """Send the project to the worker; predictions stream back into the gallery."""
        if self.project is None:
            return False
        if not self.project.has_references():  # stops at the first: no scan of 10^5 images
            self.show_message("info", "Propagate",
                              "Label a reference image first: select an image, click to place "
                              "its keypoints, make it a reference (Image > Use as reference, "
                              "M), then press Propagate.")
            return False
        self._end_previous_run()
        # the snapshot sent to the worker is the run's baseline too (a 10^5-entry copy: in
        # fresh memory, each copy cost the GUI thread up to 20 ms of page faults here),
        # frozen at once, as the worker freezes what it makes of it (gc_pause.freeze_made)
        with made_and_frozen(len(self.project)):
            snapshot = ProjectSnapshot.of(self.project)
            self._baseline, self._applied = snapshot.annotations, {}
            self._run_schema = self.project.schema
            self._run_key = object()  # this run's predictions accumulate into one undo step
            self._run_kind = "Propagation"
            self.controller.propagate(self.project, targets, snapshot=snapshot)
        self._rate = RateEstimator(0)
        self._unreadable_in_run = 0
        self.statusBar().clearMessage()  # the last run's outcome is not this run's
        self.progress_bar.setRange(0, 0)
        for w in (self.progress_bar, self.progress_label, self.cancel_button):
            w.show()
        self.progress_label.setText("starting...")
        self.flush_timer.start()
        self._update_actions()
        return True

    def start_propagation(
        self, engine_factory: EngineFactory | None = None, targets: list[str] | None = None
    ) -> bool:
        """Propagate like :meth:`propagate`, optionally with another engine or fewer targets.

        ``engine_factory`` replaces the window's factory from this run on (the worker builds
        its engine with it, on the worker thread); ``targets`` limits the run to those paths.
        Returns whether a run was started.
        """
        if engine_factory is not None:
            self.controller.set_engine_factory(engine_factory)
        return self.propagate(targets)

    def detect_boxes(self, targets: list[str] | None = None) -> bool:
        """Find boxes with the zero-shot detector (Settings: model, prompt, threshold, max
        boxes) on every image that is neither reviewed nor a reference; they stream back as
        predicted boxes with a score, one undo step."""
        if self.project is None:
            return False
        self._end_previous_run()
        with made_and_frozen(len(self.project)):  # as in propagate()
            self._baseline, self._applied = self.project.annotations(), {}
            self._run_schema = self.project.schema
            self._run_key = object()
            self._run_kind = "Detection"
            self.controller.detect(self.project, targets)
        self._rate = RateEstimator(0)
        self.progress_bar.setRange(0, 0)
        for w in (self.progress_bar, self.progress_label, self.cancel_button):
            w.show()
        self.progress_label.setText("loading the detector...")
        self.flush_timer.start()
        self._update_actions()
        return True

    def retrain_model(self) -> bool:
        """Run > Retrain: train the keypoint head on the reviewed images now (on the worker;
        behind a propagation in progress). Returns whether a retrain was sent."""
        return self.retrainer.retrain()

    def _on_retrain_message(self, text: str, manual: bool) -> None:
        if manual:
            self.show_message("info", "Retrain", text)
        else:
            self.statusBar().showMessage(text, 8000)

    @property
    def run_active(self) -> bool:
        """True from the start of a run until :attr:`run_ended`: while the worker runs and
        while the results it sent are still being applied."""
        return self.controller.busy or self._finishing is not None

    def _end_previous_run(self) -> None:
        """Before a new run: the current one is cancelled and everything it sent applied
        (with its own undo step and baseline), so the new run starts from a clean slate."""
        if self.controller.busy:
            self.controller.cancel()
        self.flush_predictions()

    def cancel_propagation(self) -> None:
        """Cancel the run: the results that arrived are applied (over the next ticks); a
        second Cancel while they are being applied drops the rest (what was applied stays,
        one undo step)."""
        if self.controller.busy:
            self.controller.cancel()
        elif self._finishing is not None:
            dropped = len(self._pending)
            self._pending.clear()
            log.info("run cancelled while applying its results: %d left out", dropped)
            self._end_run("cancelled")

    def _on_progress(self, done: int, total: int, _message: str) -> None:
        if self._rate is None:
            return
        if done == 0:  # models are loaded now: time the images only
            self._rate = RateEstimator(total)
        self._rate.update(done, total)
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)
        self.progress_label.setText(self._rate.text())

    def _on_prediction(self, prediction: Any) -> None:
        self._pending.extend([prediction])

    def _flush_tick(self) -> None:
        """Timer tick during a run, and after it while its backlog is applied: apply a slice
        of the predictions received, about ``_pending.budget_s`` of work; a backlog continues
        at the next catch-up tick; a finished run ends once nothing is left."""
        try:
            self.flush_predictions(bounded=True)
        finally:
            if len(self._pending) and self.project is not None:
                self.catch_up_timer.start()
                if self._finishing is not None:
                    self.progress_label.setText(f"applying {len(self._pending):,} results...")
            elif self._finishing is not None:
                self._end_run(self._finishing)

    def flush_predictions(self, bounded: bool = False) -> None:
        """Apply the predictions received so far (``bounded``: a time-budgeted slice of
        them, oldest first); a run's batches form one undo step. Unbounded, a finished run
        whose backlog was being applied ends here."""
        if not bounded:
            self.controller.collect()  # what the worker streamed that is not delivered yet
        if self.project is None:
            self._pending.clear()
        elif len(self._pending) and not self.editor.canvas.dragging:  # never split a drag
            if bounded:
                self._pending.drain()
            else:
                self._pending.flush()
        if not bounded and not len(self._pending) and self._finishing is not None:
            self._end_run(self._finishing)

    def _apply_predictions(self, preds: list[Any]) -> None:
        assert self.project is not None
        if self.project.schema != getattr(self, "_run_schema", self.project.schema):
            log.warning("dropped %d predictions made for another keypoint schema", len(preds))
            return
        fresh = []
        empty = ImageAnnotation()
        for pred in preds:
            if pred.error is not None:
                self.editor.gallery.model.mark_unreadable(pred.path, pred.error)
                self._unreadable_in_run += 1
                continue
            before = self._applied.get(pred.path)
            if before is None:
                before = self._baseline.get(pred.path, empty)
            if self.project.annotation(pred.path) != before:
                continue  # the user edited this image during the run: keep their work
            fresh.append(pred)
        if fresh:
            # The worker imported these modules already; this is a dictionary lookup.
            from annotator.jobs.detect import BoxResult, apply_detections
            from annotator.jobs.propagate import apply_predictions

            boxes = [p for p in fresh if isinstance(p, BoxResult)]
            preds = [p for p in fresh if not isinstance(p, BoxResult)]
            if boxes:
                apply_detections(self.project, boxes, merge_key=("detect", self._run_key))
            if preds:
                apply_predictions(self.project, preds, merge_key=("propagate", self._run_key))
            for path in (p.path for p in fresh):
                self._applied[path] = self.project.annotation(path)

    def _on_run_finished(self, outcome: str) -> None:
        """The worker is done with the run (everything it sent is in ``_pending``): one
        bounded slice now; a backlog left is applied over the next catch-up ticks (bounded
        GUI work per tick, as during the run) and the run ends when it is empty."""
        self.flush_timer.stop()
        try:
            self.flush_predictions(bounded=True)
        finally:
            if len(self._pending) and self.project is not None:
                self._finishing = outcome
                self.progress_label.setText(f"applying {len(self._pending):,} results...")
                self.catch_up_timer.start()
                self._update_actions()
            else:
                self._end_run(outcome)

    def _end_run(self, outcome: str) -> None:
        self._finishing = None
        self._pending.clear()
        # the baseline refers to every annotation of the project as the run started: kept,
        # it would keep a closed project's annotations alive, and freeing them later (the
        # next run's start) held the GIL 150 ms at 10,000 x 3
        self._baseline, self._applied = {}, {}
        self._finish_run_ui(outcome)
        self.run_ended.emit(outcome)

    def _finish_run_ui(self, outcome: str) -> None:
        for w in (self.progress_bar, self.progress_label, self.cancel_button):
            w.hide()
        kind = getattr(self, "_run_kind", "Propagation")
        text = {"done": f"{kind} finished", "cancelled": f"{kind} cancelled",
                "failed": f"{kind} failed"}.get(outcome, outcome)
        if self._rate is not None and outcome == "done":
            bad = self._unreadable_in_run
            text += (f": {self._rate.done - bad} images predicted in "
                     f"{self._rate.elapsed:.1f} s")
            if bad:
                text += f", {bad} unreadable (filter \"Unreadable\" lists them)"
        self._rate = None
        self.statusBar().showMessage(text, 8000)
        self._update_actions()
        # the rows the run changed were repainted (and re-sorted) as its results were applied;
        # only the rows on screen are repainted here, never all 10^5 rows
        self.editor.gallery.view.viewport().update()

    def _on_worker_error(self, kind: str, message: str) -> None:
        if kind == "models":
            self.show_message("warning", "Models unavailable", message)
        else:
            self.show_message("error", "Worker error", message)

    def _on_model_state(self, state: str, detail: str) -> None:
        if state == "ready":
            self.model_label.setText("models: ready")
            self.device_label.setText(f"device: {detail}")
        elif state == "loading":
            self.model_label.setText("models: loading...")
        elif state == "downloading":
            self.model_label.setText(f"models: downloading {detail}")
        else:
            self.model_label.setText("models: unavailable")
            self.model_label.setToolTip(detail)

    def _on_cache_usage(self, used: int) -> None:
        cap = self.project.settings.cache_cap_gb if self.project else 0
        self.cache_label.setText(f"cache: {human_bytes(int(used))} / {cap:g} GB")

    def _on_heatmap_wanted(self, reference: str, x: float, y: float, target: str) -> None:
        if self.project is not None:
            self.controller.request_heatmap(self.project, reference, (x, y), target)

    # ---------------------------------------------------------------- close
    def shutdown(self) -> None:
        """Cancel and join the worker, stop thumbnail loads, flush the autosave (idempotent)."""
        if self._shut_down:
            return
        self._shut_down = True
        self._closing.finish()
        self.autosave_timer.stop()
        self.flush_timer.stop()
        self.catch_up_timer.stop()
        self.preload_timer.stop()
        self.retrainer.stop()
        self.hide()  # the user sees the close at once; a model load may hold the join
        # cancel the run, apply what arrived, save (and finish the backup): before any wait
        self._detach_project(wait_backup=True)
        for backup in self._backups:  # of projects closed before (see _detach_project)
            backup.join()
        self.controller.shutdown()
        self.exporter.wait()  # an export being written finishes (it is atomic either way)
        self.importer.wait()
        self.opener.cancel()
        self.opener.wait()
        self.loader.stop()
        self.editor.images.stop()
        self.editor.reference_pane.images.stop()
        self.video.shutdown()

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self._shut_down and not self._saved_or_confirmed():
            event.ignore()  # the user keeps the window and the unsaved work
            return
        self.shutdown()
        event.accept()

    def _saved_or_confirmed(self) -> bool:
        """Save pending edits before the project is closed or replaced; when that fails, let
        the user save elsewhere, discard on purpose, or cancel. Returns whether to go on."""
        if self.project is None or self.autosaver is None:
            return True
        try:
            self.autosaver.flush()
            return True
        except OSError as exc:
            error = str(exc)
        buttons = QMessageBox.StandardButton
        answer = QMessageBox.question(
            self, "Unsaved changes",
            f"The project could not be saved ({error}).\n\nSave it somewhere else?",
            buttons.Save | buttons.Discard | buttons.Cancel, buttons.Save,
        )
        if answer == buttons.Save:
            return self.save_as_dialog()
        if answer == buttons.Discard:
            self.autosaver.detach()  # closing on purpose without the last edits
            self.autosaver = None
            return True
        return False


__all__ = ["MainWindow", "Qt"]
