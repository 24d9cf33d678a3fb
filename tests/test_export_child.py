"""SLEAP export in a child process (annotator.jobs.export_child): the same file as the
in-process writer, progress and cancel (the child killed, nothing left), errors reported."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
import sleap_io as sio

from annotator.io.formats import ExportOptions, FormatError
from annotator.io.formats.sleap import write_sleap
from annotator.jobs import export_child
from annotator.jobs.export_child import write_sleap_in_child
from annotator.jobs.progress import Cancelled
from tests.builders import blank_images
from tests.test_io_store import rich_project

EVERYTHING = ExportOptions(include_predictions=True)


def project_with_files(tmp_path):  # noqa: ANN001, ANN201
    p = rich_project(tmp_path)
    blank_images(tmp_path, {"reviewed.png": (30, 20)})  # its size is read from the file
    return p


def test_child_writes_the_same_file_as_the_in_process_writer(tmp_path):
    p = project_with_files(tmp_path)
    here, there = tmp_path / "out" / "here.slp", tmp_path / "out" / "there.slp"
    progress: list[tuple[int, int]] = []
    a = write_sleap(p, here, EVERYTHING)
    b = write_sleap_in_child(p, there, EVERYTHING, lambda d, t: progress.append((d, t)))
    assert (b.images, b.instances, b.notes) == (a.images, a.instances, a.notes)
    assert b.instances >= 4 and any("box" in n for n in b.notes)
    assert progress and progress[-1][0] == progress[-1][1] > 0
    la, lb = sio.load_slp(str(here)), sio.load_slp(str(there))
    assert [n.name for n in lb.skeletons[0].nodes] == [n.name for n in la.skeletons[0].nodes]
    assert len(la) == len(lb) == b.images
    kinds = set()
    for fa, fb in zip(la, lb):
        assert fa.video.filename == fb.video.filename and fa.video.shape == fb.video.shape
        assert len(fa.instances) == len(fb.instances)
        for ia, ib in zip(fa.instances, fb.instances):
            kinds.add(type(ib).__name__)
            assert type(ia) is type(ib)
            assert np.array_equal(ia.numpy(), ib.numpy(), equal_nan=True)
            assert np.array_equal(ia.points["visible"], ib.points["visible"])
            if type(ib).__name__ == "PredictedInstance":
                assert ia.score == ib.score
                assert np.array_equal(ia.points["score"], ib.points["score"])
    assert kinds == {"Instance", "PredictedInstance"}
    assert sorted(f.name for f in there.parent.iterdir()) == ["here.slp", "there.slp"]


def test_cancel_while_the_child_writes_kills_it_and_leaves_nothing(tmp_path, monkeypatch):
    """A child that stages its file and then takes its time: a cancel kills it and removes
    what it staged."""
    p = project_with_files(tmp_path)
    out = tmp_path / "out" / "x.slp"
    out.parent.mkdir()
    pid_file = tmp_path / "child.pid"
    slow = ("import os, sys, time\n"
            f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
            f"open({str(out.parent / '.x.slp.0123abcd.partial.slp')!r}, 'wb').write(b'x')\n"
            "sys.stdin.buffer.read()\n"
            "time.sleep(120)\n")
    monkeypatch.setattr(export_child, "child_command", lambda: [sys.executable, "-c", slow])
    deadline = time.monotonic() + 60
    calls = []

    def cancel_once_staging(done: int, total: int) -> None:
        calls.append(done)
        if list(out.parent.iterdir()) or time.monotonic() > deadline:
            raise Cancelled()

    with pytest.raises(Cancelled):
        write_sleap_in_child(p, out, EVERYTHING, cancel_once_staging)
    assert time.monotonic() < deadline  # cancelled while the child was staging its file
    assert list(out.parent.iterdir()) == []  # its staged file removed, nothing at out
    with pytest.raises(ProcessLookupError):  # and the child is gone (killed and reaped)
        os.kill(int(pid_file.read_text()), 0)


def test_errors_in_the_child_reach_the_caller(tmp_path, monkeypatch):
    p = project_with_files(tmp_path)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FormatError, match="SLEAP export failed: .*cannot be written"):
        write_sleap_in_child(p, tmp_path / "a_file" / "x.slp", EVERYTHING)
    with pytest.raises(FormatError, match="must end in .slp"):  # checked before any child
        write_sleap_in_child(p, tmp_path / "x.json", EVERYTHING)
    monkeypatch.setattr(export_child, "child_command",
                        lambda: [sys.executable, "-c", "import sys; sys.exit(3)"])
    out = tmp_path / "out" / "x.slp"
    with pytest.raises(FormatError, match=r"stopped unexpectedly \(exit code 3\)"):
        write_sleap_in_child(p, out, EVERYTHING)
    assert not out.exists()
