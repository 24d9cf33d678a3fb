"""Application entry point: ``python main.py [project]``."""

from __future__ import annotations

import logging
import sys
import time

_T0 = time.perf_counter()


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
    from PySide6.QtWidgets import QApplication

    from annotator.gui.main_window import MainWindow

    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = QApplication.instance() or QApplication([sys.argv[0], *args])
    app.setApplicationName("keypoint-annotator")
    app.setOrganizationName("keypoint-annotator")
    window = MainWindow()
    app.aboutToQuit.connect(window.shutdown)
    if args and not args[0].startswith("-"):
        window.open_project(args[0])
    window.show()
    logging.getLogger(__name__).info(
        "window shown %.2f s after start", time.perf_counter() - _T0
    )
    return app.exec()
