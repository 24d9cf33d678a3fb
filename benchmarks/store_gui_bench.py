"""GUI heartbeat benchmark of a big store (issue 22): a generated N x 3 project (default
100,000 images, 3 predicted instances of 17 keypoints each) in the real MainWindow, against the
6-image demo in the same process.

A 5 ms timer on the GUI thread is the heartbeat; a stall is the gap between its ticks less the
5 ms. Per project, ``--rounds`` rounds of: open (time until the window answers again, until the
gallery shows the project's rows, until the full load is in and editing starts, worst stall
meanwhile), scroll the gallery top to bottom (60 steps, one per 16 ms), a stream of 20 edits
(one per 50 ms, autosaved), one autosave, propagation streaming (``--propagate`` images, a fake
engine yielding 1,000 predictions/s through the real worker and result feed), the exports of
``--formats`` (Export COCO, Ctrl+E, for "coco"; File > Export as for the others; every
predicted image goes out; the stall and the time to the written file), close. Per phase the
longest cyclic garbage collection (``gc.callbacks``, any thread) is recorded too, and the
process's resident memory after each round; and per phase the worst pause of a 5 ms sleep
loop in a separate process (``*_side_ms``: the machine's own pauses, not the application's)
and the major page faults of the benchmark's process (``*_majflt``). For each phase's worst
stall, what ran during it: the GUI thread's own CPU time (``*_stall_gui_cpu_ms``: near the
stall, work on the GUI thread; near zero, the GUI thread waited), the process's CPU time over
all its threads (``*_stall_proc_cpu_ms``), and the machine's steal time per CPU from
``/proc/stat`` (``*_stall_steal_ms``: the hypervisor ran something else; kernel ticks of
10 ms). The worst over the rounds is reported (the attribution of the round with the worst
stall). Writes JSON
to --out. The generated project's image files are tiny placeholders, written once for the
formats that copy images (YOLO pose, DeepLabCut). As the application does, the model stack
is imported before the window is made (``annotator.gui.app.preload_before_window``), and
the GIL switch interval is the application's (``responsive_gil``) unless
``--default-switch-interval``. Between phases (not measured), the files an export wrote
and the placeholder images are flushed to disk (``os.sync``; ``export_*_sync_s``), so one
phase's writeback does not land in the next one. The GUI-thread steps of the open, the
propagation and the close are timed one by one (``open_step_*``, ``propagate_step_*``,
``close_step_*``: summed, CPU, and the longest call; the close's steps include its last
ones, run over the turns after the call: ``close_steps_s``), and the threads that ran
beside the close call are named with their CPU time (``close_call_threads_ms``, per round
only).

    QT_QPA_PLATFORM=offscreen PYTHONPATH=$PWD python benchmarks/store_gui_bench.py \\
        --images 100000 --rounds 3 --out /tmp/store-gui.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


class Heartbeat:
    """The longest gap between ticks of a 5 ms GUI-thread timer, less the 5 ms; and for that
    gap, what ran meanwhile: the GUI thread's own CPU time, the whole process's CPU time,
    and its wall-clock window (``worst_window``, ``time.time()``) to match against the
    machine's steal time. A stall with little GUI-thread CPU is waiting (for the GIL, or
    for a CPU); one with the GUI thread's CPU near the gap is work on the GUI thread."""

    def __init__(self) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(5)
        self.timer.timeout.connect(self._tick)
        self.start_clocks()

    def start_clocks(self) -> None:
        self.last, self.worst = time.perf_counter(), 0.0
        self.last_thread, self.last_proc, self.last_wall = (
            time.thread_time(), time.process_time(), time.time())
        self.last_usage = self._usage()
        self.worst_thread = self.worst_proc = 0.0
        self.worst_window = (self.last_wall, self.last_wall)
        self.worst_usage: dict[str, float] = {}

    @staticmethod
    def _usage() -> tuple[float, ...]:
        """The GUI thread's system CPU (s), minor faults, voluntary and involuntary context
        switches, and the process's minor faults (``getrusage``: one call each)."""
        import resource

        t = resource.getrusage(resource.RUSAGE_THREAD)
        return (t.ru_stime, t.ru_minflt, t.ru_nvcsw, t.ru_nivcsw,
                resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

    def _tick(self) -> None:
        now, thread, proc, wall = (time.perf_counter(), time.thread_time(),
                                   time.process_time(), time.time())
        usage = self._usage()
        gap = now - self.last - 0.005
        if gap > self.worst:
            self.worst = gap
            self.worst_thread, self.worst_proc = thread - self.last_thread, proc - self.last_proc
            self.worst_window = (self.last_wall, wall)
            d = [a - b for a, b in zip(usage, self.last_usage)]
            self.worst_usage = {"gui_sys_ms": round(d[0] * 1000, 1), "gui_minflt": d[1],
                                "gui_waits": d[2], "gui_preempted": d[3], "proc_minflt": d[4]}
        self.last, self.last_thread, self.last_proc, self.last_wall = now, thread, proc, wall
        self.last_usage = usage

    def start(self) -> None:
        self.start_clocks()
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


SIDE_LOOP = """
import sys, time
out = open(sys.argv[1], "a", buffering=1)
steal_out = open(sys.argv[2], "a", buffering=1)

def steal():
    try:
        with open("/proc/stat", "rb") as f:
            return int(f.readline().split()[8])  # the 'cpu' line's steal, all CPUs, ticks
    except (OSError, ValueError, IndexError):
        return -1

last, last_steal = time.perf_counter(), steal()
steal_out.write(f"{time.time():.4f} {last_steal}\\n")
while True:
    time.sleep(0.005)
    now = time.perf_counter()
    gap = now - last - 0.005
    if gap > 0.01:
        out.write(f"{time.time():.4f} {gap * 1000:.1f}\\n")
    s = steal()
    if s != last_steal:
        steal_out.write(f"{time.time():.4f} {s}\\n")
        last_steal = s
    last = now
"""


class SideBeat:
    """A 5 ms sleep loop in a separate process, and this process's major page faults: per
    phase, the worst gap that process saw (the machine's own pauses: scheduling, I/O,
    reclaim; not this application's) and the faults this process took."""

    def __init__(self, folder: Path) -> None:
        import subprocess

        self.log = folder / "side-beat.txt"
        self.steal_log = folder / "side-steal.txt"
        self.log.write_text("")
        self.steal_log.write_text("")
        self.proc = subprocess.Popen([sys.executable, "-c", SIDE_LOOP, str(self.log),
                                      str(self.steal_log)])
        self.cpus = os.cpu_count() or 1
        self.tick_s = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
        deadline = time.time() + 10
        while not self.steal_log.read_text() and time.time() < deadline:
            time.sleep(0.01)  # the first steal count is the base of the first phase
        self.t0, self.faults0 = time.time(), self.faults()

    @staticmethod
    def faults() -> int:
        try:
            with open("/proc/self/stat", encoding="ascii") as f:
                return int(f.read().rsplit(")", 1)[1].split()[9])  # majflt
        except (OSError, ValueError, IndexError):
            return -1

    def start(self) -> None:
        self.t0, self.faults0 = time.time(), self.faults()

    def stop(self) -> tuple[float, int]:
        """(worst gap of the other process in ms, major faults of this one) since start."""
        t1, worst = time.time(), 0.0
        for line in self.log.read_text().splitlines():
            when, gap = line.split()
            if self.t0 <= float(when) <= t1:
                worst = max(worst, float(gap))
        return round(worst, 1), self.faults() - self.faults0

    def steal_ms(self, t0: float, t1: float) -> float:
        """The machine's steal time (ms, per CPU: the hypervisor ran something else) seen
        between ``t0`` and ``t1`` (``time.time()``), to the 10 ms of the kernel's ticks.
        The loop notes a change within 5 ms, so the window is widened by that much."""
        steal = [(float(w), int(v)) for w, v in
                 (line.split() for line in self.steal_log.read_text().splitlines())]
        before = [v for w, v in steal if w <= t0]
        upto = [v for w, v in steal if w <= t1 + 0.006]
        if not before or not upto or before[-1] < 0:
            return float("nan")
        return round((upto[-1] - before[-1]) * self.tick_s * 1000 / self.cpus, 1)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def threads_cpu_ns() -> dict[str, int]:
    """CPU time (ns, ``/proc/self/task/*/schedstat``) of each thread of this process by
    name: the Python thread's name where there is one, else the kernel's (Qt names its
    threads); threads of one name are summed."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, int] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", encoding="ascii") as f:
                ns = int(f.read().split()[0])
            name = names.get(int(tid))
            if name is None:
                with open(f"/proc/self/task/{tid}/comm", encoding="ascii") as f:
                    name = f.read().strip()
        except (OSError, ValueError, IndexError):
            continue
        out[name] = out.get(name, 0) + ns
    return out


def busy_threads(before: dict[str, int], after: dict[str, int],
                 at_least_ms: float = 1.0) -> dict[str, float]:
    """The threads that ran at least ``at_least_ms`` between two :func:`threads_cpu_ns` (a
    thread that ended in between is not seen; one that started counts from zero)."""
    ran = {n: (ns - before.get(n, 0)) / 1e6 for n, ns in after.items()}
    return {n: round(ms, 1) for n, ms in sorted(ran.items(), key=lambda x: -x[1])
            if ms >= at_least_ms}


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


ATTRIBUTION = ("_stall_gui_cpu_ms", "_stall_proc_cpu_ms", "_stall_steal_ms", "_stall_gui_sys_ms",
               "_stall_gui_minflt", "_stall_gui_waits", "_stall_gui_preempted",
               "_stall_proc_minflt")
FORMATS = ("coco", "label-studio", "yolo-pose", "dlc", "sleap")
# the smallest valid JPEG (1 x 1, grey): what the folder formats copy for a generated image
TINY_JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300080606070605080707070909080a0c140d0c"
    "0b0b0c1912130f141d1a1f1e1d1a1c1c20242e2720222c231c1c2837292c30313434341f27393d38323c2e"
    "333432ffc0000b080001000101011100ffc4001f0000010501010101010100000000000000000102030405"
    "060708090a0bffc400b5100002010303020403050504040000017d01020300041105122131410613516107"
    "227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a4344"
    "45464748494a535455565758595a636465666768696a737475767778797a838485868788898a9293949596"
    "9798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3"
    "e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffda0008010100003f00fbd3ffd9")


def placeholder_images(project, formats: tuple[str, ...]) -> int:  # noqa: ANN001
    """Write a tiny file for every image that is not there, when a format copies images,
    and flush them to disk (their writeback is the benchmark's, not a measured phase's);
    the number written."""
    if not {"yolo-pose", "dlc"} & set(formats):
        return 0
    root = Path(project.image_root)
    written = 0
    for rec in project.images:
        f = root / rec.path
        if not f.exists():
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(TINY_JPEG)
            written += 1
    if written and hasattr(os, "sync"):
        os.sync()
    return written


def measure_exports(win, begin: Callable[[], None], phase: Callable[[str], None],  # noqa: ANN001
                    formats: tuple[str, ...], out_dir: Path, res: dict[str, float]) -> None:
    """Each format exported from the open project, every predicted image; per format the
    worst GUI stall from the start to the written file, and the seconds that took."""
    from annotator.io.coco import ExportChoice, ExportScope
    from annotator.io.formats import ExportOptions, default_output_name

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    for fmt in formats:
        target = out_dir / default_output_name(fmt, "bench")
        begin()
        t, ran = time.perf_counter(), threads_cpu_ns()
        with timed_steps(win, res, f"export_{fmt}_step", EXPORT_STEPS):
            if fmt == "coco":
                started = win.export_coco(str(target), ExportChoice(ExportScope.PREDICTIONS))
            else:
                started = win.export_as(fmt, str(target),
                                        ExportOptions(include_predictions=True))
            ok = started and run_until(lambda: not win.exporter.busy, 1800)
        res[f"export_{fmt}_s"] = time.perf_counter() - t if ok else float("nan")
        res[f"export_{fmt}_threads_ms"] = busy_threads(ran, threads_cpu_ns())
        phase(f"export_{fmt}")
        t = time.perf_counter()
        if hasattr(os, "sync"):  # this export's writeback is not the next phase's
            os.sync()
        res[f"export_{fmt}_sync_s"] = time.perf_counter() - t
        if not target.exists():
            print(f"export {fmt} wrote nothing: {win.messages[-1:]}", flush=True)
            res[f"export_{fmt}_s"] = float("nan")
    shutil.rmtree(out_dir, ignore_errors=True)


FAKE_KEYPOINTS = [17]  # the fake engine's keypoints per prediction: the open project's


def fake_fast_propagation(per_image_s: float = 0.001) -> None:
    """Replace the propagation job by a fake engine that yields a prediction (every keypoint) per
    target every ``per_image_s`` (1,000 images/s: faster than any real engine), so the phase
    measures what the GUI thread does with a stream of results, not the engine."""
    import numpy as np

    from annotator.jobs import propagate as job

    k = FAKE_KEYPOINTS

    def run(request, engine, state, loader=None, head=None):  # noqa: ANN001, ANN202, ARG001
        for i, target in enumerate(request.targets):
            if state.is_cancelled():
                return
            n = k[0]
            xy = np.column_stack([np.full(n, float(i % 50)), np.arange(n, dtype=float)])
            yield job.Prediction(str(getattr(target, "path", target)), xy, np.full(n, 0.9),
                                 np.ones(n, bool), np.zeros(n, bool), (64, 48))
            time.sleep(per_image_s)

    job.run_propagation = run


def measure_propagation(win, project, paths: list[str], n: int,  # noqa: ANN001
                        res: dict[str, float]) -> None:
    """Propagate from the first image to the next ``n`` with the fake fast engine; the
    seconds until every result is applied (the phase's stall is taken by the caller)."""
    from annotator.domain import ImageStatus

    if project.status(paths[0]) != ImageStatus.REFERENCE:
        project.set_status(paths[0], ImageStatus.REFERENCE)
    FAKE_KEYPOINTS[0] = len(project.schema)
    targets = paths[1:n + 1]
    t = time.perf_counter()
    fake = SimpleNamespace(loaded=False, fingerprint="bench-fake",  # models never read
                           config=SimpleNamespace(fusion="dino"))
    ok = win.start_propagation(engine_factory=lambda *a, **k: fake, targets=targets)
    # until the run has ended for the user: the worker done and every result applied
    ok = ok and run_until(lambda: not win.run_active, 600)
    res["propagate_s"] = time.perf_counter() - t if ok else float("nan")
    res["propagate_images"] = len(targets)


#: what a close does on the GUI thread, step by step (see :func:`timed_steps`)
CLOSE_STEPS = ("_saved_or_confirmed", "set_project", "_detach_project", "editor.set_project",
               "retrainer.attach", "loader.set_root", "welcome.refresh", "_update_title",
               "_update_actions", "_update_counts", "editor.quiesce")


#: what showing an opened project does on the GUI thread (the preview's, then the full load's)
OPEN_STEPS = ("set_project", "_detach_project", "editor.set_project", "retrainer.attach",
              "loader.set_root", "attach_autosaver", "set_review_counts", "_update_title",
              "_update_actions", "_update_counts")


#: what an export does on the GUI thread: its start (pending predictions applied, the
#: child process or the snapshot, the progress bar), each progress report, its end
EXPORT_STEPS = ("export_coco", "export_as", "flush_predictions", "_show_export_progress",
                "exporter._child", "exporter._start", "export_bar.setValue", "_record_export")


#: what a propagation does on the GUI thread: its start (the baseline snapshot), each
#: tick's slice of streamed predictions applied (and in it, the views told of each chunk),
#: the gallery's live re-sort (every 300 ms of a stream), its end
PROPAGATE_STEPS = ("start_propagation", "flush_predictions", "editor.project_changed",
                   "editor.gallery.model.refresh", "_finish_run_ui")


_MISSING = object()  # an attribute that was not on the instance before timed_steps


@contextlib.contextmanager
def timed_steps(win, res: dict[str, float], prefix: str,  # noqa: ANN001
                steps: tuple[str, ...] = CLOSE_STEPS) -> Iterator[None]:
    """Time each of ``steps`` (methods of the window or of its parts) while the block runs:
    ``res[f"{prefix}_{step}_ms"]`` (wall) and ``..._cpu_ms`` (the calling thread's CPU),
    summed over calls, and ``..._max_ms`` (the longest call); the module's
    ``drop_in_background`` too. Nothing else changes. (A method a signal was connected to
    before is called by the signal unwrapped: time what it calls.)"""
    import resource

    import annotator.gui.main_window as mw

    patched: list[tuple[object, str, object]] = []

    def wrap(owner: object, name: str, key: str) -> None:
        fn = getattr(owner, name)

        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t, c = time.perf_counter(), time.thread_time()
            u = resource.getrusage(resource.RUSAGE_THREAD)
            try:
                return fn(*args, **kwargs)
            finally:
                v = resource.getrusage(resource.RUSAGE_THREAD)
                took = (time.perf_counter() - t) * 1000
                longest = f"{prefix}_{key}_max_ms"  # the longest single call
                res[longest] = round(max(res.get(longest, 0), took), 2)
                for what, value in (("ms", took),
                                    ("cpu_ms", (time.thread_time() - c) * 1000),
                                    ("sys_ms", (v.ru_stime - u.ru_stime) * 1000),
                                    ("minflt", v.ru_minflt - u.ru_minflt)):
                    name_ = f"{prefix}_{key}_{what}"
                    res[name_] = round(res.get(name_, 0) + value, 2)

        patched.append((owner, name, owner.__dict__.get(name, _MISSING)))
        setattr(owner, name, timed)

    for step in steps:
        *parts, name = step.split(".")
        owner = win
        for part in parts:
            owner = getattr(owner, part)
        wrap(owner, name, step)
    wrap(mw, "drop_in_background", "drop_in_background")
    try:
        yield
    finally:
        for owner, name, before in reversed(patched):
            if before is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, before)


def one_round(win, path: Path, beat: Heartbeat, gcw: GcWatch,  # noqa: ANN001
              formats: tuple[str, ...] = (), propagate: int = 0,
              side: SideBeat | None = None) -> dict[str, float]:
    res: dict[str, float] = {}

    def phase(name: str) -> None:
        res[f"{name}_stall_ms"] = beat.stop_ms()
        res[f"{name}_gc_ms"] = gcw.stop_ms()
        res[f"{name}_gc_gen"] = gcw.gen
        res[f"{name}_stall_gui_cpu_ms"] = round(beat.worst_thread * 1000, 1)
        res[f"{name}_stall_proc_cpu_ms"] = round(beat.worst_proc * 1000, 1)
        for key, value in beat.worst_usage.items():
            res[f"{name}_stall_{key}"] = value
        if side is not None:
            res[f"{name}_side_ms"], res[f"{name}_majflt"] = side.stop()
            res[f"{name}_stall_steal_ms"] = side.steal_ms(*beat.worst_window)

    def begin() -> None:
        beat.start()
        gcw.start()
        if side is not None:
            side.start()

    # ---- open
    begin()
    t0 = time.perf_counter()
    with timed_steps(win, res, "open_step", OPEN_STEPS):  # the preview's and the load's
        win.open_project(str(path))
        res["open_call_s"] = time.perf_counter() - t0
        run_for(0.02)
        res["open_answering_s"] = time.perf_counter() - t0  # the event loop runs again
        ok = run_until(lambda: win.project is not None and win.editor.gallery.model.rowCount(),
                       600)
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
    # ---- propagation streaming (fake fast engine)
    if propagate:
        begin()
        with timed_steps(win, res, "propagate_step", PROPAGATE_STEPS):
            measure_propagation(win, project, paths, propagate, res)
        run_until(lambda: not win.autosaver.dirty, 60)
        phase("propagate")
    # ---- exports
    if formats:
        placeholder_images(project, formats)
        measure_exports(win, begin, phase, formats, path.parent / "bench-exports", res)
    # ---- close
    begin()
    t, ran = time.perf_counter(), threads_cpu_ns()
    with timed_steps(win, res, "close_step"):
        win.close_project()
        res["close_call_s"] = time.perf_counter() - t
        # which threads ran beside it (some closes ran every step 10-40 times slower)
        res["close_call_threads_ms"] = busy_threads(ran, threads_cpu_ns())
        run_until(lambda: not win.closing, 30)  # its last steps, one per turn after it
        res["close_steps_s"] = time.perf_counter() - t
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
    ap.add_argument("--formats", default=",".join(FORMATS),
                    help="exports to measure, comma-separated ('' for none): "
                         + ", ".join(FORMATS))
    ap.add_argument("--sort", default="Name",
                    help="the gallery's sort during the rounds (Name, 'Worst first', Status): "
                         "other than Name, streamed predictions move rows live")
    ap.add_argument("--propagate", type=int, default=2000,
                    help="images to propagate to with a fake fast engine (0: no such phase)")
    ap.add_argument("--default-switch-interval", action="store_true",
                    help="keep Python's 5 ms GIL switch interval (the application sets its own)")
    args = ap.parse_args()
    formats = tuple(f for f in args.formats.split(",") if f)
    if "sleap" in formats:
        import importlib.util

        if importlib.util.find_spec("sleap_io") is None:
            formats = tuple(f for f in formats if f != "sleap")
            print("sleap-io is not installed: the SLEAP export is left out", flush=True)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    work = args.work or Path(tempfile.mkdtemp(prefix="store-gui-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_CONFIG_HOME"] = str(work / "config")  # recent-files list kept aside
    big = work / "bench.kpproj"
    out: dict[str, object] = {"images": args.images, "instances_per_image": 3, "keypoints": 17,
                              "rounds": args.rounds, "formats": list(formats)}
    if not big.exists():
        from store_bench import generate

        from annotator.io.project_file import save_project

        t = time.perf_counter()
        save_project(generate(args.images, work), big)
        out["generate_and_write_s"] = round(time.perf_counter() - t, 1)
    from PySide6.QtWidgets import QApplication

    from annotator.gui.app import preload_before_window, responsive_gil
    from annotator.gui.main_window import MainWindow

    if not args.default_switch_interval:
        responsive_gil()  # as the application starts
    out["switch_interval_s"] = sys.getswitchinterval()
    app = QApplication.instance() or QApplication([])
    out["startup_preload_s"] = round(preload_before_window(app), 1)  # as the app starts
    win = MainWindow(autosave_delay_s=0.5, preload_models=False)
    win.resize(1400, 860)
    win.show()
    run_for(0.3)
    demo_dir = work / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    win.open_demo(str(demo_dir))
    demo_path = Path(win.project_path)
    win.close_project()
    if args.propagate:
        fake_fast_propagation()
    win.editor.gallery.sort_box.setCurrentText(args.sort)  # kept by every project opened
    out["sort"] = win.editor.gallery.model.sort.value
    beat, gcw, side = Heartbeat(), GcWatch(), SideBeat(work)
    for name, path in (("demo", demo_path), ("big", big)):
        rounds = [one_round(win, path, beat, gcw, formats, args.propagate, side)
                  for _ in range(args.rounds)]
        worst = {k: round(max(r[k] for r in rounds), 3) for k in rounds[0]
                 if isinstance(rounds[0][k], (int, float))}  # not the per-thread tables
        for key in [k for k in worst if k.endswith(ATTRIBUTION)]:  # the worst stall's own
            stall = key.rsplit("_stall_", 1)[0] + "_stall_ms"
            worst[key] = max(rounds, key=lambda r: r[stall])[key]  # noqa: B023
        out[name] = worst
        out[f"{name}_rounds"] = rounds
        args.out.write_text(json.dumps(out, indent=1))
        print(name, json.dumps(worst), flush=True)
    side.close()
    win.shutdown()
    app.quit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
