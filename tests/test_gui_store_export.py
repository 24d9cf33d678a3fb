"""Export COCO and Export as of a big saved project run in a child process that reads the
store (the threshold lowered here so the demo counts as big): the same files, the snapshot
of the click (a later edit is not in the file), the outcome shown, and a cancel."""

from __future__ import annotations

import json

import pytest

from annotator.domain import ImageStatus
from annotator.gui import export_job
from annotator.io.coco import ExportChoice, ExportScope, write_coco
from annotator.io.formats import ExportOptions, export_project
from annotator.jobs.store_export import StoreExportChild
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    make_window,
    no_thread_leaks,
    open_demo_project,
    qt_isolated,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")


class Started(list):
    """The jobs of the export processes started; ``processes``: their Popen objects."""

    def __init__(self) -> None:
        super().__init__()
        self.processes: list = []


@pytest.fixture
def children(monkeypatch):  # noqa: ANN001, ANN201
    """The export processes started (their jobs)."""
    started = Started()

    class Counted(StoreExportChild):
        def __init__(self, job) -> None:  # noqa: ANN001
            started.append(job)
            super().__init__(job)
            started.processes.append(self.proc)

    monkeypatch.setattr(export_job, "StoreExportChild", Counted)
    return started


def doc(path) -> dict:  # noqa: ANN001
    d = json.loads(path.read_text())
    d.pop("info", None)
    return d


def test_a_big_project_is_exported_by_a_child_from_the_snapshot_of_the_click(
        qtbot, tmp_path, children):
    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    assert window.autosaver is not None
    window.exporter.child_min_images = len(project.images)  # the demo counts as big
    choice = ExportChoice(scope=ExportScope.PREDICTIONS)
    target = next(r.path for r in project.images
                  if project.status(r.path) is not ImageStatus.REFERENCE)
    before = project.annotations()
    expected = tmp_path / "expected.json"
    write_coco(project, expected, choice)
    assert window.export_coco(str(tmp_path / "out" / "c.json"), choice)
    project.set_status(target, ImageStatus.REVIEWED)  # after the click: not in the file
    project.set_status(target, ImageStatus.REFERENCE)
    window.wait_export_as(60)
    assert [j.fmt for j in children] == ["coco"]
    assert doc(tmp_path / "out" / "c.json") == doc(expected)
    assert project.annotations() != before  # the edits are kept in the project
    write_coco(project, tmp_path / "after.json", choice)
    assert doc(tmp_path / "after.json") != doc(expected)  # and they would show in the file
    assert "Exported" in window.statusBar().currentMessage()

    options = ExportOptions(include_predictions=True)
    assert window.export_as("label-studio", str(tmp_path / "out" / "ls.json"), options)
    window.wait_export_as(60)
    assert [j.fmt for j in children] == ["coco", "label-studio"]
    export_project(project, "label-studio", tmp_path / "ls.json", options)
    assert json.loads((tmp_path / "out" / "ls.json").read_text()) == \
        json.loads((tmp_path / "ls.json").read_text())
    window.close()


def test_a_small_or_unsaved_project_is_exported_in_process(qtbot, tmp_path, children):
    window = make_window(qtbot)
    open_demo_project(window, tmp_path)
    assert window.export_coco(str(tmp_path / "c.json"))  # the default threshold: in process
    window.wait_export_as(60)
    assert (tmp_path / "c.json").exists() and children == []
    window.close()


def test_cancelling_a_child_export_leaves_nothing(qtbot, tmp_path, children):
    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    window.exporter.child_min_images = 0
    out = tmp_path / "out"
    out.mkdir()
    assert window.export_coco(str(out / "c.json"))
    window.cancel_export()  # at once: the child stops before or while reading
    window.wait_export_as(60)
    assert children and list(out.iterdir()) == []
    assert "cancelled" in window.statusBar().currentMessage()
    project.set_status(project.images[0].path, ImageStatus.REVIEWED)  # autosave goes on
    window.autosaver.flush()
    window.close()


def test_an_export_cancelled_before_its_thread_starts_stops_its_child(qtbot, tmp_path,
                                                                      children):
    """The child starts with the click; cancelled while the export still waits for the
    export thread, it is stopped all the same: nothing is written then or later, the
    child has exited and its reader thread ended (no_thread_leaks) when the cancel is
    reported, and the autosaver is not held up by a snapshot for a dead child."""
    import threading
    import time

    from PySide6.QtCore import QRunnable

    window = make_window(qtbot)
    project = open_demo_project(window, tmp_path)
    window.exporter.child_min_images = 0
    release = threading.Event()

    class Block(QRunnable):
        def run(self) -> None:
            release.wait(30)

    window.exporter._pool.start(Block())  # the export thread is busy
    out = tmp_path / "out"
    out.mkdir()
    assert window.export_coco(str(out / "c.json"))
    window.cancel_export()  # before the export thread took the export up
    release.set()
    window.wait_export_as(60)
    assert len(children) == 1
    assert children.processes[0].poll() is not None  # the child has exited
    assert "cancelled" in window.statusBar().currentMessage()
    t = time.monotonic()
    project.set_status(project.images[0].path, ImageStatus.REVIEWED)  # autosave goes on
    window.autosaver.flush()
    assert time.monotonic() - t < 5.0
    time.sleep(1.0)  # a child left exporting would write the file by now (demo: < 1 s)
    assert list(out.iterdir()) == []
    window.close()
