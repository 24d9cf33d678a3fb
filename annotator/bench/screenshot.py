"""Take the README screenshot: ``python -m annotator.bench.screenshot docs/screenshot.png``.

Opens a copy of the demo project, propagates on the worker thread and grabs the main window
(works offscreen: QT_QPA_PLATFORM=offscreen, or under Xvfb). Without model weights (the default
here) it uses the weight-free content descriptor engine; ``--real`` uses the configured models.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from typing import Any

from annotator.domain import ProjectSettings


def _content_engine(settings: ProjectSettings) -> Any:
    """The weight-free content descriptor engine for the project's settings (worker thread)."""
    from annotator.jobs.engine_factory import build_engine

    return build_engine(settings, extractor="content", use_cache=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="PNG file to write")
    parser.add_argument("--real", action="store_true", help="use the configured SD+DINOv2 models")
    parser.add_argument("--image", default="chelsea_crop.jpg", help="demo image to show")
    parser.add_argument("--size", default="1400x860", help="window size WxH")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from annotator.gui.gallery import GallerySort
    from annotator.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication([])
    window = MainWindow(engine_factory=None if args.real else _content_engine)
    w, h = (int(v) for v in args.size.split("x"))
    window.resize(w, h)
    window.show()
    with tempfile.TemporaryDirectory() as tmp:
        if window.open_demo(f"{tmp}/demo") is None:
            return 1
        loop = QEventLoop()
        window.controller.run_finished.connect(lambda _outcome: loop.quit())
        QTimer.singleShot(600_000, loop.quit)
        window.propagate()
        loop.exec()
        window.editor.gallery.sort_box.setCurrentText(GallerySort.WORST_FIRST.value)
        window.editor.show_image(args.image)
        window.editor.set_current_keypoint(2)
        for _ in range(20):  # let thumbnails arrive and repaint
            app.processEvents()
            QTimer.singleShot(50, loop.quit)
            loop.exec()
        ok = window.grab().save(args.output)
        logging.info("saved %s: %s", args.output, ok)
        window.close()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
