"""File > Import...: DeepLabCut's openfield example and a .pkg.slp open in the GUI through
the same import as ``annotator convert``, off the GUI thread; errors are shown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotator.domain import ImageStatus
from tests.test_gui_support import (  # noqa: F401 (fixtures)
    make_window,
    no_thread_leaks,
    qt_isolated,
)

pytestmark = pytest.mark.usefixtures("no_thread_leaks", "qt_isolated")


def _answers(window, monkeypatch, source, folder, save):  # noqa: ANN001
    monkeypatch.setattr(window, "_ask_open_file", lambda *a: str(source))
    monkeypatch.setattr(window, "_ask_existing_dir", lambda *a: str(folder) if folder else "")
    monkeypatch.setattr(window, "_ask_save_file", lambda *a: str(save))


def test_import_opens_deeplabcuts_openfield_example(qtbot, tmp_path, monkeypatch):
    from tests.shared_fixtures import shared_fixture

    config = shared_fixture("dlc-examples", "openfield-Pranav-2018-10-30", "config.yaml")
    window = make_window(qtbot)
    save = tmp_path / "openfield.kpproj.json"
    _answers(window, monkeypatch, config, None, save)
    with qtbot.waitSignal(window.importer.finished, timeout=30_000):
        window.act_import.trigger()  # returns at once: the import runs on a pool thread
    project = window.project
    assert project is not None and window.project_path == str(save) and save.is_file()
    assert len(project) == 116 and project.schema.keypoints == (
        "snout", "leftear", "rightear", "tailbase")
    first = project.annotation("labeled-data/m4s1/img0000.png")
    assert first.status == ImageStatus.REFERENCE
    assert (first.instances[0].keypoints[0].x, first.instances[0].keypoints[0].y) == (
        21.521, 265.428)
    assert "Imported 116 image(s), 116 labelled" in window.statusBar().currentMessage()
    window.close()


def test_import_opens_a_pkg_slp(qtbot, tmp_path, monkeypatch):
    sio = pytest.importorskip("sleap_io")
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(src / "robot0.png")
    sk = sio.Skeleton(nodes=["head", "tail"])
    frame = sio.LabeledFrame(video=sio.Video.from_filename([str(src / "robot0.png")]),
                             frame_idx=0, instances=[sio.Instance.from_numpy(
                                 np.array([[3.0, 4.0], [10.0, 12.0]]), skeleton=sk)])
    pkg = tmp_path / "share" / "robots.pkg.slp"
    pkg.parent.mkdir()
    sio.save_slp(sio.Labels(labeled_frames=[frame], skeletons=[sk]), str(pkg), embed=True,
                 verbose=False)
    window = make_window(qtbot)
    _answers(window, monkeypatch, pkg, pkg.parent, tmp_path / "robots.kpproj.json")
    with qtbot.waitSignal(window.importer.finished, timeout=30_000):
        window.act_import.trigger()
    project = window.project
    assert project is not None
    (rec,) = project.images
    assert rec.path == "robots.pkg.frames/video0/robot0.png"
    assert (Path(project.image_root) / rec.path).is_file()
    assert [(k.x, k.y) for k in project.annotation(rec.path).instances[0].keypoints] == [
        (3.0, 4.0), (10.0, 12.0)]
    window.close()


def test_import_errors_are_shown(qtbot, tmp_path, monkeypatch):
    pytest.importorskip("sleap_io")
    bad = tmp_path / "x.slp"
    bad.write_bytes(b"not hdf5")
    window = make_window(qtbot)
    _answers(window, monkeypatch, bad, tmp_path, tmp_path / "x.kpproj.json")
    with qtbot.waitSignal(window.importer.finished, timeout=30_000):
        window.act_import.trigger()
    assert window.project is None
    assert window.messages[-1][:2] == ("error", "Import")
    assert "not a readable SLEAP file" in window.messages[-1][2]
    window.close()
