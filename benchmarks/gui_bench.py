"""GUI part of ``annotator bench`` (offscreen Qt, run in a child process by the CLI).

Measures the real MainWindow, built by :func:`annotator.bench.gui_support.open_window` (isolated:
no recent-files entry, no autosave, nothing of the user's QSettings touched):

- ``open_seconds``: ``load_project`` of an N-image project file (one small JPEG hard-linked N
  times: the gallery loads thumbnails lazily, so the content does not matter) plus building and
  showing the window with the gallery populated (one event-loop pass, so laid out and painted);
  ``first_thumbnails_seconds``: from the same start until the thumbnails on screen are decoded;
- ``max_stall_open_ms``: the longest event-loop stall during 1 s after opening;
- ``max_stall_scroll_ms``: the same while the gallery scrolls top to bottom in 60 steps, one
  every 16 ms, thumbnails loading (``thumbnails_decoded`` says how many were);
- ``worst_first_sort_ms``, ``review_filter_ms``, ``back_to_all_ms``: re-sorting the gallery
  worst first, filtering "needs review" and back (one event-loop pass each); with
  ``--instances N`` every image holds N predicted instances with boxes, and both use the worst
  instance;
- ``max_stall_ctrl_s_ms``, ``max_stall_autosave_ms``, ``max_stall_edit_stream_ms``: the same
  around Ctrl+S, an autosave after one edit and 3 s of edits (10/s) with autosaves, every image
  holding predictions (see :func:`measure_saving`); ``save_seconds``: Ctrl+S until written;
- ``max_stall_worker_ms``: the same while the worker thread propagates a reference to
  ``--worker-images`` real small images (views cropped, scaled, mirrored and dimmed from the demo
  photographs) with the weight-free content engine (``fast`` preset, hard argmax); predictions
  stream into the project and the gallery every 250 ms as in normal use. ``worker_seconds``,
  ``worker_images`` and ``worker_images_per_s`` describe that run (one-off included);
  ``worker_one_off_seconds`` (until the engine is built), ``worker_steady_images_per_s`` (the
  images after it) and ``worker_projected_seconds_10000_images`` (one-off + 10,000 / steady
  rate) keep one-off and steady-state costs apart; the stall is also split into
  ``max_stall_worker_engine_load_ms`` (start until the engine is built: the worker thread
  imports torch, whose C initialisation holds the GIL) and ``max_stall_worker_images_ms``.

- ``max_stall_export_ms``: the same while File > Export writes all N images as predicted
  (``--images``, every image carrying a prediction, all exported) from a snapshot on a pool
  thread; ``export_snapshot_ms`` is the part on the GUI thread, ``export_seconds`` the whole
  export, ``export_on_gui_thread_seconds`` the same export run on the GUI thread (the stall
  it used to cause);
- ``max_stall_model_import_ms``: the same while the worker imports the model stack (torch,
  OpenCV, transformers, diffusers and the classes the SD + DINOv2 engine uses) the way the
  window does (``--import-mode steps``: :func:`annotator.jobs.preload.preload_model_stack`)
  or all at once as before (``--import-mode plain``), before any engine is built;
  ``model_import_seconds`` is how long that took. Skipped with ``--import-mode none``.

A stall is the gap between ticks of a 2 ms timer, less the 2 ms. Writes JSON to --out (flat
keys: ``annotator bench`` prints them as they are).

    QT_QPA_PLATFORM=offscreen python benchmarks/gui_bench.py --images 10000 --out gui.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "resources" / "demo"


def make_project(folder: Path, n: int, instances: int = 0) -> Path:
    """An ``n``-image project file over hard links to one small JPEG; with ``instances``,
    every image holds that many predicted instances (boxes, one still a detection with its
    score, keypoints with confidences)."""
    from PIL import Image

    from annotator.domain.schema import KeypointSchema
    from annotator.io.project_file import new_project, save_project

    img_dir = folder / "images"
    img_dir.mkdir()
    first = img_dir / "img_000000.jpg"
    Image.new("RGB", (320, 240), (120, 80, 40)).save(first, quality=80)
    for i in range(1, n):
        dst = img_dir / f"img_{i:06d}.jpg"
        try:
            os.link(first, dst)
        except OSError:
            dst.write_bytes(first.read_bytes())
    schema = KeypointSchema("object", ("nose", "left_eye", "right_eye"), flip_pairs=((1, 2),))
    project = new_project(img_dir, schema)
    if instances > 0:
        project = _with_instances(project, instances)
    path = folder / "bench.kpproj"
    save_project(project, path)
    return path


def _with_instances(project, per_image: int, seed: int = 0):  # noqa: ANN001, ANN202
    """``project`` with ``per_image`` predicted instances on every image."""
    import numpy as np

    from annotator.domain import ImageAnnotation, ImageStatus, Instance, Keypoint, Project
    from annotator.domain.annotation import Origin, Visibility

    rng = np.random.default_rng(seed)
    k = len(project.schema)
    annotations = {}
    next_id = 1
    for rec in project.images:
        insts = []
        for j in range(per_image):
            x, y = float(rng.uniform(0, 200)), float(rng.uniform(0, 140))
            kps = tuple(Keypoint(x + float(rng.uniform(0, 100)), y + float(rng.uniform(0, 80)),
                                 Visibility.VISIBLE, Origin.PREDICTED,
                                 float(rng.uniform(0.2, 1.0))) for _ in range(k))
            score = float(rng.uniform(0.3, 1.0)) if j == per_image - 1 else None
            insts.append(Instance(kps, (x, y, 100.0, 80.0), score, next_id))
            next_id += 1
        annotations[rec.path] = ImageAnnotation(tuple(insts), ImageStatus.PREDICTED)
    return Project(project.image_root, project.images, project.schema, annotations,
                   project.settings)


def make_worker_project(folder: Path, n: int, seed: int = 0):  # noqa: ANN201
    """The demo project (its labelled reference and schema) plus ``n`` distinct small views
    of its photographs: random crops, scales (longer side 160-320 px), mirrors, brightness."""
    import numpy as np
    from PIL import Image, ImageEnhance, ImageOps

    from annotator.domain import ImageRecord, Project
    from annotator.io.project_file import load_project

    demo = load_project(DEMO / "demo.kpproj.json")
    img_dir = folder / "images"
    img_dir.mkdir(parents=True)
    sources = []
    for rec in demo.images:
        src = Path(demo.image_root) / rec.path
        (img_dir / rec.path).write_bytes(src.read_bytes())
        with Image.open(src) as im:
            sources.append(im.convert("RGB"))
    rng = np.random.default_rng(seed)
    records = [ImageRecord(r.path, r.width, r.height) for r in demo.images]
    for i in range(n):
        im = sources[i % len(sources)]
        w, h = im.size
        f = rng.uniform(0.6, 1.0)
        cw, ch = int(w * f), int(h * f)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        view = im.crop((x0, y0, x0 + cw, y0 + ch))
        side = int(rng.integers(160, 321))
        view.thumbnail((side, side))
        if rng.random() < 0.5:
            view = ImageOps.mirror(view)
        view = ImageEnhance.Brightness(view).enhance(float(rng.uniform(0.7, 1.2)))
        name = f"view_{i:04d}.jpg"
        view.save(img_dir / name, quality=85)
        records.append(ImageRecord(name, view.width, view.height))
    project = Project(str(img_dir), records, demo.schema, demo.annotations(), demo.settings)
    return project


def measure_saving(win, project, path: Path, result: dict, beat) -> None:  # noqa: ANN001
    """Save stalls at ``len(project)`` predicted images: the window's real autosaver (edit
    journal + background saves) on ``path``. Ctrl+S, autosave after one edit, and a stream of
    edits (10 per second for 3 s, autosaving meanwhile); ``save_seconds`` is Ctrl+S to done."""
    from annotator.bench.gui_support import run_for, run_until
    from annotator.domain import ImageAnnotation, ImageStatus, Instance, Keypoint, Origin

    k = len(project.schema)
    kps = tuple(Keypoint(10.0 + j, 20.0 + j, 2, Origin.PREDICTED, 0.5) for j in range(k))
    pred = ImageAnnotation((Instance(kps),), ImageStatus.PREDICTED)
    project.set_annotations({r.path: pred for r in project.images}, "bench predictions")
    win.project_path = str(path)
    win._autosave_delay = 0.5
    t = time.perf_counter()
    win.attach_autosaver(str(path))  # the SQLite store: every edit a transaction
    result["save_attach_seconds"] = time.perf_counter() - t
    saver = win.autosaver
    first = project.images[0].path
    beat.start()
    run_for(1.0)
    result["max_stall_idle_before_saving_ms"] = beat.stop_ms()  # this machine's noise floor

    def saved() -> bool:
        return not saver.saving and not saver.dirty

    stalls, seconds = [], []
    for i in range(3):
        project.move_keypoint(first, 0, 30.0 + i, 40.0)
        run_for(0.05)  # the edit's own repaint is not the save's
        beat.start()
        t = time.perf_counter()
        win.save()
        run_until(saved, 30.0, poll_ms=2)
        seconds.append(time.perf_counter() - t)
        run_for(0.1)
        stalls.append(beat.stop_ms())
    result["max_stall_ctrl_s_ms"] = max(stalls)
    result["save_seconds"] = max(seconds)
    stalls = []
    for i in range(3):
        beat.start()
        project.move_keypoint(first, 1, 50.0 + i, 40.0)
        run_until(lambda: saver.dirty is False and not saver.saving, 30.0, poll_ms=2)
        run_for(0.1)
        stalls.append(beat.stop_ms())
    result["max_stall_autosave_ms"] = max(stalls)
    beat.start()
    for i in range(30):  # a steady clicker: journal appends, autosaves at the max wait
        project.move_keypoint(project.images[i].path, 0, 5.0 + i, 6.0)
        run_for(0.1)
    run_until(saved, 30.0, poll_ms=2)
    result["max_stall_edit_stream_ms"] = beat.stop_ms()
    result["saves_done"] = saver.saves
    win.autosaver.close()
    win.autosaver = None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--worker-images", type=int, default=300,
                    help="targets of the propagation timed on the worker (0: skip)")
    ap.add_argument("--instances", type=int, default=0,
                    help="predicted instances (with boxes) per image of the big project")
    ap.add_argument("--import-mode", choices=("steps", "plain", "none"), default="steps",
                    help="how the worker imports the model stack (see the docstring)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(ROOT))
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from annotator.bench.gui_support import (
        StallMeter,
        content_engine_factory,
        open_window,
        run_for,
        run_until,
    )
    from annotator.gui.thumbnails import busy_thumbnail_threads
    from annotator.io.project_file import load_project

    result: dict[str, object] = {"images": args.images, "instances_per_image": args.instances,
                                 "platform": os.environ.get("QT_QPA_PLATFORM")}

    def save() -> None:  # after each phase, so a crash keeps what was measured
        args.out.write_text(json.dumps(result, indent=2))

    with tempfile.TemporaryDirectory(prefix="annotator-gui-") as tmp:
        t = time.perf_counter()
        path = make_project(Path(tmp), args.images, args.instances)
        result["project_build_seconds"] = time.perf_counter() - t
        app = QApplication.instance() or QApplication([])
        app.processEvents()

        # ---- open
        t = time.perf_counter()
        cpu = time.process_time()
        project = load_project(path)
        win = open_window(project)
        result["open_seconds"] = time.perf_counter() - t
        # CPU time of the process over the same span: the figure without the other
        # processes of a shared machine (thumbnail threads included)
        result["open_cpu_seconds"] = time.process_time() - cpu
        gallery = win.editor.gallery
        result["loaded_images"] = gallery.model.rowCount()
        loader = win.loader
        run_until(lambda: busy_thumbnail_threads() == 0 and not loader._stack, 10.0, poll_ms=2)
        result["first_thumbnails_seconds"] = time.perf_counter() - t
        beat = StallMeter()
        beat.start()
        run_for(1.0)
        result["max_stall_open_ms"] = beat.stop_ms()
        result["scroll"] = "crashed or did not finish"
        save()

        # ---- scroll
        bar = gallery.view.verticalScrollBar()
        steps = 60
        state = {"i": 0}

        def step() -> None:
            state["i"] += 1
            bar.setValue(int(bar.maximum() * state["i"] / steps))

        scroller = QTimer()
        scroller.setInterval(16)
        scroller.timeout.connect(step)
        beat.start()
        scroller.start()
        run_for(steps * 0.016 + 0.5)
        scroller.stop()
        run_until(lambda: busy_thumbnail_threads() == 0, 10.0)
        result["max_stall_scroll_ms"] = beat.stop_ms()
        result["scroll_range"] = bar.maximum()
        result["thumbnails_decoded"] = len(loader._cache)
        result["scroll"] = "done"
        save()

        # ---- re-sort worst first and filter "needs review" (worst instance of every image)
        from annotator.gui.gallery import GalleryFilter, GallerySort

        for key, change in (("worst_first_sort_ms", lambda: gallery.sort_box.setCurrentText(
                                 GallerySort.WORST_FIRST.value)),
                            ("review_filter_ms", lambda: gallery.filter_box.setCurrentText(
                                 GalleryFilter.NEEDS_REVIEW.value)),
                            ("back_to_all_ms", lambda: gallery.filter_box.setCurrentText(
                                 GalleryFilter.ALL.value))):
            t, cpu = time.perf_counter(), time.process_time()
            change()
            app.processEvents()
            result[key] = (time.perf_counter() - t) * 1000
            result[key.replace("_ms", "_cpu_ms")] = (time.process_time() - cpu) * 1000
            result[key.replace("_ms", "_rows")] = gallery.model.rowCount()
        save()

        # ---- saving at N predicted images (Ctrl+S, autosave, edit journal)
        result["saving"] = "crashed or did not finish"
        measure_saving(win, project, path, result, beat)
        result["saving"] = "done"
        save()

        # ---- export of N predicted images
        from annotator.domain import ImageAnnotation, ImageStatus, Instance, Keypoint, Origin
        from annotator.io.coco import ExportChoice, ExportScope, write_coco

        result["export"] = "crashed or did not finish"
        k = len(project.schema)
        predictions = {}
        for i, rec in enumerate(project.images):
            kp = Keypoint(10.0 + i % 300, 20.0, 2, Origin.PREDICTED, (i % 997) / 997)
            predictions[rec.path] = ImageAnnotation((Instance((kp,) * k),),
                                                    ImageStatus.PREDICTED)
        project.set_annotations(predictions, "Propagate")
        app.processEvents()
        run_for(0.5)  # the gallery repaints
        choice = ExportChoice(ExportScope.PREDICTIONS)
        exported: list[tuple] = []
        win.exporter.finished.connect(lambda *a: exported.append(a))
        beat.start()
        t = time.perf_counter()
        win.export_coco(str(Path(tmp) / "export.json"), choice)
        result["export_snapshot_ms"] = (time.perf_counter() - t) * 1000
        run_until(lambda: bool(exported), 300.0, poll_ms=2)
        result["export_seconds"] = time.perf_counter() - t
        result["max_stall_export_ms"] = beat.stop_ms()
        result["stalls_over_50ms_export"] = beat.long_stalls
        result["export"] = "done" if exported and not exported[0][1] else str(exported)
        t = time.perf_counter()
        write_coco(project, Path(tmp) / "export_gui_thread.json", choice)
        result["export_on_gui_thread_seconds"] = time.perf_counter() - t
        save()

        # ---- model-stack import on the worker, before any engine
        if args.import_mode != "none":
            beat.start()  # the machine's own noise, for comparison (it may be shared)
            run_for(3.0)
            result["max_stall_idle_ms"] = beat.stop_ms()
            result["stalls_over_50ms_idle"] = beat.long_stalls
            result["model_import"] = "crashed or did not finish"
            from annotator.jobs import preload as stack

            def plain(_cancelled: object) -> None:  # the old way: one import after another
                for step in stack.MODULE_STEPS:
                    name, _, attr = step.partition(":")
                    module = __import__(name, fromlist=["_"])
                    if attr:
                        getattr(module, attr)

            chosen = stack.preload_model_stack if args.import_mode == "steps" else plain
            win.controller.set_preloader(lambda cancelled: chosen(cancelled))
            imported: list[bool] = []
            win.controller.preloaded.connect(lambda: imported.append(True))
            beat.start()
            t = time.perf_counter()
            win.controller.preload()
            run_until(lambda: bool(imported), 600.0, poll_ms=2)
            result["model_import_seconds"] = time.perf_counter() - t
            result["max_stall_model_import_ms"] = beat.stop_ms()
            result["stalls_over_50ms_model_import"] = beat.long_stalls
            result["model_import_mode"] = args.import_mode
            result["model_import"] = "done" if imported else "did not finish"
            save()

        # ---- propagation on the worker
        if args.worker_images > 0:
            result["worker"] = "crashed or did not finish"
            t = time.perf_counter()
            wproject = make_worker_project(Path(tmp) / "worker", args.worker_images)
            result["worker_project_build_seconds"] = time.perf_counter() - t
            win.set_project(wproject, None)
            app.processEvents()
            run_until(lambda: busy_thumbnail_threads() == 0, 10.0)
            outcome: list[str] = []
            loading: dict[str, float] = {}

            def on_progress(_done: int, _total: int, _message: str) -> None:
                if not loading:  # the first report: the engine is built, images follow
                    loading["stall_ms"] = beat.stop_ms()
                    loading["seconds"] = time.perf_counter() - t
                    beat.start()

            win.controller.run_finished.connect(outcome.append)
            win.controller.run_progress.connect(on_progress)
            targets = len(wproject) - len(wproject.reference_paths())
            beat.start()
            t = time.perf_counter()
            started = win.start_propagation(content_engine_factory)
            finished = started and run_until(lambda: bool(outcome), 600.0)
            result["worker_seconds"] = time.perf_counter() - t
            running_ms = beat.stop_ms()
            result["max_stall_worker_ms"] = max(running_ms, loading.get("stall_ms", 0.0))
            # first run: the worker thread imports the engine stack (torch) before any image
            result["worker_engine_load_seconds"] = loading.get("seconds")
            result["max_stall_worker_engine_load_ms"] = loading.get("stall_ms")
            result["max_stall_worker_images_ms"] = running_ms
            done = sum(1 for p in wproject.images
                       if wproject.annotation(p.path).status.value == "predicted")
            result["worker_images"] = done
            result["worker_targets"] = targets
            result["worker_images_per_s"] = done / max(1e-9, float(result["worker_seconds"]))
            # one-off (engine import and build, before the first image) apart from the steady
            # rate; a projection for N images is one-off + N / steady rate
            load_s = float(loading.get("seconds") or 0.0)
            result["worker_one_off_seconds"] = load_s
            steady_s = float(result["worker_seconds"]) - load_s
            result["worker_steady_images_per_s"] = done / steady_s if steady_s > 0 else None
            if result["worker_steady_images_per_s"]:
                result["worker_projected_seconds_10000_images"] = (
                    load_s + 10000 / float(result["worker_steady_images_per_s"]))
            result["worker"] = outcome[0] if finished and outcome else "did not finish"
            save()
        else:
            result["worker"] = "skipped (--worker-images 0)"
        win.shutdown()
        win.close()
    save()
    print(json.dumps(result, indent=2), flush=True)
    os._exit(0)  # skip Qt/Python finalisation (PySide6 can crash while tearing down)


if __name__ == "__main__":
    raise SystemExit(main())
