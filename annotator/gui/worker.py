"""The one long-lived worker thread that owns the engine (models, GPU).

:class:`EngineWorker` is a thin Qt adapter around the plain-Python jobs in ``annotator.jobs``;
it lives on its own QThread and imports the model stack (torch) lazily, on that thread only.
:class:`WorkerController` is its GUI-side handle: it sends frozen orders through queued
signals, drops stale results by request id, cancels cooperatively and joins on shutdown.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, SignalInstance, Slot

from annotator.domain import Project, ProjectSettings
from annotator.gui.gc_pause import made_and_frozen
from annotator.gui.requests import (
    DetectOrder,
    HeadInfoOrder,
    HeatmapOrder,
    ProjectSnapshot,
    PropagateOrder,
    TrainOrder,
)
from annotator.gui.result_feed import ResultInbox
from annotator.io.video import ImageSource

log = logging.getLogger(__name__)

EngineFactory = Callable[[ProjectSettings], Any]
Preloader = Callable[[Callable[[], bool]], Any]  # called with "is it cancelled?"
_LIVE_THREADS: weakref.WeakSet[QThread] = weakref.WeakSet()

MODELS_HELP = (
    "The feature models could not be loaded, so Propagate is unavailable for now.\n\n"
    "What to do:\n"
    "  - online: press Propagate again; the weights download through Hugging Face "
    "(a few GB, once);\n"
    "  - offline: download the models on another machine (huggingface-cli download "
    "stable-diffusion-v1-5/stable-diffusion-v1-5 and facebook/dinov2-base) and set their "
    "local folders in Edit > Settings (\"SD 1.5 model\", \"DINOv2 model\");\n"
    "  - check the device and precision in Edit > Settings.\n\n"
    "Manual annotation, review and export keep working."
)


def _looks_like_folder(source: str) -> bool:
    return source.startswith(("/", "~", ".", "\\")) or (len(source) > 1 and source[1] == ":")


def models_help(settings: ProjectSettings, exc: BaseException) -> str:
    """The message for models that could not be loaded: a local folder that does not exist
    is named as such (no download would help); otherwise the general advice."""
    missing = [
        f"{label} folder {source} does not exist"
        for label, source in (("SD 1.5 model", settings.sd_model),
                              ("DINOv2 model", settings.dino_model))
        if _looks_like_folder(source) and not os.path.isdir(os.path.expanduser(source))
    ]
    if missing:
        return (f"{exc}\n\nThe " + "; the ".join(missing) + ". Set the folders that hold the "
                "downloaded models in Edit > Settings (\"SD 1.5 model\", \"DINOv2 model\"), "
                "or put back the hub ids to download them.\n\n"
                "Manual annotation, review and export keep working.")
    return f"{exc}\n\n{MODELS_HELP}"


def too_few_message(count: int) -> str:
    """Why a retrain was refused: fewer reviewed images than the head needs."""
    from annotator.jobs.train import MIN_TRAINING_IMAGES

    return (f"Retrain needs at least {MIN_TRAINING_IMAGES} reviewed images with keypoints "
            f"({count} so far): accept (A) or mark as reference (M) more images.")


def default_engine_factory(settings: ProjectSettings) -> Any:
    """Build the real engine (imports torch); called on the worker thread only."""
    from annotator.jobs.engine_factory import build_engine

    return build_engine(settings)


def default_preloader(cancelled: Callable[[], bool]) -> Any:
    """Import the model stack without starving the GUI thread (worker thread only)."""
    from annotator.jobs.preload import preload_model_stack

    return preload_model_stack(cancelled)


def running_worker_threads() -> list[QThread]:
    """Worker threads created by this module that are still running (for tests)."""
    return [t for t in list(_LIVE_THREADS) if t.isRunning()]


def folder_size(path: str) -> int:
    """Total bytes of the files under ``path`` (0 when it does not exist)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                pass
    return total


