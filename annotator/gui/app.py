"""Application entry point: ``python main.py [project]``."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_T0 = time.perf_counter()


#: The GIL switch interval of the application's process, in seconds. Python's default (5 ms)
#: is how long a thread that wants the GIL waits before the running thread is asked to let
#: go. The GUI thread takes the GIL for every slot, paint, model call and event filter
#: written in Python, so beside any busy background thread (a project loading, a
#: propagation's worker, a closed project being freed) each of those waited up to 5 ms:
#: scrolling a 100,000-image gallery beside one CPU-bound Python thread stalled 220-360 ms;
#: at 0.2 ms, 11-13 ms, the busy thread no slower (BENCHMARKS.md, section 7h).
GUI_SWITCH_INTERVAL_S = 0.0002


def responsive_gil() -> None:
    """Set the process's GIL switch interval to :data:`GUI_SWITCH_INTERVAL_S` (once, at
    start, before any thread of the application runs)."""
    sys.setswitchinterval(GUI_SWITCH_INTERVAL_S)


XCB_PACKAGES = (
    "libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 "
    "libxcb-shape0 libxkbcommon-x11-0"
)


def xcb_plugin_problem() -> str | None:
    """Why Qt's X11 (xcb) platform plugin cannot load on this Linux machine, or None.

    Its system libraries are outside pip's reach and Qt aborts the process without them, so
    the plugin is test-loaded first to give a clear message instead.
    """
    import ctypes
    import os
    from pathlib import Path

    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM", "xcb") != "xcb":
        return None
    if not os.environ.get("DISPLAY"):
        return None
    import PySide6

    plugin = Path(PySide6.__file__).parent / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    if not plugin.exists():
        return None
    try:
        ctypes.CDLL(str(plugin), mode=os.RTLD_LAZY)
    except OSError as exc:
        return str(exc)
    import ctypes.util

    if ctypes.util.find_library("xcb-cursor") is None:  # Qt 6.5+ loads it at run time
        return "libxcb-cursor.so.0 is not installed"
    return None


def preload_before_window(app: Any, preload: Callable[[Callable[[], bool]], Any] | None = None,
                          ) -> float:
    """Import the model stack (torch, transformers, diffusers: 5 s on a 2-vCPU VM) before
    the main window exists, on a worker thread, while a splash says so; returns the seconds
    it took. Done later, while the user works, those imports hold the GIL for 0.1-0.9 s at
    a time and the window stalls (exports started right after opening a project, the first
    propagation); done here, nothing is left to import once the window shows. The GUI
    thread only keeps the splash painted. ``preload``: the import step (default
    :func:`annotator.jobs.preload.preload_model_stack`)."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QColor, QPixmap
    from PySide6.QtWidgets import QSplashScreen

    if preload is None:
        from annotator.jobs.preload import preload_model_stack as preload
    t0 = time.perf_counter()
    pixmap = QPixmap(460, 120)
    pixmap.fill(QColor("#2b2b2b"))
    splash = QSplashScreen(pixmap)
    splash.showMessage("Keypoint annotator\nLoading the model libraries (PyTorch)...",
                       Qt.AlignmentFlag.AlignCenter, QColor("white"))
    splash.show()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            preload(lambda: False)
        except Exception as exc:  # noqa: BLE001 (optional: the real import reports it)
            failed.append(exc)

    worker = threading.Thread(target=run, name="preload-model-stack", daemon=True)
    worker.start()
    while worker.is_alive():
        app.processEvents()
        worker.join(0.02)
    splash.close()
    if failed:
        logging.getLogger(__name__).warning("preloading the model stack failed: %s", failed[0])
    return time.perf_counter() - t0


def run_app(argv: list[str] | None = None) -> int:
    """Open the main window (and ``argv[0]`` as a project if given); returns the exit code."""
    problem = xcb_plugin_problem()
    if problem:
        sys.stderr.write(
            f"Qt's X11 platform plugin cannot load: {problem}\n"
            "Install the X11 libraries Qt needs, e.g. on Debian/Ubuntu:\n"
            f"  sudo apt install {XCB_PACKAGES}\n"
        )
        return 2
    responsive_gil()
    from PySide6.QtWidgets import QApplication

    from annotator.gui.main_window import MainWindow

    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = QApplication.instance() or QApplication([sys.argv[0], *args])
    app.setApplicationName("keypoint-annotator")
    app.setOrganizationName("keypoint-annotator")
    logging.getLogger(__name__).info("model libraries loaded in %.1f s",
                                     preload_before_window(app))
    window = MainWindow()
    app.aboutToQuit.connect(window.shutdown)
    if args and not args[0].startswith("-"):
        window.open_project(args[0])
    window.show()
    logging.getLogger(__name__).info(
        "window shown %.2f s after start", time.perf_counter() - _T0
    )
    return app.exec()
