"""Before Qt starts: a missing X11 library gives a clear message, not an abort."""

import ctypes

from annotator.gui import app


def test_missing_xcb_library_is_named(monkeypatch, capsys):
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.setattr(app.sys, "platform", "linux")

    def cdll(path, mode=0):
        raise OSError("libxcb-icccm.so.4: cannot open shared object file: No such file")

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    assert "libxcb-icccm.so.4" in (app.xcb_plugin_problem() or "")
    assert app.run_app([]) == 2
    err = capsys.readouterr().err
    assert "libxcb-icccm.so.4" in err and "sudo apt install" in err and "libxcb-icccm4" in err


def test_offscreen_needs_no_check(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert app.xcb_plugin_problem() is None
