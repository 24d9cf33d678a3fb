"""Gallery at scale, schema editing, startup cost and small helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from PySide6.QtCore import Qt

from annotator.domain import (
    ImageAnnotation,
    ImageRecord,
    ImageStatus,
    Keypoint,
    KeypointSchema,
    Project,
    Visibility,
)
from annotator.gui.gallery import GalleryFilter, GalleryPanel, GallerySort
from annotator.gui.progress import RateEstimator, format_duration
from annotator.gui.schema_dialog import SchemaDialog
from annotator.gui.thumbnails import ThumbnailLoader
from tests.builders import one_instance, predicted
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    DEMO_IMAGES,
    ROOT,
    no_thread_leaks,
    qt_isolated,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")
SCHEMA = KeypointSchema("thing", ("a", "b"))


def big_project(tmp_path, n: int) -> Project:  # noqa: ANN001
    """``n`` images (hard links to one small JPEG), a third of them predicted."""
    folder = tmp_path / "many"
    folder.mkdir()
    src = DEMO_IMAGES / "chelsea_small.jpg"
    records = []
    annotations = {}
    for i in range(n):
        name = f"img_{i:05d}.jpg"
        os.link(src, folder / name)
        records.append(ImageRecord(name))
        if i % 3 == 0:
            kp = predicted(5, 5, (i * 7919 % 1000) / 1000)
            annotations[name] = one_instance((kp, kp), ImageStatus.PREDICTED)
    return Project(str(folder), records, SCHEMA, annotations)


def empty_panel(qtbot, height: int = 700) -> tuple[ThumbnailLoader, GalleryPanel]:  # noqa: ANN001
    """A gallery panel, 400 pixels wide, on screen, with no project yet."""
    loader = ThumbnailLoader()
    panel = GalleryPanel(loader)
    qtbot.addWidget(panel)
    panel.resize(400, height)
    panel.show()
    qtbot.waitExposed(panel)
    return loader, panel


def shown_panel(qtbot, project: Project) -> tuple[ThumbnailLoader, GalleryPanel]:  # noqa: ANN001
    """:func:`empty_panel` showing ``project``, its first layout done."""
    loader, panel = empty_panel(qtbot)
    loader.set_root(project.image_root)
    panel.model.set_project(project)
    qtbot.wait(200)
    return loader, panel


def test_gallery_with_10000_images_stays_fast(qtbot, tmp_path):  # noqa: ANN001
    project = big_project(tmp_path, 10_000)
    loader, panel = empty_panel(qtbot, 900)
    loader.set_root(project.image_root)
    t = time.perf_counter()
    panel.model.set_project(project)
    qtbot.wait(1)
    t_open = time.perf_counter() - t
    t = time.perf_counter()
    panel.sort_box.setCurrentText(GallerySort.WORST_FIRST.value)
    t_sort = time.perf_counter() - t
    first = panel.model.path_at(0)
    assert project.annotation(first).worst_confidence() == min(
        a.worst_confidence() for a in project.annotations().values()
    )
    panel.filter_box.setCurrentText(GalleryFilter.NEEDS_REVIEW.value)
    assert 0 < panel.model.rowCount() < 3334
    panel.filter_box.setCurrentText(GalleryFilter.ALL.value)
    # scroll through everything; each step must stay short, decodes happen off the GUI thread
    bar = panel.view.verticalScrollBar()
    worst = 0.0
    for value in range(0, bar.maximum() + 1, max(1, bar.maximum() // 50)):
        t = time.perf_counter()
        bar.setValue(value)
        qtbot.wait(5)
        worst = max(worst, time.perf_counter() - t)
    qtbot.waitUntil(lambda: loader.active_threads == 0, timeout=10_000)
    cached = len(loader._cache)
    print(f"\n10,000 images: open {t_open * 1000:.0f} ms, sort worst-first {t_sort * 1000:.0f} ms, "
          f"longest scroll step {worst * 1000:.0f} ms, thumbnails decoded {cached}")
    assert t_open < 2.0 and t_sort < 2.0
    assert 0 < cached < 2000  # only what was on screen, not the whole folder
    loader.stop()


def test_thumbnails_load_off_thread_and_report_unreadable(qtbot, tmp_path):  # noqa: ANN001
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    loader = ThumbnailLoader()
    loader.set_root(str(DEMO_IMAGES.parent / "images"))
    assert loader.pixmap("chelsea.jpg") is None  # not yet: scheduled
    with qtbot.waitSignal(loader.loaded, timeout=5000):
        pass
    assert loader.pixmap("chelsea.jpg") is not None
    loader.set_root(str(tmp_path))
    loader.pixmap("bad.jpg")
    with qtbot.waitSignal(loader.loaded, timeout=5000):
        pass
    assert "bad.jpg" in (loader.error("bad.jpg") or "")
    loader.stop()


def test_schema_dialog_keeps_annotations_consistent(qtbot):  # noqa: ANN001
    schema = KeypointSchema("cat", ("left_eye", "right_eye", "nose"), flip_pairs=((0, 1),))
    kps = tuple(Keypoint(float(i), 0.0, Visibility.VISIBLE) for i in range(3))
    project = Project("/x", [ImageRecord("a.jpg")], schema,
                      {"a.jpg": one_instance(kps, ImageStatus.REFERENCE)})
    dialog = SchemaDialog(schema)
    qtbot.addWidget(dialog)
    assert dialog.move_keypoint(2, -1)  # nose before right_eye
    assert dialog.remove_keypoint(0)  # drop left_eye (and its flip pair)
    assert dialog.add_keypoint("mouth")
    dialog.table.item(1, 0).setText("right_eye_renamed")  # in-place rename
    assert dialog.schema.keypoints == ("nose", "right_eye_renamed", "mouth")
    assert dialog.schema.flip_pairs == ()
    assert not dialog.add_keypoint("nose")  # duplicate: refused with a message
    assert "twice" in dialog.error_label.text()
    project.set_schema(dialog.schema, dialog.index_map)
    got = project.annotation("a.jpg").instances[0].keypoints
    assert [k.x for k in got[:2]] == [2.0, 1.0] and not got[2].labelled
    project.undo()
    assert project.schema == schema


def test_rate_estimator():
    now = [0.0]
    rate = RateEstimator(10, clock=lambda: now[0])
    assert rate.text() == "0 / 10 images"
    now[0] = 4.0
    rate.update(2)
    assert rate.rate == pytest.approx(0.5) and rate.eta == pytest.approx(16.0)
    assert rate.text() == "2 / 10 images, 0.50 img/s, 16 s left"
    assert format_duration(3725) == "1:02:05"


def test_startup_is_fast_and_imports_no_torch():
    code = (
        "import os, sys, time; os.environ['QT_QPA_PLATFORM'] = 'offscreen'\n"
        "t = time.perf_counter()\n"
        "from PySide6.QtWidgets import QApplication\n"
        "from annotator.gui.main_window import MainWindow\n"
        "app = QApplication([]); w = MainWindow(); w.show(); app.processEvents()\n"
        "print(f'{time.perf_counter() - t:.3f}')\n"
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'annotator.engine', "
        "'annotator.jobs.propagate') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "w.close()\n"
    )
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    total = time.perf_counter() - t
    print(f"\nstartup: window shown {float(out.stdout.strip()) * 1000:.0f} ms after import "
          f"start; whole process {total * 1000:.0f} ms")
    assert float(out.stdout.strip()) < 2.0


def test_keyboard_navigation(qtbot, tmp_path):  # noqa: ANN001
    from tests.test_gui_support import make_window, open_demo_project

    window = make_window(qtbot)
    open_demo_project(window, tmp_path)
    editor = window.editor
    start = editor.current_path
    qtbot.keyClick(editor.canvas, Qt.Key.Key_PageDown)
    assert editor.current_path != start
    qtbot.keyClick(editor.canvas, Qt.Key.Key_PageUp)
    assert editor.current_path == start
    k = editor.current_keypoint
    qtbot.keyClick(editor.canvas, Qt.Key.Key_BracketRight)
    assert editor.current_keypoint == k + 1
    assert editor.keypoints.currentRow() == k + 1
    window.close()


@pytest.mark.parametrize("sort", list(GallerySort))
@pytest.mark.parametrize("filt", [GalleryFilter.ALL, GalleryFilter.NEEDS_REVIEW,
                                  GalleryFilter.PREDICTED, GalleryFilter.REVIEWED])
def test_live_refresh_moves_changed_images_where_a_full_sort_puts_them(
        qtbot, tmp_path, sort, filt):  # noqa: ANN001
    """Edits re-sort by moving only the changed images (a full re-sort of 10,000 images cost
    15-60 ms per edit): after every batch of random edits the rows equal a full recompute, the
    first edit included; a bulk change (more than INCREMENTAL_MAX images) re-sorts in full."""
    import random

    from annotator.gui import gallery as gallery_mod

    project = big_project(tmp_path, 300)
    loader = ThumbnailLoader()
    model = gallery_mod.GalleryModel(loader)
    model.set_project(project)
    model.set_sort(sort)
    model.set_filter(filt)
    full_calls = []
    real = model._compute_rows
    model._compute_rows = lambda: full_calls.append(1) or real()  # type: ignore[method-assign]
    rng = random.Random(f"{sort}{filt}")
    paths = [r.path for r in project.images]
    for step in range(60):
        changed = set(rng.sample(paths, rng.choice([1, 1, 2, 5])))
        for path in changed:
            what = rng.random()
            if what < 0.4:
                conf = round(rng.random(), 3)
                kp = predicted(5, 5, conf)
                project.set_annotation(path, one_instance((kp, kp), ImageStatus.PREDICTED),
                                       "pred")
            elif what < 0.7:
                project.set_status(path, ImageStatus.REVIEWED)
            else:
                project.set_annotation(path, ImageAnnotation((), ImageStatus.UNLABELLED), "clear")
        model.images_changed(changed)  # what the editor does after an edit
        model.refresh(model.take_stale())
        rows = [model.path_at(i) for i in range(model.rowCount())]
        assert rows == real()[0], f"step {step}"
    assert full_calls == []  # every refresh above moved the changed images only
    many = set(paths[: gallery_mod.INCREMENTAL_MAX + 1])
    for path in many:
        project.set_status(path, ImageStatus.REVIEWED)
    model.images_changed(many)
    model.refresh(model.take_stale())
    assert len(full_calls) == 1
    assert [model.path_at(i) for i in range(model.rowCount())] == real()[0]
    loader.stop()


def test_live_refresh_under_the_unreadable_filter_sees_thumbnail_failures(qtbot, tmp_path):  # noqa: ANN001
    """A thumbnail failure is not an edit: under "Unreadable" a live refresh after an edit of
    another image still shows the newly unreadable image (a full re-sort there). Found by review."""
    from annotator.gui.gallery import GalleryModel

    project = big_project(tmp_path, 20)
    loader = ThumbnailLoader()
    model = GalleryModel(loader)
    model.set_project(project)
    model.set_filter(GalleryFilter.UNREADABLE)
    assert model.rowCount() == 0
    paths = [r.path for r in project.images]
    loader.mark_unreadable(paths[3], "broken")
    project.set_status(paths[7], ImageStatus.REVIEWED)
    model.images_changed({paths[7]})
    model.refresh(model.take_stale())
    assert [model.path_at(i) for i in range(model.rowCount())] == [paths[3]]
    model.set_filter(GalleryFilter.ALL)
    model.refresh([paths[7], paths[7]])  # the same image twice is one change
    assert model.rowCount() == 20
    loader.stop()


@pytest.mark.parametrize("sort", [GallerySort.WORST_FIRST, GallerySort.STATUS])
def test_a_live_refresh_moves_a_long_stream_of_changes_a_slice_per_tick(qtbot, tmp_path, sort):  # noqa: ANN001
    """A propagation stream changes thousands of images between two live refreshes: each
    refresh moves at most INCREMENTAL_MAX of them into place (no full re-sort, which holds the
    GUI thread for a few hundred ms at 100,000 images) and asks for the next; once the
    backlog is drained the rows equal a full sort. Edits arriving meanwhile join the backlog."""
    from annotator.gui import gallery as gallery_mod

    project = big_project(tmp_path, 1200)
    loader = ThumbnailLoader()
    model = gallery_mod.GalleryModel(loader)
    model.set_project(project)
    model.set_sort(sort)
    full_calls = []
    real = model._compute_rows
    model._compute_rows = lambda: full_calls.append(1) or real()  # type: ignore[method-assign]
    asked = []
    model.order_stale.connect(lambda: asked.append(1))
    paths = [r.path for r in project.images]
    stream = paths[100:1100]  # 1,000 predictions, confidences falling with the index
    for i, path in enumerate(stream):
        kp = predicted(5, 5, round(1 - i / 1000, 4))
        project.set_annotation(path, one_instance((kp, kp), ImageStatus.PREDICTED), "pred")
    model.images_changed(set(stream))
    ticks = 0
    while True:
        asked.clear()
        stale = model.take_stale()
        if not stale:
            break
        ticks += 1
        if ticks == 2:  # an edit between two ticks joins the backlog
            project.set_status(paths[0], ImageStatus.REVIEWED)
            model.images_changed({paths[0]})
        model.refresh(stale, live=True)
        assert bool(asked) == bool(model._stale)  # more to do: another tick asked for
    assert ticks == -(-1001 // gallery_mod.INCREMENTAL_MAX)  # 4 slices of at most 256
    assert full_calls == []
    assert [model.path_at(i) for i in range(model.rowCount())] == real()[0]
    # without ``live`` (a user's refresh) a long change list still re-sorts in full at once
    for path in stream[:300]:
        project.set_status(path, ImageStatus.REVIEWED)
    model.refresh(set(stream[:300]))
    assert len(full_calls) == 1 and model.take_stale() == set()
    assert [model.path_at(i) for i in range(model.rowCount())] == real()[0]
    loader.stop()


def test_gallery_layout_does_not_call_the_python_model_per_row(qtbot, tmp_path, monkeypatch):  # noqa: ANN001
    """The list view lays items out with index(row) for every row; on the Python model each
    such call runs rowCount in Python and takes the GIL back from any busy worker (seconds of
    frozen window at 100,000 images during an export). Through the panel's proxy a full
    relayout and a re-sort stay in C++: far fewer Python calls than rows."""
    from annotator.gui.gallery import GalleryModel

    calls = [0]
    plain = GalleryModel.rowCount

    def counting(self, parent=None):  # noqa: ANN001, ANN202
        calls[0] += 1
        return plain(self) if parent is None else plain(self, parent)

    monkeypatch.setattr(GalleryModel, "rowCount", counting)
    n = 3000
    project = big_project(tmp_path, n)
    loader, panel = shown_panel(qtbot, project)
    assert panel.proxy.rowCount() == n  # every image is in the view
    calls[0] = 0
    panel.view.doItemsLayout()  # a full relayout, as after a resize
    panel.sort_box.setCurrentText(GallerySort.WORST_FIRST.value)  # every row moves
    qtbot.wait(300)  # the batched layout runs its course
    assert calls[0] < n // 10
    # the view still shows and selects the model's rows
    path = panel.model.path_at(n - 1)
    panel.select(path)
    assert panel.view.currentIndex().row() == n - 1
    assert panel.view.visualRect(panel.view_index(n - 1)).isValid()
    panel.select(panel.model.path_at(0))
    assert panel._current == panel.model.path_at(0)


def test_a_whole_project_change_repaints_the_tiles_without_walking_every_row(qtbot, tmp_path):  # noqa: ANN001
    """A whole-project change (settings, schema, the full load of a preview) repaints the
    tiles on show; a ``dataChanged`` over every row made the icon view and its proxy walk
    all of them (7 ms at 100,000 rows)."""
    from PySide6.QtCore import QEvent, QObject

    project = big_project(tmp_path, 3000)
    loader, panel = shown_panel(qtbot, project)

    class Paints(QObject):
        count = 0

        def eventFilter(self, obj, event):  # noqa: ANN001, ANN202, N802
            if event.type() == QEvent.Type.Paint:
                self.count += 1
            return False

    paints = Paints()
    panel.view.viewport().installEventFilter(paints)
    ranges: list[tuple[int, int]] = []
    panel.proxy.dataChanged.connect(lambda a, b, *_: ranges.append((a.row(), b.row())))
    qtbot.waitUntil(lambda: loader.active_threads == 0, timeout=10_000)
    qtbot.wait(100)
    paints.count = 0
    panel.model.images_changed(frozenset(), live=False)
    qtbot.waitUntil(lambda: paints.count > 0, timeout=2000)
    assert ranges == []
    loader.stop()


def test_a_big_gallerys_replaced_rows_are_freed_off_the_gui_thread(qtbot, tmp_path, monkeypatch):  # noqa: ANN001
    """Closing a big project hands its rows (10^5 keys and tuples) to the freeing threads;
    a full load that keeps the preview's rows hands over only what it replaces."""
    from annotator.gui import gallery
    from annotator.gui.gallery import prepare_order

    handed: list[list] = []
    monkeypatch.setattr(gallery, "drop_in_background", lambda obj, **_: handed.append(obj))
    monkeypatch.setattr(gallery, "RELEASE_ROWS", 50)
    project = big_project(tmp_path, 60)
    loader, panel = shown_panel(qtbot, project)
    order = prepare_order(project)
    panel.model.set_project(project, order=order)
    handed.clear()
    panel.model.set_project(project, order=prepare_order(project, like=order))  # kept
    assert len(handed) == 1 and all(part is not order.rows for part in handed[0])
    assert panel.model.path_at(59) == project.images[59].path
    panel.model.set_project(None)  # closed
    assert len(handed) == 2 and any(part is order.rows for part in handed[1])
    assert panel.model.rowCount() == 0
    loader.stop()
