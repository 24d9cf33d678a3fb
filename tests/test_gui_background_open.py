"""Issue 22: a big store opens on a pool thread. The window keeps answering (its event loop
ticks throughout), shows the progress, can cancel, and shows the project when it is read."""

from __future__ import annotations

import threading
import time

import pytest
from PySide6.QtCore import QTimer

from annotator.domain import ImageRecord, ImageStatus, Keypoint, KeypointSchema, Origin, Project
from annotator.domain.annotation import ImageAnnotation, Instance, Visibility
from annotator.gui import main_window, recent
from annotator.gui.gallery import CONFIDENCE_ROLE, INSTANCES_ROLE, STATUS_ROLE
from annotator.gui.main_window import review_categories
from annotator.io.project_file import (
    load_project,
    project_to_dict,
    save_json_copy,
    save_project,
)
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    make_window,
    no_thread_leaks,
    qt_isolated,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")


def _big_store(tmp_path, n: int = 3000):  # noqa: ANN001, ANN202
    path = tmp_path / "big.kpproj"
    save_project(_big_project(tmp_path, n), path)
    return path


def _big_project(tmp_path, n: int) -> Project:  # noqa: ANN001
    schema = KeypointSchema("cat", tuple(f"k{i}" for i in range(8)))
    images = [ImageRecord(f"f/{i:05d}.jpg", 640, 480) for i in range(n)]
    anns = {}
    for i, rec in enumerate(images):
        kps = tuple(Keypoint(i % 600 + j, j * 10.0, Visibility.VISIBLE, Origin.PREDICTED,
                             (i * 7 + j) % 100 / 100) for j in range(8))
        anns[rec.path] = ImageAnnotation((Instance(kps, (1.0, 2.0, 30.0, 40.0), 0.8),
                                          Instance(kps)), ImageStatus.PREDICTED)
    (tmp_path / "images").mkdir()
    return Project(str(tmp_path / "images"), images, schema, anns)


def test_a_big_store_opens_in_the_background_with_progress(qtbot, tmp_path, monkeypatch):
    path = _big_store(tmp_path)
    counting_threads: list[str] = []
    count = main_window.count_categories

    def recorded(counts):  # noqa: ANN001, ANN202
        counting_threads.append(threading.current_thread().name)
        return count(counts)

    monkeypatch.setattr(main_window, "count_categories", recorded)
    window = make_window(qtbot)
    window.background_open_images = 1000
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    progress: list[int] = []
    window.opener.progress.connect(lambda _p, permille: progress.append(permille))
    with qtbot.waitSignal(window.opener.finished, timeout=60_000):
        t0 = time.perf_counter()
        assert window.open_project(str(path)) is None  # not read yet
        assert window.open_bar.isVisible() and window.open_cancel.isVisible()
        assert window.project is None
    t1 = time.perf_counter()
    timer.stop()
    # the GUI thread's event loop kept running while the store was read
    during = [t for t in ticks if t0 < t < t1]
    assert len(during) >= 5
    assert progress and progress == sorted(progress) and progress[-1] == 1000
    assert window.project is not None and window.project_path == str(path)
    assert not window.open_bar.isVisible()
    assert window.stack.currentWidget() is window.editor
    assert project_to_dict(window.project) == project_to_dict(load_project(path))
    # the review counts came from the pool thread (counted there too, 3-5 ms of the GUI
    # thread at 100,000 images) and agree with a recount
    assert counting_threads and "MainThread" not in counting_threads
    counted = window.review_counts()
    assert counted[1] == 3000 and counted[2] > 0
    window._counts_stale = True
    assert window.review_counts() == counted
    # edits are saved as usual
    first = window.project.images[0].path
    window.project.move_keypoint(first, 0, 3.0, 4.0)
    window.autosaver.flush()
    assert load_project(path).annotation(first).instances[0].keypoints[0].x == 3.0
    # the recent list is written once the project is on show
    qtbot.waitUntil(lambda: str(path) in recent.recent_projects(), timeout=5000)
    window.close()


def test_a_background_open_can_be_cancelled(qtbot, tmp_path):
    path = _big_store(tmp_path)
    before = path.read_bytes()
    window = make_window(qtbot)
    window.background_open_images = 1000
    with qtbot.waitSignal(window.opener.finished, timeout=60_000):
        window.open_project(str(path))
        window.open_cancel.click()
    assert window.project is None and not window.open_bar.isVisible()
    assert "cancelled" in window.statusBar().currentMessage()
    assert window.stack.currentWidget() is window.welcome
    assert path.read_bytes() == before
    window.close()


