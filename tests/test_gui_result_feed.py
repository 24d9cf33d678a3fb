"""Prediction streaming: the worker's results coalesce in an inbox and the GUI thread
applies them in bounded slices, in order, none lost (also when the window closes)."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import numpy as np
import pytest

from annotator.domain import ImageStatus, Keypoint, KeypointSchema, Origin, Visibility
from annotator.gui.result_feed import BoundedFeed, ResultInbox
from tests.builders import blank_images
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    make_window,
    no_thread_leaks,
    qt_isolated,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_inbox_wakes_once_per_burst_and_keeps_order():
    inbox: ResultInbox[int] = ResultInbox()
    wakes = [inbox.put(i) for i in range(5)]
    assert wakes == [True, False, False, False, False]  # one wake for the burst
    assert inbox.take() == [0, 1, 2, 3, 4] and len(inbox) == 0
    assert inbox.put(5) is True  # empty again: the next one wakes the reader

    def writer() -> None:
        for i in range(6, 2006):
            inbox.put(i)

    t = threading.Thread(target=writer)
    t.start()
    got = []
    while t.is_alive() or len(inbox):
        got += inbox.take()
    t.join()
    got += inbox.take()
    assert got == list(range(5, 2006))  # across threads: every item, in order


def test_feed_applies_a_budgeted_slice_per_drain_and_everything_on_flush():
    clock = FakeClock()
    applied: list[list[int]] = []

    def apply(batch: list[int]) -> None:
        applied.append(batch)
        clock.t += 0.004  # each chunk costs 4 ms

    feed: BoundedFeed[int] = BoundedFeed(apply, chunk=3, budget_s=0.010, clock=clock)
    feed.extend(list(range(20)))
    assert feed.drain() == 9  # 3 chunks reach the 10 ms budget (4, 8, 12 ms)
    assert applied == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and len(feed) == 11
    feed.extend([20, 21])  # arrivals queue behind the backlog
    assert feed.drain() == 9
    assert feed.flush() == 4
    assert [i for b in applied for i in b] == list(range(22))  # every one, in order
    assert max(len(b) for b in applied) <= 3
    slow = BoundedFeed(lambda b: setattr(clock, "t", clock.t + 1.0), chunk=2, clock=clock)
    slow.extend([1, 2, 3])
    assert slow.drain() == 2  # at least one chunk, even over budget
    assert slow.drain() == 1 and slow.drain() == 0


N_IMAGES = 60
SCHEMA = KeypointSchema("dot", ("a", "b"))


def many_image_window(qtbot, tmp_path):  # noqa: ANN001, ANN201
    root = tmp_path / "imgs"
    blank_images(root, {f"im{i:03d}.png": (24, 16) for i in range(N_IMAGES)}, 40)
    window = make_window(qtbot)
    path = tmp_path / "many.kpproj"
    project = window.new_project(str(root), SCHEMA, str(path))
    assert project is not None
    ref = project.images[0].path
    for j in range(2):
        project.set_keypoint(ref, j, Keypoint(3.0 + j, 4.0, Visibility.VISIBLE, Origin.MANUAL))
    project.set_status(ref, ImageStatus.REFERENCE)
    return window, project, path


def instant_results(monkeypatch, hold: threading.Event | None = None):  # noqa: ANN001, ANN201
    """Replace the propagation job by one that yields a prediction per target at once (far
    faster than a GUI tick), x = the target's index; with ``hold``, then waits for cancel
    (the run stays open) after setting ``hold``."""
    from annotator.jobs import propagate as job

    def run(request, engine, state, loader=None, head=None):  # noqa: ANN001, ANN202
        for i, target in enumerate(request.targets):
            path = getattr(target, "path", target)
            yield job.Prediction(str(path), np.array([[float(i), 1.0], [float(i), 2.0]]),
                                 np.array([0.9, 0.8]), np.ones(2, bool), np.zeros(2, bool),
                                 (24, 16))
        if hold is not None:
            hold.set()
            while not state.is_cancelled():
                time.sleep(0.01)

    monkeypatch.setattr(job, "run_propagation", run)


def test_results_faster_than_a_tick_are_applied_in_slices_in_order(qtbot, tmp_path,
                                                                   monkeypatch):
    window, project, _path = many_image_window(qtbot, tmp_path)
    hold = threading.Event()
    instant_results(monkeypatch, hold)
    window._pending.chunk, window._pending.budget_s = 4, 0.0  # one 4-image slice a tick
    batches: list[list[str]] = []
    apply = window._pending._apply
    window._pending._apply = lambda b: (batches.append([p.path for p in b]), apply(b))
    ticks = [0]  # batches applied so far, after each tick
    for timer in (window.flush_timer, window.catch_up_timer):
        timer.timeout.connect(lambda: ticks.append(len(batches)))
    delivered = []
    window.controller.prediction_ready.connect(lambda p: delivered.append(p.path))
    targets = [r.path for r in project.images[1:]]

    assert window.propagate()
    assert hold.wait(20)  # all results produced at once; the run stays open
    qtbot.waitUntil(lambda: len(delivered) == len(targets), timeout=20_000)
    assert delivered == targets  # every result crossed the thread, in order
    qtbot.waitUntil(lambda: sum(map(len, batches)) == len(targets), timeout=20_000)
    assert window.controller.busy  # applied by the ticks, not by the end of the run
    assert all(b - a <= 1 for a, b in zip(ticks, ticks[1:]))  # one slice per tick
    assert len(ticks) > len(targets) // 4  # so it took many ticks
    assert max(len(b) for b in batches) <= 4
    applied = [p for b in batches for p in b]
    assert applied == targets  # all of them, once each, in arrival order
    for i, path in enumerate(targets):
        kp = project.annotation(path).instances[0].keypoints[0]
        assert (kp.x, kp.origin) == (float(i), Origin.PREDICTED)
    with qtbot.waitSignal(window.controller.run_finished, timeout=5000):
        window.cancel_propagation()
    window.close()


def test_results_waiting_when_the_window_closes_are_saved(qtbot, tmp_path, monkeypatch):
    window, project, path = many_image_window(qtbot, tmp_path)
    hold = threading.Event()
    instant_results(monkeypatch, hold)
    window._pending.chunk, window._pending.budget_s = 1, 0.0  # a slow GUI: a big backlog
    assert window.propagate()
    assert hold.wait(20)  # every result is in the inbox or delivered; the run stays open
    qtbot.wait(30)
    applied = sum(project.status(r.path) == ImageStatus.PREDICTED for r in project.images)
    assert applied < N_IMAGES - 1  # a backlog is still waiting
    window.close()  # cancels the run, applies what arrived, saves

    again = make_window(qtbot)
    reopened = again.open_project(str(path))
    assert reopened is not None
    targets = [r.path for r in reopened.images[1:]]
    assert [reopened.status(p) for p in targets] == [ImageStatus.PREDICTED] * len(targets)
    assert [reopened.annotation(p).instances[0].keypoints[0].x for p in targets] == [
        float(i) for i in range(len(targets))]
    again.close()



def finished_with_a_backlog(qtbot, tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    """A window whose run ends with every result still waiting: no tick during the run,
    one 4-image slice per tick after it. Returns (window, project, targets, at_end) where
    ``at_end`` holds (predicted images, run_active) seen just after the worker's end."""
    window, project, _path = many_image_window(qtbot, tmp_path)
    instant_results(monkeypatch)
    window._pending.chunk, window._pending.budget_s = 4, 0.0
    window.flush_timer.setInterval(600_000)  # nothing applied while the worker runs
    targets = [r.path for r in project.images[1:]]
    at_end: list[tuple[int, bool]] = []
    window.controller.run_finished.connect(lambda _o: at_end.append(  # never keeps project
        (len(window.project.paths_with_status(ImageStatus.PREDICTED)), window.run_active)))
    return window, project, targets, at_end


