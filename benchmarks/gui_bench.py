"""GUI part of ``annotator bench`` (offscreen Qt, run in a child process by the CLI).

Builds an N-image project (one small JPEG hard-linked N times: the gallery loads thumbnails
lazily, so the image content does not matter), then measures with the real MainWindow:
- ``open_seconds``: load_project(path) + MainWindow.set_project (what open_project does, minus
  the recent-files entry and autosaver) plus the first event-loop pass (paint);
- ``max_stall_open_ms``: the longest gap of a 2 ms heartbeat timer during 1 s after opening;
- ``max_stall_scroll_ms``: the same while the gallery scrolls top to bottom in 60 steps
  (one step every 16 ms, thumbnails loading).
Stall = gap between heartbeat ticks minus the 2 ms interval. Writes JSON to --out.

    QT_QPA_PLATFORM=offscreen python benchmarks/gui_bench.py --images 10000 --out gui.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def make_project(folder: Path, n: int) -> Path:
    from PIL import Image

    from annotator.domain.schema import KeypointSchema
    from annotator.io.project_file import new_project, save_project

    img_dir = folder / "images"
    img_dir.mkdir()
    first = img_dir / "img_000000.jpg"
    Image.new("RGB", (320, 240), (120, 80, 40)).save(first, quality=80)
    for i in range(1, n):
        dst = img_dir / f"img_{i:06d}.jpg"
        try:
            os.link(first, dst)
        except OSError:
            dst.write_bytes(first.read_bytes())
    schema = KeypointSchema("object", ("nose", "left_eye", "right_eye"), flip_pairs=((1, 2),))
    project = new_project(img_dir, schema)
    path = folder / "bench.kpproj.json"
    save_project(project, path)
    return path


class Heartbeat:
    def __init__(self, interval_ms: int = 2) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.interval = interval_ms / 1000
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.last = time.perf_counter()
        self.max_gap = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        self.max_gap = max(self.max_gap, now - self.last - self.interval)
        self.last = now

    def start(self) -> None:
        self.last = time.perf_counter()
        self.max_gap = 0.0
        self.timer.start()

    def stop_ms(self) -> float:
        self.timer.stop()
        return max(0.0, self.max_gap * 1000)


def run_for(app, seconds: float) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from annotator.gui.main_window import MainWindow
    from annotator.io.project_file import load_project

    result: dict[str, object] = {"images": args.images,
                                 "platform": os.environ.get("QT_QPA_PLATFORM")}
    with tempfile.TemporaryDirectory(prefix="annotator-gui-") as tmp:
        t = time.perf_counter()
        path = make_project(Path(tmp), args.images)
        result["project_build_seconds"] = time.perf_counter() - t
        app = QApplication.instance() or QApplication([])
        win = MainWindow()
        win.show()
        app.processEvents()
        t = time.perf_counter()
        # = MainWindow.open_project minus the recent-files entry and the autosaver (the
        # benchmark must not write into the user's settings)
        project = load_project(path)
        win.set_project(project, None)
        app.processEvents()
        result["open_seconds"] = time.perf_counter() - t
        result["loaded_images"] = len(project) if project is not None else 0
        beat = Heartbeat()
        beat.start()
        run_for(app, 1.0)
        result["max_stall_open_ms"] = beat.stop_ms()
        result["scroll"] = "crashed or did not finish"
        args.out.write_text(json.dumps(result, indent=2))  # kept if scrolling crashes

        view = win.editor.gallery.view
        bar = view.verticalScrollBar()
        steps = 60
        state = {"i": 0}

        def step() -> None:
            state["i"] += 1
            bar.setValue(int(bar.maximum() * state["i"] / steps))

        scroller = QTimer()
        scroller.setInterval(16)
        scroller.timeout.connect(step)
        beat.start()
        scroller.start()
        run_for(app, steps * 0.016 + 0.5)
        scroller.stop()
        result["max_stall_scroll_ms"] = beat.stop_ms()
        result["scroll_range"] = bar.maximum()
        result["scroll"] = "done"
        result["worker"] = "not measured (needs an engine factory for a fake worker run)"
        win.shutdown()
        win.close()
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2), flush=True)
    os._exit(0)  # skip Qt/Python finalisation (PySide6 can crash while tearing down)


if __name__ == "__main__":
    raise SystemExit(main())