def test_a_damaged_big_store_is_reported(qtbot, tmp_path):
    import sqlite3

    path = _big_store(tmp_path)
    con = sqlite3.connect(path)
    con.execute("UPDATE instances SET keypoints = '[[1, 2, 2, \"guessed\"]]' WHERE idx = 0")
    con.commit()
    con.close()
    window = make_window(qtbot)
    window.background_open_images = 1000
    with qtbot.waitSignal(window.opener.finished, timeout=60_000):
        window.open_project(str(path))
    assert window.project is None
    level, _title, text = window.messages[-1]
    assert level == "error" and "guessed" in text and "big.kpproj" in text
    window.close()


def _blocked_full_load(monkeypatch):  # noqa: ANN001, ANN202
    """Hold the full load (not the gallery preview) until the returned event is set."""
    import threading

    from annotator.io import project_file

    release = threading.Event()
    real = project_file.open_project_file

    def held(path, progress=None):  # noqa: ANN001, ANN202
        assert release.wait(30), "the test never released the full load"
        return real(path, progress=progress)

    monkeypatch.setattr(project_file, "open_project_file", held)
    return release


def _with_reference(path, index: int = 3):  # noqa: ANN001, ANN202
    """Make image ``index`` of the store at ``path`` a labelled reference; returns it."""
    project = load_project(path)
    ref = project.images[index].path
    project.set_status(ref, ImageStatus.REFERENCE)
    save_project(project, path)
    return ref


def test_the_gallery_is_usable_before_the_full_load_arrives(qtbot, tmp_path, monkeypatch):
    path = _big_store(tmp_path, 1500)
    ref = _with_reference(path)
    expected = load_project(path)
    before = path.read_bytes()
    release = _blocked_full_load(monkeypatch)
    window = make_window(qtbot)
    window.background_open_images = 1000
    assert window.open_project(str(path)) is None
    qtbot.waitUntil(lambda: window.loading and window.project is not None, timeout=20_000)
    model = window.editor.gallery.model
    # the first image shows a turn of the event loop after the gallery
    qtbot.waitUntil(lambda: window.editor.current_path is not None, timeout=5000)
    assert window.editor.current_path == model.path_at(0)
    # every row is there, with what the store says of it (no keypoint decoded)
    assert model.rowCount() == 1500
    for row in (0, 7, 1499):
        p = model.path_at(row)
        ann = expected.annotation(p)
        idx = model.index(row)
        assert idx.data(STATUS_ROLE) == ann.status.value
        assert idx.data(CONFIDENCE_ROLE) == pytest.approx(ann.worst_confidence())
        assert idx.data(INSTANCES_ROLE) in (0, len(ann.instances))  # 0: not read yet
    cats = list(review_categories(expected).values())  # counted over the full project
    assert window.review_counts() == (cats.count(1), 1500, cats.count(2))
    assert "loading" in window.windowTitle() and window.open_bar.isVisible()
    assert "loading annotations" in window.open_bar.text()
    # navigation works and the image on show has its points (read from the store)
    assert window.act_next.isEnabled()
    first = window.editor.current_path
    window.act_next.trigger()
    current = window.editor.current_path
    assert current is not None and current != first
    assert window.project.annotation(current) == expected.annotation(current)
    assert any(kp.labelled for kp in window.editor._keypoints())
    # edits wait for the full load: refused, said so, nothing changes
    assert not window.act_accept.isEnabled() and not window.act_propagate.isEnabled()
    assert not window.act_save.isEnabled() and not window.act_export_as.isEnabled()
    messages: list[str] = []
    window.editor.message.connect(messages.append)
    window.editor.accept_image()
    window.editor._on_place(0, 5.0, 5.0)
    assert window.project.annotation(current) == expected.annotation(current)
    assert messages and "loading" in messages[-1]
    assert not window.project.history.can_undo
    assert path.read_bytes() == before
    # worst first, from the store's summary: the same order as over the full project
    window.editor.gallery.sort_box.setCurrentText("Worst first")
    predicted = [r.path for r in expected.images
                 if expected.annotation(r.path).status == ImageStatus.PREDICTED]
    worst = min(predicted, key=lambda p: (expected.annotation(p).worst_confidence(), p))
    assert model.path_at(0) == worst
    # the full load arrives: the same image stays on show, everything becomes editable
    with qtbot.waitSignal(window.opener.finished, timeout=60_000):
        release.set()
    assert not window.loading and window.project_path == str(path)
    assert window.editor.current_path == current
    assert project_to_dict(window.project) == project_to_dict(expected)
    assert window.act_accept.isEnabled() and window.act_propagate.isEnabled()
    assert "loading" not in window.windowTitle()
    assert window.editor.reference_pane._references() == [ref]
    assert window.editor.gallery.model.path_at(0) == worst
    assert window.retrainer.reviewed == 1
    # an edit made now is saved
    window.project.move_keypoint(current, 0, 3.0, 4.0)
    window.autosaver.flush()
    assert load_project(path).annotation(current).instances[0].keypoints[0].x == 3.0
    window.close()