class EngineWorker(QObject):
    """Runs jobs on the worker thread; every result goes out through a signal."""

    # state ("loading", "downloading", "ready", "failed"), device or message
    model_state = Signal(str, str)
    progress = Signal(int, int, int, str)  # request id, done, total, message
    #: results are in :attr:`inbox` (emitted only when it was empty: one wake per burst)
    results_waiting = Signal()
    finished = Signal(int, str)  # request id, outcome: "done", "cancelled", "failed"
    failed = Signal(int, str, str)  # request id, kind ("models" or "error"), message
    heatmap_ready = Signal(int, object)  # request id, (H, W) float array over the target
    cache_usage = Signal(object)  # bytes used by the feature cache
    preloaded = Signal()  # the model stack is imported (or the preload gave up)
    trained = Signal(int, object)  # request id, facts of the saved head (see run_training)
    head_info = Signal(int, object)  # request id, facts of the saved head or None

    def __init__(
        self, engine_factory: EngineFactory | None = None, preloader: Preloader | None = None
    ) -> None:
        super().__init__()
        self._factory = engine_factory or default_engine_factory
        self._preloader = preloader
        self._preloaded = False
        self._engine: Any = None
        self._engine_key: object = None
        self._lock = threading.Lock()
        self._states: dict[int, Any] = {}
        self._cancelled: set[int] = set()
        self._stopping = threading.Event()  # the window is closing: abandon downloads
        self._detector: Any = None
        self._detector_key: object = None
        self._head_info_wanted: HeadInfoOrder | None = None  # answered when an engine exists
        #: (request id, done, total, message, result): the streamed results, in order
        self.inbox: ResultInbox[tuple[int, int, int, str, Any]] = ResultInbox()

    # ------------------------------------------------ called from the GUI thread
    def request_cancel(self, request_id: int) -> None:
        """Thread-safe: cancel ``request_id`` (running or still queued)."""
        with self._lock:
            self._cancelled.add(request_id)
            state = self._states.get(request_id)
        if state is not None:
            state.cancel()

    # ------------------------------------------------------ worker-thread slots
    @Slot(object)
    def set_factory(self, engine_factory: EngineFactory | None) -> None:
        """Build engines with ``engine_factory`` from now on (the current one is dropped)."""
        self._factory = engine_factory or default_engine_factory
        self._engine = None
        self._engine_key = None

    @Slot(object)
    def set_preloader(self, preloader: Preloader | None) -> None:
        """Preload with ``preloader`` from now on (again, if a preload has run)."""
        self._preloader = preloader
        self._preloaded = False

    @Slot()
    def preload(self) -> None:
        """Import the model stack now (once), in steps that leave the GUI responsive."""
        if self._preloader is None or self._preloaded:
            return
        self._preloaded = True
        try:
            self._preloader(self._stopping.is_set)
        except Exception:  # optional: the engine build reports real problems
            log.warning("preloading the model stack failed", exc_info=True)
        finally:
            self.preloaded.emit()

    def request_stop(self) -> None:
        """Thread-safe: the application is closing; a weight download stops at its next
        file instead of holding up the close."""
        self._stopping.set()

    def _abandoned(self, request_id: int) -> bool:
        with self._lock:
            return self._stopping.is_set() or request_id in self._cancelled

    def _engine_for(self, settings: ProjectSettings, request_id: int = -1) -> Any:
        # the review threshold only colours the GUI: changing it must not reload the models
        key = dataclasses.replace(settings, review_threshold=0.0)
        if self._engine is None or self._engine_key != key:
            self._engine = None
            self.model_state.emit("loading", settings.device)
            self.preload()
            engine = self._factory(settings)
            if hasattr(engine, "on_download"):  # first run: weights download, with progress

                def on_download(what: str, done: int, total: int) -> None:
                    if self._abandoned(request_id):
                        from annotator.jobs.progress import Cancelled

                        raise Cancelled()
                    self.model_state.emit("downloading", f"{what}: {done}/{total} files")

                engine.on_download = on_download
            extractor = getattr(engine, "extractor", None)  # loads the models now, if lazy
            device = getattr(extractor, "device", None) or getattr(
                getattr(engine, "runtime", None), "device", settings.device
            )
            self._engine, self._engine_key = engine, key
            self.model_state.emit("ready", str(device))
            wanted = self._head_info_wanted
            if wanted is not None and dataclasses.replace(
                    wanted.settings, review_threshold=0.0) == key:
                self.read_head_info(wanted)
        return self._engine

    def _load_engine(self, request_id: int, settings: ProjectSettings) -> Any | None:
        try:
            return self._engine_for(settings, request_id)
        except Exception as exc:  # missing weights, no torch, bad device: all "models"
            if type(exc).__name__ == "Cancelled" or self._abandoned(request_id):
                self.model_state.emit("failed", "model download cancelled")
                return None
            log.warning("engine could not be built: %s", exc, exc_info=True)
            self.model_state.emit("failed", f"{type(exc).__name__}: {exc}")
            self.failed.emit(request_id, "models", models_help(settings, exc))
            return None

    @Slot(object)
    def run_propagation(self, order: PropagateOrder) -> None:
        rid = order.request_id
        outcome = "failed"
        try:
            state = self._start_task(rid)
            if state.is_cancelled():
                outcome = "cancelled"
                return
            engine = self._load_engine(rid, order.snapshot.settings)
            if engine is None:
                outcome = "cancelled" if self._abandoned(rid) else "failed"
                return
            if hasattr(engine, "for_category"):  # a "{category}" prompt (CleanDIFT UNet)
                engine = engine.for_category(order.snapshot.schema.name)
            from annotator.jobs import propagate as job
            from annotator.jobs.train import head_for_propagation

            with made_and_frozen(len(order.snapshot.images)):  # the run's copies: gc_pause
                project = order.snapshot.to_project()
                targets = list(order.targets) if order.targets is not None else None
                request = job.PropagateRequest.from_project(project, targets=targets)
                head = head_for_propagation(project, engine)
            outcome = self._stream(rid, job.run_propagation(request, engine, state,
                                                        ImageSource.of(project), head),
                                   len(request.targets), state)
        except Exception as exc:
            log.error("propagation %d failed:\n%s", rid, traceback.format_exc())
            if type(exc).__name__ == "ModelLoadError":
                self.failed.emit(rid, "models", models_help(order.snapshot.settings, exc))
            else:
                self.failed.emit(rid, "error", f"{type(exc).__name__}: {exc}")
        finally:
            self._end_task(rid, outcome)
            self._report_cache(order.snapshot.settings)

    @Slot(object)
    def run_detection(self, order: DetectOrder) -> None:
        """Zero-shot boxes (annotator.jobs.detect); each BoxResult goes out as a
        ``prediction``."""
        rid = order.request_id
        outcome = "failed"
        try:
            from annotator.jobs import detect as job

            request = order.request
            assert isinstance(request, job.DetectRequest)
            state = self._start_task(rid)
            if state.is_cancelled():
                outcome = "cancelled"
                return
            s = request.settings
            key = (s.detector_model, s.device, s.dtype)
            if self._detector is None or self._detector_key != key:
                self._detector = None
                self.model_state.emit("loading", s.device)
                try:
                    self._detector = job.build_detector(s)
                except Exception as exc:  # missing weights, bad folder, bad device
                    self.model_state.emit("failed", f"{type(exc).__name__}: {exc}")
                    self.failed.emit(rid, "models", f"The box detector could not be loaded:\n"
                                     f"{exc}\n\nSet its hub id or local folder in Settings.")
                    return
                self._detector_key = key
                self.model_state.emit("ready", str(self._detector.device))
            outcome = self._stream(rid, job.run_detection(
                request, self._detector, state,
                order.source or ImageSource(request.image_root)),
                                   len(request.targets), state)
        except Exception as exc:
            log.error("detection %d failed:\n%s", rid, traceback.format_exc())
            self.failed.emit(rid, "error", f"{type(exc).__name__}: {exc}")
        finally:
            self._end_task(rid, outcome)

    def _lazy_engine(self, settings: ProjectSettings) -> Any:
        """The current engine when it is for ``settings``, else a new one from the factory
        whose models are not loaded (nothing reads its extractor)."""
        key = dataclasses.replace(settings, review_threshold=0.0)
        if self._engine is not None and self._engine_key == key:
            return self._engine
        return self._factory(settings)

    @Slot(object)
    def run_training(self, order: TrainOrder) -> None:
        """Train the project's head (annotator.jobs.train) on a snapshot and save it; emits
        ``trained`` with {"num_images", "saved", "seconds", "path"}. Too few reviewed images,
        a per-pair fusion or a bad training set fail with kind "training"."""
        rid = order.request_id
        outcome = "failed"
        settings = order.snapshot.settings
        try:
            from annotator.jobs import train as job
            from annotator.jobs.progress import Cancelled

            state = self._start_task(rid)
            if state.is_cancelled():
                outcome = "cancelled"
                return
            with made_and_frozen(len(order.snapshot.images)):
                project = order.snapshot.to_project()
            count = job.reviewed_image_count(project)
            if count < job.MIN_TRAINING_IMAGES:
                self.failed.emit(rid, "training", too_few_message(count))
                return
            job.check_engine(self._lazy_engine(settings))  # before any model loads
            engine = self._load_engine(rid, settings)
            if engine is None:
                outcome = "cancelled" if self._abandoned(rid) else "failed"
                return
            if hasattr(engine, "for_category"):  # the features propagation uses
                engine = engine.for_category(project.schema.name)
            t0 = time.perf_counter()
            try:
                result = job.run_training(job.TrainRequest.from_project(project, order.params),
                                          engine, state)
                state.check()
            except Cancelled:
                outcome = "cancelled"
                return
            path = job.save_project_head(project, engine, result)
            self.trained.emit(rid, {"num_images": len(result.images), "saved": time.time(),
                                    "seconds": time.perf_counter() - t0, "path": str(path),
                                    "skipped": list(result.skipped)})
            outcome = "done"
        except Exception as exc:
            if type(exc).__name__ == "TrainingError":
                self.failed.emit(rid, "training", str(exc))
            elif type(exc).__name__ == "ModelLoadError":
                log.error("training %d failed:\n%s", rid, traceback.format_exc())
                self.failed.emit(rid, "models", models_help(settings, exc))
            else:
                log.error("training %d failed:\n%s", rid, traceback.format_exc())
                self.failed.emit(rid, "error", f"{type(exc).__name__}: {exc}")
        finally:
            self._end_task(rid, outcome)
            self._report_cache(settings)

    @Slot(object)
    def read_head_info(self, order: HeadInfoOrder) -> None:
        """What the project's saved head for the current feature settings was trained on
        ({"num_images", "saved"}), or None: nothing saved, or it cannot be read (logged).

        Reading it imports torch, so it waits for the model stack: with the real engine
        the preload (GIL-friendly) runs first; with an injected factory and no engine built
        yet, it is answered once the first engine is built (a propagation or a retrain)."""
        key = dataclasses.replace(order.settings, review_threshold=0.0)
        if self._engine is None or self._engine_key != key:
            if self._factory is not default_engine_factory:
                self._head_info_wanted = order
                return
            self.preload()
        self._head_info_wanted = None
        info = None
        try:
            from annotator.jobs import train as job

            project = Project(order.image_root, (), order.schema, {}, order.settings)
            head = job.load_project_head(project, self._lazy_engine(order.settings))
            if head is not None:
                facts = job.trained_on(head)
                info = {"num_images": int(facts.get("num_images") or 0),
                        "saved": float(facts.get("saved") or 0.0)}
        except Exception:  # a status line: never worth a message box
            log.warning("the saved head could not be read", exc_info=True)
        self.head_info.emit(order.request_id, info)

    def _start_task(self, rid: int) -> Any:
        """The TaskState of request ``rid``, registered for cancel (cancelled already when
        the cancel came first)."""
        from annotator.jobs.progress import TaskState

        state = TaskState()
        with self._lock:
            self._states[rid] = state
            if rid in self._cancelled:
                state.cancel()
        return state

    def _stream(self, rid: int, results: Any, total: int, state: Any) -> str:
        """Hand each result of a job, with its progress, to the GUI thread through
        :attr:`inbox` (one wake per burst, however fast they come); the outcome."""
        from annotator.jobs.progress import Cancelled

        self.progress.emit(rid, 0, total, "")
        try:
            for done, res in enumerate(results, start=1):
                if self.inbox.put((rid, done, total, str(res.path), res)):
                    self.results_waiting.emit()
                if state.is_cancelled():
                    break
        except Cancelled:
            return "cancelled"
        return "cancelled" if state.is_cancelled() else "done"

    def _end_task(self, rid: int, outcome: str) -> None:
        with self._lock:
            self._states.pop(rid, None)
            self._cancelled.discard(rid)
        self.finished.emit(rid, outcome)

    @Slot(object)
    def compute_heatmap(self, order: HeatmapOrder) -> None:
        rid = order.request_id
        with self._lock:
            if rid in self._cancelled:
                self._cancelled.discard(rid)
                return
        engine = self._load_engine(rid, order.settings)
        if engine is None:
            return
        try:
            if hasattr(engine, "for_category"):  # same prompt as the propagation
                engine = engine.for_category(order.category)
            from annotator.gui.heatmap_job import similarity_map

            heat = similarity_map(engine, order)
            self.heatmap_ready.emit(rid, heat)
        except Exception as exc:
            log.error("heatmap %d failed:\n%s", rid, traceback.format_exc())
            self.failed.emit(rid, "error", f"Heatmap: {type(exc).__name__}: {exc}")

    def _report_cache(self, settings: ProjectSettings) -> None:
        stats_fn = getattr(self._engine, "cache_stats", None)
        try:
            stats = stats_fn() if stats_fn is not None else None
        except Exception:  # a cache problem must not break the run
            log.warning("cache statistics unavailable", exc_info=True)
            stats = None
        if stats is not None:
            self.cache_usage.emit(int(stats.disk_bytes))
        elif settings.cache_dir:
            self.cache_usage.emit(folder_size(settings.cache_dir))


