"""The video timeline and the window's video actions (offscreen)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication

from annotator.domain.schema import KeypointSchema
from annotator.gui.gallery import ERROR_ROLE
from annotator.io.video import VideoReader
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    make_window,
    no_thread_leaks,
    qt_isolated,
    show_image,
)
from tests.video_util import OPENFIELD_VIDEO, write_video

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")
SCHEMA = KeypointSchema("mouse", ("snout", "tail"))


def _wait(cond, timeout=10.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        QApplication.processEvents()
        time.sleep(0.002)


def test_scrubbing_the_openfield_timeline_never_stalls_the_gui(qtbot):
    from annotator.gui.video_panel import VideoTimeline

    timeline = VideoTimeline(max_side=320)
    qtbot.addWidget(timeline)
    timeline.show()
    assert timeline.set_video(str(OPENFIELD_VIDEO), 0)
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 2330, 150).tolist() + list(range(1200, 1260))
    gaps, last = [], [time.perf_counter()]

    def beat() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    heart = QTimer()
    heart.setInterval(5)
    heart.timeout.connect(beat)
    scrub = QTimer()
    scrub.setInterval(8)
    scrub.timeout.connect(lambda: timeline.slider.setValue(targets.pop(0)) if targets else None)
    heart.start()
    scrub.start()
    _wait(lambda: not targets, timeout=30)
    timeline.slider.setValue(1234)
    _wait(lambda: timeline.shown == (str(OPENFIELD_VIDEO), 1234), timeout=10)
    heart.stop()
    scrub.stop()
    worst = max(gaps[1:])
    assert worst < 0.050, f"GUI stalled {worst * 1000:.0f} ms while scrubbing"
    assert 0 < timeline.decoder.decoded < 212  # stale requests were dropped, not queued
    with VideoReader(OPENFIELD_VIDEO) as reader:
        truth = reader.read(1234)
    shown = timeline.preview.pixmap().toImage()
    assert (shown.width(), shown.height()) == (320, 240)
    px = shown.pixelColor(160, 120)
    import cv2

    small = cv2.resize(truth, (320, 240), interpolation=cv2.INTER_AREA)
    assert np.abs(np.array([px.red(), px.green(), px.blue()]) - small[120, 160]).max() <= 1
    timeline.shutdown()


def test_window_video_project_timeline_and_missing_video(qtbot, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", n=40)
    window = make_window(qtbot)
    path = str(tmp_path / "clip.kpproj")
    assert window.video.create_project([str(clip)], SCHEMA, path, n=4, method="uniform")
    project = window.project
    assert [r.frame for r in project.images] == [0, 13, 26, 39]
    model = window.editor.gallery.model
    names = [model.data(model.index(row, 0), Qt.ItemDataRole.DisplayRole)
             for row in range(model.rowCount())]
    assert sorted(names) == ["clip #0", "clip #13", "clip #26", "clip #39"]
    show_image(window, "clip/img26.png")
    timeline = window.video.timeline
    assert window.video.dock.isVisible()
    assert timeline.slider.value() == 26 and timeline.slider.maximum() == 39
    _wait(lambda: timeline.shown == (str(clip.resolve()), 26))
    timeline.slider.setValue(30)
    added = window.video.add_frame(str(clip), 30)
    assert added == "clip/img30.png" and project.image(added).frame == 30
    # a frame added after the project was shown decodes through the project's records
    show_image(window, added)
    assert window.editor.canvas.image_size == (64, 48)
    _wait(lambda: window.loader.pixmap(added) is not None)
    assert window.loader.error(added) is None
    window.save()
    window.close_project()
    clip.rename(tmp_path / "moved.mp4")
    reopened = window.open_project(path)
    assert reopened is not None and len(reopened) == 5  # the project still opens
    show_image(window, "clip/img13.png")
    _wait(lambda: model.data(model.index(model.row_of("clip/img13.png"), 0), ERROR_ROLE))
    assert "clip.mp4: file not found" in model.data(model.index(model.row_of("clip/img13.png"),
                                                                0), ERROR_ROLE)
    assert "clip.mp4: file not found" in window.video.timeline.preview.text()
    assert window.video.timeline.label.text() == "video unreadable"


def test_export_coco_of_a_video_project_writes_the_frames_beside_the_file(qtbot, tmp_path):
    import json

    from annotator.domain.annotation import ImageAnnotation, ImageStatus, Instance, Keypoint
    from annotator.io.images import load_image

    clip = write_video(tmp_path / "clip.mp4", n=30)
    window = make_window(qtbot)
    path = str(tmp_path / "clip.kpproj")
    assert window.video.create_project([str(clip)], SCHEMA, path, n=3, method="uniform")
    project = window.project
    labelled = project.images[1]  # frame 14
    kps = (Keypoint(3.0, 4.0, 2), Keypoint(5.0, 6.0, 2))
    project.set_annotation(labelled.path, ImageAnnotation((Instance(kps),),
                                                          ImageStatus.REFERENCE), "label")
    out = tmp_path / "export" / "k.json"
    out.parent.mkdir()
    with qtbot.waitSignal(window.exporter.finished, timeout=30_000) as finished:
        assert window.export_coco(str(out))
    assert finished.args[1] == "" and finished.args[2] == 1
    doc = json.loads(out.read_text())
    assert [im["file_name"] for im in doc["images"]] == [labelled.path]
    written = out.parent / labelled.path  # the frame, decoded losslessly, beside the file
    with VideoReader(clip) as reader:
        assert np.array_equal(load_image(written), reader.read(labelled.frame))
    assert sorted(p.name for p in (out.parent / "clip").iterdir()) == [Path(written).name]
    # a missing video is named, not a traceback, and no COCO file is left half-made
    clip.rename(tmp_path / "gone.mp4")
    other = tmp_path / "export2" / "k.json"
    other.parent.mkdir()
    with qtbot.waitSignal(window.exporter.finished, timeout=30_000) as failed:
        assert window.export_coco(str(other))
    assert "clip.mp4: file not found" in failed.args[1]
    assert not other.exists()
    window.close()


def test_propagation_in_the_window_decodes_video_frames(qtbot, tmp_path):
    from annotator.domain.annotation import ImageAnnotation, ImageStatus, Instance, Keypoint

    clip = write_video(tmp_path / "clip.mp4", n=30, w=128, h=96)
    window = make_window(qtbot)
    assert window.video.create_project([str(clip)], SCHEMA, str(tmp_path / "c.kpproj"), n=3,
                                       method="uniform")
    project = window.project
    ref = project.images[0].path
    kps = (Keypoint(30.0, 40.0, 2), Keypoint(64.0, 48.0, 2))
    project.set_annotation(ref, ImageAnnotation((Instance(kps),), ImageStatus.REFERENCE),
                           "label")
    with qtbot.waitSignal(window.controller.run_finished, timeout=30_000) as finished:
        assert window.propagate()
    assert finished.args == ["done"]
    window.flush_predictions()
    assert sorted(project.paths_with_status(ImageStatus.PREDICTED)) == [
        r.path for r in project.images[1:]]
    window.close()