def test_a_first_image_shown_later_never_replaces_what_the_user_chose(qtbot, tmp_path):
    """A project still loading shows its first image on the event loop's next turn; by
    then the user may have picked another image, or another project may be on show."""
    window = make_window(qtbot)
    editor = window.editor
    (tmp_path / "two").mkdir()
    one, two = _big_project(tmp_path, 30), _big_project(tmp_path / "two", 30)
    editor.set_project(one, show_later=True)
    assert editor.current_path is None  # not yet
    picked = one.images[7].path
    editor.show_image(picked)
    qtbot.wait(50)
    assert editor.current_path == picked
    editor.set_project(one, show_later=True)
    editor.set_project(two, keep=two.images[4].path)
    qtbot.wait(50)
    assert editor.project is two and editor.current_path == two.images[4].path
    editor.set_project(two, show_later=True)
    qtbot.waitUntil(lambda: editor.current_path is not None, timeout=2000)
    assert editor.current_path == two.images[0].path
    editor.set_project(None)
    window.close()


def test_a_project_shown_later_is_not_kept_once_replaced(qtbot, tmp_path):
    """The preview of a big store (its first image shown a turn later) is replaced by the
    full load: nothing of the editor may keep it, or it is freed only at the close, on the
    GUI thread (22 ms at 100,000 images) rather than by the freeing threads after the load."""
    import gc
    import weakref

    window = make_window(qtbot)
    editor = window.editor
    (tmp_path / "two").mkdir()
    one, two = _big_project(tmp_path, 30), _big_project(tmp_path / "two", 30)
    editor.set_project(one, show_later=True)
    qtbot.waitUntil(lambda: editor.current_path is not None, timeout=2000)
    editor.set_project(two)
    gone = weakref.ref(one)
    del one
    gc.collect()
    assert gone() is None
    editor.set_project(None)
    window.close()


def test_the_full_load_keeps_the_previews_rows(qtbot, tmp_path, monkeypatch):
    """Resetting 100,000 rows cost the full load's handler 5-9 ms of GUI thread: the rows
    the preview put in place stay when the images are the same, and show what was loaded."""
    path = _big_store(tmp_path, 1500)
    expected = load_project(path)
    release = _blocked_full_load(monkeypatch)
    window = make_window(qtbot)
    window.background_open_images = 1000
    window.open_project(str(path))
    qtbot.waitUntil(lambda: window.loading and window.project is not None, timeout=20_000)
    model = window.editor.gallery.model
    rows = model._rows
    unread = model.path_at(1400)
    assert model.index(1400).data(INSTANCES_ROLE) == 0  # only its summary is known
    resets: list[int] = []
    model.modelReset.connect(lambda: resets.append(1))
    painted: list[int] = []
    model.repaint_all.connect(lambda: painted.append(1))
    with qtbot.waitSignal(window.opener.finished, timeout=60_000):
        release.set()
    assert not window.loading and resets == [] and model._rows is rows
    assert painted  # every row shows the loaded facts
    assert model.index(1400).data(INSTANCES_ROLE) == 2
    assert model.index(1400).data(STATUS_ROLE) == expected.annotation(unread).status.value
    # the rows follow the project from now on
    window.project.set_status(unread, ImageStatus.REVIEWED)
    assert model.index(1400).data(STATUS_ROLE) == ImageStatus.REVIEWED.value
    window.close()


