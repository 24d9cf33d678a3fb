"""Application entry point: ``python main.py [project]``."""

from __future__ import annotations

import logging
import sys
import time

_T0 = time.perf_counter()


def run_app(argv: list[str] | None = None) -> int:
    """Open the main window (and ``argv[0]`` as a project if given); returns the exit code."""
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
