"""GUI heartbeat benchmark of a big store (issue 22): a generated N x 3 project (default
100,000 images, 3 predicted instances of 17 keypoints each) in the real MainWindow, against the
6-image demo in the same process.

A 5 ms timer on the GUI thread is the heartbeat; a stall is the gap between its ticks less the
5 ms. Per project, ``--rounds`` rounds of: open (time until the window answers again, until the
gallery shows the project's rows, until the full load is in and editing starts, worst stall
meanwhile), scroll the gallery top to bottom (60 steps, one per 16 ms), a stream of 20 edits
(one per 50 ms, autosaved), one autosave, close. Per phase the longest cyclic garbage
collection (``gc.callbacks``, any thread) is recorded too, and the process's resident memory
after each round. The worst over the rounds is reported. Writes JSON to --out.

    QT_QPA_PLATFORM=offscreen PYTHONPATH=$PWD python benchmarks/store_gui_bench.py \\
        --images 100000 --rounds 3 --out /tmp/store-gui.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


class Heartbeat:
    """The longest gap between ticks of a 5 ms GUI-thread timer, less the 5 ms."""

    def __init__(self) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(5)
        self.timer.timeout.connect(self._tick)
        self.last = time.perf_counter()
        self.worst = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        self.worst = max(self.worst, now - self.last - 0.005)
        self.last = now

    def start(self) -> None:
        self.last, self.worst = time.perf_counter(), 0.0
        self.timer.start()

    def stop_ms(self) -> float:
        self.timer.stop()
        self._tick()
        return round(self.worst * 1000, 1)


class GcWatch:
    """The longest cyclic garbage collection (ms, and its generation) since :meth:`start`."""

    def __init__(self) -> None:
        import gc

        self.worst, self.gen, self._t0 = 0.0, -1, 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            took = time.perf_counter() - self._t0
            if took > self.worst:
                self.worst, self.gen = took, int(info["generation"])

    def start(self) -> None:
        self.worst, self.gen = 0.0, -1

    def stop_ms(self) -> float:
        return round(self.worst * 1000, 1)


def rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 0)
    except OSError:
        pass
    return float("nan")


def run_until(cond: Callable[[], bool], timeout: float) -> bool:
    from PySide6.QtWidgets import QApplication

    deadline = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > deadline:
            return False
        QApplication.processEvents()
        time.sleep(0.001)
    return True


def run_for(seconds: float) -> None:
    run_until(lambda: False, seconds)


def one_round(win, path: Path, beat: Heartbeat, gcw: GcWatch) -> dict[str, float]:  # noqa: ANN001
    res: dict[str, float] = {}

    def phase(name: str) -> None:
        res[f"{name}_stall_ms"] = beat.stop_ms()
        res[f"{name}_gc_ms"] = gcw.stop_ms()
        res[f"{name}_gc_gen"] = gcw.gen

    def begin() -> None:
        beat.start()
        gcw.start()

    # ---- open
    begin()
    t0 = time.perf_counter()
    win.open_project(str(path))
    res["open_call_s"] = time.perf_counter() - t0
    run_for(0.02)
    res["open_answering_s"] = time.perf_counter() - t0  # the event loop runs again
    ok = run_until(lambda: win.project is not None and win.editor.gallery.model.rowCount(), 600)
    res["open_gallery_s"] = time.perf_counter() - t0 if ok else float("nan")
    res["open_gallery_stall_ms"] = round(beat.worst * 1000, 1)
    ok = run_until(lambda: win.project is not None and not win.loading, 600)
    res["open_loaded_s"] = time.perf_counter() - t0 if ok else float("nan")
    phase("open")
    project = win.project
    paths = [r.path for r in project.images]
    # ---- scroll
    bar = win.editor.gallery.view.verticalScrollBar()
    begin()
    for i in range(1, 61):
        bar.setValue(int(bar.maximum() * i / 60))
        run_for(0.016)
    phase("scroll")
    # ---- 20 edits, autosaved
    begin()
    for i in range(20):
        project.move_keypoint(paths[i * 997 % len(paths)], 0, 5.0 + i, 6.0, instance=0)
        run_for(0.05)
    run_until(lambda: not win.autosaver.dirty, 30)
    phase("edits")
    # ---- one autosave
    project.move_keypoint(paths[-1], 1, 7.0, 8.0, instance=0)
    begin()
    run_until(lambda: not win.autosaver.dirty, 30)
    run_for(0.1)
    phase("autosave")
    # ---- close
    begin()
    t = time.perf_counter()
    win.close_project()
    res["close_call_s"] = time.perf_counter() - t
    run_for(0.5)
    phase("close")
    del project
    res["rss_after_mb"] = rss_mb()
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=None, help="keep the generated store here")
    args = ap.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    work = args.work or Path(tempfile.mkdtemp(prefix="store-gui-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_CONFIG_HOME"] = str(work / "config")  # recent-files list kept aside
    big = work / "bench.kpproj"
    out: dict[str, object] = {"images": args.images, "instances_per_image": 3, "keypoints": 17,
                              "rounds": args.rounds}
    if not big.exists():
        from store_bench import generate

        from annotator.io.project_file import save_project

        t = time.perf_counter()
        save_project(generate(args.images, work), big)
        out["generate_and_write_s"] = round(time.perf_counter() - t, 1)
    from PySide6.QtWidgets import QApplication

    from annotator.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication([])
    win = MainWindow(autosave_delay_s=0.5, preload_models=False)
    win.resize(1400, 860)
    win.show()
    run_for(0.3)
    demo_dir = work / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    win.open_demo(str(demo_dir))
    demo_path = Path(win.project_path)
    win.close_project()
    beat, gcw = Heartbeat(), GcWatch()
    for name, path in (("demo", demo_path), ("big", big)):
        rounds = [one_round(win, path, beat, gcw) for _ in range(args.rounds)]
        worst = {k: round(max(r[k] for r in rounds), 3) for k in rounds[0]}
        out[name] = worst
        out[f"{name}_rounds"] = rounds
        args.out.write_text(json.dumps(out, indent=1))
        print(name, json.dumps(worst), flush=True)
    win.shutdown()
    app.quit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