def test_a_closed_projects_frees_wait_until_the_preview_is_on_show(qtbot, tmp_path,
                                                                  monkeypatch):
    """Beside the frees of a project closed just before (four threads, 5-10 s at 100,000 x
    3) the preview's handler stalled the window 31-39 ms, 10-14 ms without them: they wait
    from the open's start until the preview has been on show a moment, then go on while
    the rest loads."""
    from annotator.gui.release import drop_in_background, frees_held, frees_pending

    path = _big_store(tmp_path, 1500)
    release = _blocked_full_load(monkeypatch)
    window = make_window(qtbot)
    window.background_open_images = 1000
    at_preview: list[tuple[int, int]] = []
    window.opener.previewed.connect(
        lambda *_: at_preview.append((frees_held(), frees_pending())))
    window.open_project(str(path))
    dropped = drop_in_background([[i] for i in range(2000)])  # a closed project's part
    qtbot.waitUntil(lambda: bool(at_preview), timeout=20_000)
    assert at_preview == [(1, 1)]  # held by the open, not freed yet
    qtbot.waitUntil(lambda: not dropped.is_alive(), timeout=10_000)
    assert window.loading and frees_held() == 0  # freed while the rest loads
    with qtbot.waitSignal(window.opener.finished, timeout=60_000):
        release.set()
    window.close()


@pytest.mark.parametrize("how", ["cancelled", "no preview"])
def test_an_open_without_a_preview_on_show_lets_the_frees_go_on(qtbot, tmp_path, monkeypatch,
                                                                how):
    """The hold an open takes is let go of when no preview comes: the full load goes on
    without one, or the open is cancelled."""
    from annotator.gui.release import frees_held
    from annotator.io import project_file

    path = _big_store(tmp_path, 1500)
    if how == "no preview":  # the full load goes on (and reports any problem)
        def broken(path):  # noqa: ANN001, ANN202
            raise OSError("cannot read the preview")

        monkeypatch.setattr(project_file, "read_preview", broken)
        release = _blocked_full_load(monkeypatch)
    window = make_window(qtbot)
    window.background_open_images = 1000
    with qtbot.waitSignal(window.opener.finished, timeout=60_000):
        window.open_project(str(path))
        if how == "cancelled":
            window.open_cancel.click()
        if how == "no preview":
            qtbot.waitUntil(lambda: frees_held() == 0, timeout=10_000)
            assert window.opener.busy and window.project is None  # loading, no preview
            release.set()
    qtbot.waitUntil(lambda: not window.closing)  # a cancelled preview's close, if any
    assert frees_held() == 0
    window.close()


@pytest.mark.parametrize("how", ["close project", "quit"])
def test_closing_while_the_rest_loads_loses_nothing(qtbot, tmp_path, monkeypatch, how):
    import threading

    path = _big_store(tmp_path, 1500)
    expected = project_to_dict(load_project(path))
    release = _blocked_full_load(monkeypatch)
    window = make_window(qtbot)
    window.background_open_images = 1000
    window.open_project(str(path))
    qtbot.waitUntil(lambda: window.loading, timeout=20_000)
    window.act_next.trigger()  # browsing reads an annotation from the store
    if how == "close project":
        assert window.act_close_project.isEnabled()
        with qtbot.waitSignal(window.opener.finished, timeout=60_000):
            window.close_project()
            assert window.project is None and not window.loading
            release.set()
        assert window.project is None and window.stack.currentWidget() is window.welcome
        window.close()
    else:
        threading.Timer(0.2, release.set).start()  # the quit waits for the loader thread
        window.close()
        assert window.opener.active_threads == 0
    # the store is as it was: it opens with everything in it
    assert project_to_dict(load_project(path)) == expected


def test_images_found_while_loading_are_added_and_saved(qtbot, tmp_path):
    path = _big_store(tmp_path, 1500)
    for name in ("new1.png", "sub/new2.jpg"):
        (tmp_path / "images" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "images" / name).write_bytes(b"not decoded to be listed")
    window = make_window(qtbot)
    window.background_open_images = 1000
    with qtbot.waitSignal(window.opener.finished, timeout=60_000):
        window.open_project(str(path))
    assert len(window.project) == 1502 and not window.loading
    assert window.editor.gallery.model.rowCount() == 1502
    assert "2 new image(s)" in window.statusBar().currentMessage()
    window.autosaver.flush()
    saved = load_project(path)
    assert [r.path for r in saved.images][-2:] == ["new1.png", "sub/new2.jpg"]
    window.close()


