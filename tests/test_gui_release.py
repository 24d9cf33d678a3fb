"""Issue 22: a closed big project is freed on a background thread, taken apart entry by
entry, and never while anything else still refers to it."""

from __future__ import annotations

import weakref

import pytest

from annotator.domain import ImageRecord, KeypointSchema, Project
from annotator.domain.annotation import ImageAnnotation, ImageStatus, Instance, Keypoint
from annotator.gui.release import drop_in_background
from tests.test_gui_support import make_window, qt_isolated  # noqa: F401 (fixture)


def _project(n: int = 3000) -> Project:
    schema = KeypointSchema("cat", ("a", "b"))
    images = [ImageRecord(f"{i:05d}.jpg") for i in range(n)]
    kp = Keypoint(1.0, 2.0)
    anns = {r.path: ImageAnnotation((Instance((kp, kp)),), ImageStatus.REFERENCE)
            for r in images}
    return Project("/x", images, schema, anns)


def test_a_dropped_project_is_freed_on_the_thread():
    project = _project()
    project.set_status(project.images[0].path, ImageStatus.REVIEWED)  # a history cycle
    project.history.clear()
    gone = weakref.ref(project)
    first = weakref.ref(project.annotation(project.images[1].path))
    shared = project._images  # still used by someone else: left whole
    thread = drop_in_background(project)
    del project
    thread.join(10)
    assert not thread.is_alive()
    assert gone() is None and first() is None
    assert len(shared) == 3000 and shared[7].path == "00007.jpg"


def test_a_project_still_referred_to_is_left_whole():
    project = _project()
    thread = drop_in_background(project, wait_s=0.05)
    thread.join(10)
    assert len(project) == 3000 and len(project.annotations()) == 3000
    assert project.annotation(project.images[5].path).status == ImageStatus.REFERENCE


def test_frees_wait_while_paused():
    import time

    from annotator.gui.release import paused

    project = _project(6000)
    first = weakref.ref(project.annotation(project.images[0].path))  # freed last
    with paused():
        thread = drop_in_background(project)
        del project
        time.sleep(0.3)
        assert first() is not None  # at most a first few hundred entries freed meanwhile
    thread.join(10)
    assert first() is None


def test_a_hold_keeps_the_frees_waiting_until_released_once_from_any_thread():
    import threading
    import time

    from annotator.gui.release import frees_held, hold_frees, paused

    project = _project(6000)
    first = weakref.ref(project.annotation(project.images[0].path))  # freed last
    held = hold_frees()
    with paused():  # nested with a block: the hold still counts after it
        pass
    thread = drop_in_background(project)
    del project
    time.sleep(0.3)
    assert first() is not None and frees_held() == 1
    other = threading.Thread(target=held.release)
    other.start()
    other.join()
    held.release()  # again: nothing (it would let another hold's frees go on)
    assert frees_held() == 0
    thread.join(10)
    assert not thread.is_alive() and first() is None


def test_undo_steps_are_freed_first_a_piece_at_a_time_and_release_the_project():
    import threading

    project = _project()
    paths = [r.path for r in project.images[:1500]]
    kp = Keypoint(3.0, 4.0)
    replaced = weakref.ref(project.annotation(paths[0]))  # after the edit: the step's alone
    project.set_annotations({p: ImageAnnotation((Instance((kp, kp)),), ImageStatus.REVIEWED)
                             for p in paths}, "Propagate")
    freed_on: list[str] = []
    weakref.finalize(replaced(), lambda: freed_on.append(threading.current_thread().name))
    before, after = project.history.top.payload  # held here too: emptied in place
    steps = project.history.take()
    assert not project.history.can_undo and len(steps) == 1
    gone = weakref.ref(project)
    thread = drop_in_background(project, steps=steps)
    del project, steps
    thread.join(10)
    assert not thread.is_alive()
    assert freed_on == ["drop-project"] and replaced() is None
    assert before == {} and after == {}
    assert gone() is None  # the steps referred to it (a cycle): taken apart after them


def test_nothing_is_freed_while_paused_not_even_the_first_steps():
    """The window drops the old project's parts while it switches projects (inside
    ``paused()``); a free sharing the GIL with the switch made it twice as long."""
    import time
    from types import SimpleNamespace

    from annotator.gui.release import paused

    class Thing:
        pass

    payload = {i: Thing() for i in range(600)}
    newest = weakref.ref(payload[599])  # the first one taken apart
    steps = [SimpleNamespace(payload=(payload,))]
    del payload
    project = _project()
    with paused():
        thread = drop_in_background(project, steps=steps)
        del project, steps
        time.sleep(0.3)
        assert newest() is not None
    thread.join(10)
    assert not thread.is_alive() and newest() is None


def test_drops_are_freed_by_threads_started_once_side_by_side():
    """A thread start per close or open cost the GUI thread 2-4 ms while a project loaded:
    drops go to long-lived threads and start none; several are freed side by side (one
    thread for all queued a close's frees for 15-20 s at 100,000 x 3)."""
    import threading

    from annotator.gui.release import FREEING_THREADS, frees_pending, start_freeing

    start_freeing()
    threads = set(threading.enumerate())
    freeing = {t.ident for t in threads if t.name == "drop-project"}
    assert len(freeing) == FREEING_THREADS
    # one still referred to holds a thread for its wait_s; the ones after it go on
    held = _project(2000)
    waiting = drop_in_background(held, wait_s=30)
    freed_on: list[int | None] = []
    handles = []
    for _ in range(3):
        project = _project(2000)
        weakref.finalize(project.annotation(project.images[0].path),
                         lambda: freed_on.append(threading.get_ident()))
        handles.append(drop_in_background(project))
        del project
        assert set(threading.enumerate()) == threads
    for handle in handles:
        handle.join(10)
        assert not handle.is_alive()
    assert waiting.is_alive() and frees_pending() == 1
    del held
    waiting.join(10)
    assert not waiting.is_alive()
    assert len(freed_on) == 3 and set(freed_on) <= freeing
    assert frees_pending() == 0 and set(threading.enumerate()) == threads


def test_a_failing_free_does_not_stop_the_thread(caplog):
    steps = [type("Step", (), {"payload": property(lambda self: 1 / 0)})()]
    bad = drop_in_background(object(), steps=steps)
    bad.join(10)
    assert not bad.is_alive() and "freeing a closed project failed" in caplog.text
    project = _project()
    gone = weakref.ref(project)
    after = drop_in_background(project)
    del project
    after.join(10)
    assert gone() is None


@pytest.mark.usefixtures("qt_isolated")
def test_a_big_projects_old_review_counts_are_freed_off_the_gui_thread(qtbot, monkeypatch):
    """Replacing 100,000 review categories freed them on the GUI thread (1-2 ms of the
    open's handlers); they go to the freeing thread like the rest of a closed project."""
    from annotator.gui import main_window

    handed: list[object] = []
    monkeypatch.setattr(main_window, "drop_in_background", lambda obj, **_: handed.append(obj))
    window = make_window(qtbot)
    old = {f"{i}.jpg": 1 for i in range(main_window.DROP_IN_BACKGROUND_IMAGES)}
    window.set_review_counts(old)
    window.set_review_counts({f"{i}.jpg": 2 for i in range(10)})
    assert handed and handed[-1] is old
    assert window._counted == (0, 10)
    handed.clear()
    window.set_review_counts({"a.jpg": 1})  # a small one is simply dropped
    assert handed == []
    window.close()
