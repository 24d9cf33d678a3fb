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


def test_the_model_stack_is_imported_before_the_window_off_the_gui_thread(qtbot):
    """The imports run on a worker thread while a splash is painted; the GUI thread keeps
    processing events meanwhile; a failing import does not stop the start."""
    import threading
    import time

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QSplashScreen

    qapp = QApplication.instance()
    ran_on, ticks, splash_seen = [], [], []
    timer = QTimer()
    timer.timeout.connect(lambda: (ticks.append(1), splash_seen.append(any(
        isinstance(w, QSplashScreen) and w.isVisible() for w in QApplication.topLevelWidgets()))))
    timer.start(10)

    def slow_preload(cancelled):  # noqa: ANN001, ANN202
        ran_on.append(threading.current_thread() is threading.main_thread())
        assert not cancelled()
        time.sleep(0.4)

    took = app.preload_before_window(qapp, slow_preload)
    timer.stop()
    assert ran_on == [False] and took >= 0.4
    assert len(ticks) >= 10 and any(splash_seen)  # the event loop ran with the splash up
    assert not any(isinstance(w, QSplashScreen) and w.isVisible()
                   for w in QApplication.topLevelWidgets())  # and it is gone after

    def broken(cancelled):  # noqa: ANN001, ANN202, ARG001
        raise ImportError("no torch here")

    assert app.preload_before_window(qapp, broken) >= 0


def test_the_application_shortens_the_gil_switch_interval_before_its_threads_start(
        qtbot, monkeypatch):
    """With Python's 5 ms switch interval, every slot, paint and event filter of the GUI
    thread waited up to 5 ms for the GIL beside a busy background thread (a load, a
    propagation, a freed project): run_app sets the application's interval before the
    first thread of its own (the model-stack preload) starts."""
    import sys

    seen = []

    class Stop(Exception):
        pass

    def preload(qapp):  # noqa: ANN001, ANN202, ARG001
        seen.append(sys.getswitchinterval())
        raise Stop

    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    monkeypatch.setattr(app, "preload_before_window", preload)
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)  # Python's default
    try:
        try:
            app.run_app([])
        except Stop:
            pass
        assert len(seen) == 1 and abs(seen[0] - app.GUI_SWITCH_INTERVAL_S) < 1e-6
        assert app.GUI_SWITCH_INTERVAL_S <= 0.0005  # far below the 5 ms default
    finally:
        sys.setswitchinterval(before)