def test_a_finished_runs_backlog_is_applied_over_ticks(qtbot, tmp_path, monkeypatch):
    window, project, targets, at_end = finished_with_a_backlog(qtbot, tmp_path, monkeypatch)
    ticks = []
    window.catch_up_timer.timeout.connect(lambda: ticks.append(
        len(project.paths_with_status(ImageStatus.PREDICTED))))
    with qtbot.waitSignal(window.run_ended, timeout=30_000) as ended:
        assert window.propagate()
    assert ended.args == ["done"]
    assert at_end == [(4, True)]  # the worker's end applied one slice, not the backlog
    assert len(ticks) >= (len(targets) - 4) // 4  # the rest, one slice per tick
    assert all(b - a <= 4 for a, b in zip(ticks, ticks[1:]))
    assert not window.run_active and not window.cancel_button.isVisible()
    assert "finished" in window.statusBar().currentMessage()
    for i, path in enumerate(targets):  # every prediction, in order
        kp = project.annotation(path).instances[0].keypoints[0]
        assert (kp.x, kp.origin) == (float(i), Origin.PREDICTED)
    assert project.history.undo_text == "Propagate"
    project.undo()  # the whole run, over all its ticks, is one undo step
    assert project.paths_with_status(ImageStatus.PREDICTED) == []
    window.close()