def test_a_project_of_a_few_hundred_images_opens_in_the_background_by_default(qtbot, tmp_path):
    """Read on the GUI thread, 300 images x 2 instances froze the window for about a tenth
    of a second (3,000 images: a second), so by default it is read on the loader thread."""
    path = _big_store(tmp_path, n=300)
    window = make_window(qtbot)
    with qtbot.waitSignal(window.opener.finished, timeout=60_000):
        assert window.open_project(str(path)) is None  # not read on the GUI thread
        assert window.opener.busy
    assert window.project is not None and len(window.project) == 300
    assert project_to_dict(window.project) == project_to_dict(load_project(path))
    window.close()


def test_a_small_project_still_opens_at_once(qtbot, tmp_path):
    path = _big_store(tmp_path, n=20)
    window = make_window(qtbot)
    opened = window.open_project(str(path))
    assert opened is not None and window.project is opened and len(opened) == 20
    window.close()


def test_a_big_json_project_of_a_previous_version_migrates_in_the_background(qtbot, tmp_path):
    """Reading and migrating a 1,000-image JSON project took the GUI thread for seconds."""
    project = _big_project(tmp_path, 1000)
    old = tmp_path / "big.kpproj.json"
    save_json_copy(project, old)
    before = old.read_bytes()
    assert len(before) >= 100_000
    window = make_window(qtbot)
    messages: list[str] = []
    window.statusBar().messageChanged.connect(messages.append)
    with qtbot.waitSignal(window.opener.finished, timeout=60_000):
        assert window.open_project(str(old)) is None  # read on the loader thread
        assert window.opener.busy and window.open_bar.isVisible()
    assert window.project is not None
    assert window.project_path == str(tmp_path / "big.kpproj")
    assert project_to_dict(window.project)["annotations"] == \
        project_to_dict(project)["annotations"]
    assert old.read_bytes() == before  # kept as it was, as the backup
    assert project_to_dict(load_project(tmp_path / "big.kpproj"))["annotations"] == \
        project_to_dict(project)["annotations"]
    assert any("kept unchanged as a backup" in m for m in messages)
    window.close()


def test_a_small_json_project_migrates_at_once(qtbot, tmp_path):
    project = _big_project(tmp_path, 5)
    old = tmp_path / "small.kpproj.json"
    save_json_copy(project, old)
    window = make_window(qtbot)
    opened = window.open_project(str(old))
    assert opened is not None and window.project_path == str(tmp_path / "small.kpproj")
    assert project_to_dict(opened)["annotations"] == project_to_dict(project)["annotations"]
    window.close()


def test_a_cancelled_json_migration_loses_nothing_and_can_be_opened_again(qtbot, tmp_path):
    project = _big_project(tmp_path, 1000)
    old = tmp_path / "big.kpproj.json"
    save_json_copy(project, old)
    before = old.read_bytes()
    window = make_window(qtbot)
    with qtbot.waitSignal(window.opener.finished, timeout=60_000):
        assert window.open_project(str(old)) is None
        window.open_cancel.click()
    assert window.project is None and window.stack.currentWidget() is window.welcome
    assert old.read_bytes() == before
    with qtbot.waitSignal(window.opener.finished, timeout=60_000):
        window.open_project(str(old))  # the same action again: migrates (or finds the store)
    assert window.project is not None
    assert project_to_dict(window.project)["annotations"] == \
        project_to_dict(project)["annotations"]
    assert old.read_bytes() == before
    window.close()


@pytest.mark.parametrize("how", ["cancel button", "close project"])
def test_a_project_opened_again_right_after_its_open_was_stopped_opens(qtbot, tmp_path,
                                                                       monkeypatch, how):
    """Stop an open (Cancel, or close its preview) and open the same project again while the
    stopped open is still ending on its thread: the new request is not taken for the old
    one (it was ignored as "being opened already")."""
    path = _big_store(tmp_path, 1500)
    release = _blocked_full_load(monkeypatch)
    window = make_window(qtbot)
    window.background_open_images = 1000
    assert window.open_project(str(path)) is None
    qtbot.waitUntil(lambda: window.loading, timeout=20_000)
    if how == "close project":
        window.close_project()
    else:
        window.open_cancel.click()
    assert window.opener.busy and window.opener.cancelled  # still ending on its thread
    assert window.open_project(str(path)) is None
    release.set()
    qtbot.waitUntil(lambda: window.project is not None and not window.loading, timeout=60_000)
    assert window.project_path == str(path) and len(window.project) == 1500
    qtbot.waitUntil(lambda: not window.closing)
    window.close()
