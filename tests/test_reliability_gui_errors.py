"""The GUI shows malformed inputs as a message and keeps running."""

from __future__ import annotations

import pytest

from tests.test_gui_support import (  # noqa: F401 (fixtures)
    make_window,
    no_thread_leaks,
    qt_isolated,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")


@pytest.mark.parametrize("content", [
    b"[" * 100_000, b'{"images": [{"id": ' + b"9" * 5000 + b"}]}", b"\xff\xfe",
    b'{"images": [], "annotations": [], "categories": [{"id": 1, "keypoints": ["a"], '
    b'"name": "x"}], "x": 1e400}',
])
def test_bad_coco_and_project_files_are_shown_not_raised(qtbot, tmp_path, content):
    window = make_window(qtbot)
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    assert window.import_coco(str(bad), str(tmp_path), str(tmp_path / "p.kpproj.json")) is None
    assert window.messages[-1][:2] == ("error", "Import COCO")
    assert "bad.json" in window.messages[-1][2]
    assert window.open_project(str(bad)) is None
    # a file of 100 kB or more is read on the loader thread: its error comes from there
    qtbot.waitUntil(lambda: not window.opener.busy, timeout=30_000)
    assert window.messages[-1][:2] == ("error", "Open project")
    assert "bad.json" in window.messages[-1][2]
    assert window.project is None
    window.close()