def test_a_new_run_first_applies_the_backlog_of_the_last(qtbot, tmp_path, monkeypatch):
    window, project, targets, at_end = finished_with_a_backlog(qtbot, tmp_path, monkeypatch)
    ended: list[str] = []
    window.run_ended.connect(ended.append)
    with qtbot.waitSignal(window.controller.run_finished, timeout=30_000):
        assert window.propagate()
    assert window.run_active and at_end == [(4, True)] and ended == []
    assert window.propagate(targets[:1])  # the next run: the last one's results first
    assert ended == ["done"]
    assert len(project.paths_with_status(ImageStatus.PREDICTED)) == len(targets)
    project.undo()  # the first run is its own undo step
    with qtbot.waitSignal(window.run_ended, timeout=30_000):
        pass
    window.close()


def test_cancel_while_the_backlog_is_applied_keeps_what_was_applied(qtbot, tmp_path,
                                                                    monkeypatch):
    window, project, targets, at_end = finished_with_a_backlog(qtbot, tmp_path, monkeypatch)
    path = window.project_path
    with qtbot.waitSignal(window.controller.run_finished, timeout=30_000):
        assert window.propagate()
    assert at_end == [(4, True)] and window.cancel_button.isVisible()
    assert window.act_cancel.isEnabled()
    qtbot.waitUntil(lambda: len(project.paths_with_status(ImageStatus.PREDICTED)) >= 12,
                    timeout=10_000)
    with qtbot.waitSignal(window.run_ended, timeout=1000) as ended:
        window.cancel_propagation()
    assert ended.args == ["cancelled"] and not window.run_active
    applied = project.paths_with_status(ImageStatus.PREDICTED)
    assert 12 <= len(applied) < len(targets) and applied == targets[:len(applied)]
    qtbot.wait(100)
    assert project.paths_with_status(ImageStatus.PREDICTED) == applied  # the rest dropped
    assert "cancelled" in window.statusBar().currentMessage()
    window.close()  # saved: what was applied is kept

    again = make_window(qtbot)
    reopened = again.open_project(str(path))
    assert reopened is not None
    assert reopened.paths_with_status(ImageStatus.PREDICTED) == applied
    again.close()


def test_a_run_repaints_only_the_rows_it_changed(qtbot, tmp_path, monkeypatch):
    window, project, _targets, _at_end = finished_with_a_backlog(qtbot, tmp_path, monkeypatch)
    model = window.editor.gallery.model
    targets = [r.path for r in project.images[10:20]]
    repainted: list[tuple[int, int]] = []
    model.dataChanged.connect(lambda top, bottom, roles=(): repainted.append(
        (top.row(), bottom.row())) if not roles else None)  # thumbnails name their roles
    with qtbot.waitSignal(window.run_ended, timeout=30_000):
        assert window.propagate(targets)
    assert repainted and all(top == bottom for top, bottom in repainted)  # never a range
    assert {model.path_at(top) for top, _ in repainted} <= set(targets)
    qtbot.waitUntil(lambda: not window.editor.gallery.live_timer.isActive(), timeout=5000)
    rows = [model.path_at(i) for i in range(model.rowCount())]
    model.refresh()  # the live re-sort left the rows where a full sort puts them
    assert [model.path_at(i) for i in range(model.rowCount())] == rows
    window.close()



def test_a_closed_project_is_not_kept_by_its_last_run(qtbot, tmp_path, monkeypatch):
    """The run's baseline (every annotation as the run started) goes with the run: it kept a
    closed project's annotations alive, freed all at once at the next run's start."""
    window, project, targets, _at_end = finished_with_a_backlog(qtbot, tmp_path, monkeypatch)
    with qtbot.waitSignal(window.run_ended, timeout=30_000):
        assert window.propagate()
    predicted_ann = weakref.ref(project.annotation(targets[-1]))
    reference_ann = weakref.ref(project.annotation(project.images[0].path))
    window.close_project()
    assert window.project is None
    qtbot.waitUntil(lambda: not window.closing)  # the views put away over the next turns
    del project
    gc.collect()
    assert predicted_ann() is None and reference_ann() is None
    window.close()


pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")