class WorkerController(QObject):
    """GUI-side handle of the worker: request ids, stale-result filtering, cancel, join."""

    model_state = Signal(str, str)
    run_started = Signal(int)  # total is unknown until the worker reports
    run_progress = Signal(int, int, str)  # done, total, message
    prediction_ready = Signal(object)
    run_finished = Signal(str)  # outcome
    error = Signal(str, str)  # kind, message
    heatmap_ready = Signal(object)
    cache_usage = Signal(object)
    preloaded = Signal()
    training_started = Signal()
    trained = Signal(object)  # facts of the head just saved (EngineWorker.run_training)
    training_finished = Signal(str)  # outcome: "done", "cancelled", "failed"
    training_error = Signal(str, str)  # kind ("training", "models", "error"), message
    head_info = Signal(object)  # facts of the saved head, or None

    _send_propagate = Signal(object)
    _send_train = Signal(object)
    _send_head_info = Signal(object)
    _send_detect = Signal(object)
    _send_heatmap = Signal(object)
    _send_factory = Signal(object)
    _send_preload = Signal()
    _send_preloader = Signal(object)

    def __init__(
        self,
        engine_factory: EngineFactory | None = None,
        parent: QObject | None = None,
        preloader: Preloader | None = None,
    ):
        """``preloader`` imports the model stack before the first engine is built (and on
        :meth:`preload`); None skips that step."""
        super().__init__(parent)
        self._next_id = 0
        self._run_id: int | None = None
        self._heatmap_id: int | None = None
        self._train_id: int | None = None
        self._head_info_id: int | None = None
        self._thread = QThread()
        self._thread.setObjectName("annotator-engine-worker")
        _LIVE_THREADS.add(self._thread)
        self._worker = EngineWorker(engine_factory, preloader)
        self._worker.moveToThread(self._thread)
        self._send_preload.connect(self._worker.preload)
        self._send_preloader.connect(self._worker.set_preloader)
        self._send_propagate.connect(self._worker.run_propagation)
        self._send_detect.connect(self._worker.run_detection)
        self._send_train.connect(self._worker.run_training)
        self._send_head_info.connect(self._worker.read_head_info)
        self._worker.trained.connect(self._on_trained)
        self._worker.head_info.connect(self._on_head_info)
        self._send_heatmap.connect(self._worker.compute_heatmap)
        self._send_factory.connect(self._worker.set_factory)
        self._worker.model_state.connect(self.model_state)
        self._worker.progress.connect(self._on_progress)
        self._inbox = self._worker.inbox  # emptied on this thread (see collect)
        self._worker.results_waiting.connect(self.collect)
        self._worker.finished.connect(self._on_finished)
        self._worker.failed.connect(self._on_failed)
        self._worker.heatmap_ready.connect(self._on_heatmap)
        self._worker.cache_usage.connect(self.cache_usage)
        self._worker.preloaded.connect(self.preloaded)
        self._thread.finished.connect(self._worker.deleteLater)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """True while a propagation is queued or running."""
        return self._run_id is not None

    @property
    def training(self) -> bool:
        """True while a retrain is queued or running."""
        return self._train_id is not None

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # -------------------------------------------------------------- requests
    def set_engine_factory(self, engine_factory: EngineFactory | None) -> None:
        """Use ``engine_factory`` (None: the real engine) for the requests sent after this.

        It travels to the worker thread in the same queue as the orders, so a run already
        queued keeps the engine it was sent for and the next one gets the new factory.
        """
        self._send_factory.emit(engine_factory)

    def set_preloader(self, preloader: Preloader | None) -> None:
        """Use ``preloader`` for the next preload (queued like the orders)."""
        self._send_preloader.emit(preloader)

    def preload(self) -> None:
        """Ask the worker to import the model stack now, ahead of the first run (queued
        behind any order already sent)."""
        self._send_preload.emit()

    def propagate(self, project: Project, targets: list[str] | None = None,
                  snapshot: ProjectSnapshot | None = None) -> int:
        """Start propagating from a snapshot of ``project`` (``snapshot``: taken by the
        caller just now, which keeps it too); cancels any run in progress."""
        if self._run_id is not None:
            self.cancel()
        rid = self._new_id()
        self._run_id = rid
        t = tuple(targets) if targets is not None else None
        snap = ProjectSnapshot.of(project) if snapshot is None else snapshot
        self._send_propagate.emit(PropagateOrder(rid, snap, t))
        self.run_started.emit(rid)
        return rid

    def detect(self, project: Project, targets: list[str] | None = None) -> int:
        """Start zero-shot box detection on a snapshot of ``project`` (it is a run: progress,
        cancel and results like a propagation); cancels any run in progress."""
        from annotator.jobs.detect import DetectRequest

        if self._run_id is not None:
            self.cancel()
        rid = self._new_id()
        self._run_id = rid
        request = DetectRequest.from_project(project, targets)
        self._send_detect.emit(DetectOrder(rid, request, ImageSource.of(project,
                                                                        request.targets)))
        self.run_started.emit(rid)
        return rid

    def retrain(self, project: Project, params: object | None = None) -> int:
        """Train the project's head from a snapshot of ``project`` on the worker, queued
        behind any run already sent; supersedes (cancels) a retrain still pending.
        ``params``: an annotator.matching.head.HeadParams (None: its defaults)."""
        self.cancel_training()
        rid = self._new_id()
        self._train_id = rid
        self._send_train.emit(TrainOrder(rid, ProjectSnapshot.of(project), params))
        self.training_started.emit()
        return rid

    def cancel_training(self) -> None:
        """Cancel the pending or running retrain; its result is dropped."""
        rid, self._train_id = self._train_id, None
        if rid is not None:
            self._worker.request_cancel(rid)
            self.training_finished.emit("cancelled")

    def request_head_info(self, project: Project) -> int:
        """Ask the worker what the project's saved head was trained on (``head_info``);
        only the newest request's answer is delivered."""
        rid = self._new_id()
        self._head_info_id = rid
        self._send_head_info.emit(HeadInfoOrder(rid, project.image_root, project.schema,
                                                project.settings))
        return rid

    def request_heatmap(
        self, project: Project, reference: str, point: tuple[float, float], target: str
    ) -> int:
        """Ask for a similarity heatmap; only the newest request's result is delivered."""
        if self._heatmap_id is not None:
            self._worker.request_cancel(self._heatmap_id)
        rid = self._new_id()
        self._heatmap_id = rid
        self._send_heatmap.emit(
            HeatmapOrder(rid, project.image_root, project.settings, reference, point, target,
                         project.schema.name, ImageSource.of(project, (reference, target)))
        )
        return rid

    def cancel_heatmap(self) -> None:
        if self._heatmap_id is not None:
            self._worker.request_cancel(self._heatmap_id)
            self._heatmap_id = None

    def cancel(self) -> None:
        """Cancel the current run; the results that arrived are delivered, later ones are
        dropped."""
        self.collect()
        rid, self._run_id = self._run_id, None
        if rid is not None:
            self._worker.request_cancel(rid)
            self.run_finished.emit("cancelled")

    def shutdown(self, timeout_ms: int = 120_000) -> bool:
        """Cancel everything, stop the thread and join it; returns whether it stopped."""
        self._worker.request_stop()
        self.cancel()
        self.cancel_heatmap()
        self.cancel_training()
        self._head_info_id = None
        if not self._thread.isRunning():
            return True
        self._thread.quit()
        ok = self._thread.wait(timeout_ms)
        if not ok:
            log.error("worker thread did not stop within %d ms", timeout_ms)
        return bool(ok)

    # --------------------------------------------------------------- results
    def _deliver(self, rid: int, request: str, signal: SignalInstance, *args: object,
                 last: bool = False) -> None:
        """Re-emit a worker result on ``signal`` when ``rid`` is the request whose id is held in
        attribute ``request``; ``last``: the result ends that request."""
        if rid != getattr(self, request):
            return
        if last:
            setattr(self, request, None)
        signal.emit(*args)

    def _on_progress(self, rid: int, done: int, total: int, message: str) -> None:
        self._deliver(rid, "_run_id", self.run_progress, done, total, message)

    def collect(self) -> None:
        """Deliver the results the worker has streamed so far (``prediction_ready`` for
        each of the current run, in order, then its latest progress); stale ones are
        dropped. Cheap: the GUI applies them later, in bounded slices."""
        progress = None
        for rid, done, total, message, res in self._inbox.take():
            if rid == self._run_id:
                self.prediction_ready.emit(res)
                progress = (done, total, message)
        if progress is not None:
            self.run_progress.emit(*progress)

    def _on_finished(self, rid: int, outcome: str) -> None:
        self.collect()  # the last results before the outcome (already, by event order)
        if rid == self._train_id:
            self._train_id = None
            self.training_finished.emit(outcome)
        if rid == self._run_id:
            self._run_id = None
            self.run_finished.emit(outcome)

    def _on_failed(self, rid: int, kind: str, message: str) -> None:
        if rid == self._train_id:
            self.training_error.emit(kind, message)
        if rid in (self._run_id, self._heatmap_id):
            if rid == self._heatmap_id:
                self._heatmap_id = None
            self.error.emit(kind, message)

    def _on_heatmap(self, rid: int, heat: object) -> None:
        self._deliver(rid, "_heatmap_id", self.heatmap_ready, heat, last=True)

    def _on_trained(self, rid: int, info: object) -> None:
        self._deliver(rid, "_train_id", self.trained, info)

    def _on_head_info(self, rid: int, info: object) -> None:
        self._deliver(rid, "_head_info_id", self.head_info, info, last=True)