def test_a_run_on_a_big_project_freezes_its_copies_before_streaming(qtbot, tmp_path,
                                                                    monkeypatch):
    """A run's copies of a big project (the snapshot, the request made of it) are frozen
    before the results stream: no young collection walks them while the run lasts (at
    100,000 images, 31 ms holding the GIL for each). A small project's are not."""
    from annotator.gui import gc_pause
    from annotator.jobs import propagate as job

    window, project, _path = many_image_window(qtbot, tmp_path)
    seen: list[bool] = []

    def run(request, engine, state, loader=None, head=None):  # noqa: ANN001, ANN202
        tracked = [o for g in range(3) for o in gc.get_objects(g)]
        seen.append(not any(o is request for o in tracked))  # frozen: in no generation
        del tracked
        yield from ()

    monkeypatch.setattr(job, "run_propagation", run)
    for limit, frozen in ((len(project), True), (len(project) + 1, False)):
        monkeypatch.setattr(gc_pause, "FREEZE_IMAGES", limit)
        with qtbot.waitSignal(window.controller.run_finished, timeout=20_000):
            assert window.propagate()
        assert seen[-1] is frozen, limit
    window.close()


def test_the_window_freezes_a_big_run_s_baseline_when_it_starts(qtbot, tmp_path, monkeypatch):
    """The window's own copies for a run (the baseline its undo step starts from, the
    snapshot sent to the worker) are frozen on the GUI thread as the run starts, not only
    once the worker gets to it (a real engine loads for seconds meanwhile)."""
    from contextlib import nullcontext

    from annotator.gui import gc_pause
    from annotator.gui import worker as worker_module

    window, project, _path = many_image_window(qtbot, tmp_path)
    hold = threading.Event()
    instant_results(monkeypatch, hold)
    monkeypatch.setattr(worker_module, "made_and_frozen", lambda images: nullcontext())
    for limit, frozen in ((len(project), True), (len(project) + 1, False)):
        monkeypatch.setattr(gc_pause, "FREEZE_IMAGES", limit)
        hold.clear()
        assert window.propagate()
        tracked = [o for g in range(3) for o in gc.get_objects(g)]
        assert (not any(o is window._baseline for o in tracked)) is frozen, limit
        del tracked
        assert hold.wait(20)
        with qtbot.waitSignal(window.controller.run_finished, timeout=20_000):
            window.cancel_propagation()
    window.close()


def test_an_image_edited_during_a_run_keeps_the_users_points_and_one_copy_is_made(
        qtbot, tmp_path, monkeypatch):
    """The run's baseline is the snapshot the worker was sent (one copy of the project's
    annotations, not two: in fresh memory each cost the GUI thread up to 20 ms of faults
    at 100,000 images). An image the user edits while the run goes on keeps the edit, before
    or after the run's prediction for it landed; the others get theirs."""
    from annotator.domain.project import Project

    window, project, _path = many_image_window(qtbot, tmp_path)
    hold = threading.Event()
    instant_results(monkeypatch, hold)
    window._pending.chunk, window._pending.budget_s = 4, 0.0
    window.flush_timer.setInterval(600_000)  # slices applied only when the test says
    copies = [0]
    real = Project.annotations

    def counting(self):  # noqa: ANN001, ANN202
        copies[0] += 1
        return real(self)

    monkeypatch.setattr(Project, "annotations", counting)
    assert window.propagate()
    assert copies[0] == 1
    monkeypatch.setattr(Project, "annotations", real)
    assert hold.wait(20)
    targets = [r.path for r in project.images[1:]]
    window.controller.collect()
    qtbot.waitUntil(lambda: len(window._pending) >= len(targets), timeout=10_000)
    window.flush_predictions(bounded=True)  # the first four land
    landed, waiting = targets[1], targets[20]
    assert project.annotation(landed).status == ImageStatus.PREDICTED
    assert project.annotation(waiting).status == ImageStatus.UNLABELLED
    mine = Keypoint(11.0, 12.0, Visibility.VISIBLE, Origin.MANUAL)
    project.set_keypoint(waiting, 0, mine)
    window.flush_predictions()  # the rest
    assert project.annotation(waiting).instances[0].keypoints[0] == mine
    assert project.annotation(waiting).status != ImageStatus.PREDICTED
    for i, path in enumerate(targets):
        if path != waiting:
            kp = project.annotation(path).instances[0].keypoints[0]
            assert (kp.x, kp.origin) == (float(i), Origin.PREDICTED), path
    with qtbot.waitSignal(window.run_ended, timeout=20_000):
        window.cancel_propagation()
    assert window._applied == {} and len(window._baseline) == 0
    window.close()
