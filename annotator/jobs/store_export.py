"""Exports of a saved project, built and written by a child process that reads the store.

At 100,000 images an export is a minute of Python work. On any thread of the GUI process it
shares the GIL with the GUI thread: every time the GUI thread lets the GIL go (each call from
Python into Qt does) it may wait the whole switch interval to get it back, and the export's
single long C calls (frees, pickles, big list operations) hold it for tens of milliseconds;
at 100,000 x 3 the window stalled 100-430 ms per export (BENCHMARKS 7f). A child process
shares nothing with the GUI: it loads the project from its SQLite store and writes the
export; the GUI process only relays progress and cancel.

The snapshot: the child opens a read transaction on the store when the autosaver's writer
says so, between two transactions (:meth:`~annotator.io.autosave.Autosaver.after_writes`),
and the writer waits until it has: the export holds every edit made before it was asked for
and none made after, as an in-process export of the in-memory snapshot does (WAL keeps that
state of the file for the child however the user edits on).

Protocol on the child's stdin / stdout (length-prefixed frames, :func:`send_frame`):

- parent -> child: the :class:`StoreExport` (pickled); ``b"go"`` (pin the snapshot now);
  ``b"cancel"`` (or the pipe closing): stop, removing what was staged.
- child -> parent: ``("ready",)`` once the snapshot is pinned; ``("progress", done,
  total)`` now and then; then ``("done", Exported)``, ``("cancelled",)`` or ``("error",
  message)``.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from annotator.io.coco import CocoSource, ExportChoice
from annotator.io.formats import DEFAULT_EXPORT, ExportOptions, FormatError, ProgressFn
from annotator.io.formats._common import clean_stale_stages
from annotator.jobs.export_child import child_command, child_env, recv_frame, send_frame
from annotator.jobs.progress import Cancelled

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often the parent looks at the child (and calls progress: a cancel)
RELAY_S = 0.1  # the child sends progress at most this often
READY_S = 60.0  # the longest the writer waits for the child's snapshot
STOP_S = 15.0  # the longest a cancelled child may take to remove what it staged
SCALE = 1000  # progress goes out as (done, SCALE)
LOAD_SHARE = 0.3  # the share of the progress bar the load takes


@dataclass(frozen=True)
class StoreExport:
    """One export of the project saved in ``store``: ``fmt`` "coco" (Export COCO, with
    ``choice``) or a format of :mod:`annotator.io.formats` (Export as, with ``options``)."""

    store: str
    fmt: str
    target: str
    choice: ExportChoice | None = None
    options: ExportOptions | None = None


@dataclass(frozen=True)
class Exported:
    """What the child wrote: counts, and the format's summary ("" for Export COCO)."""

    images: int
    annotations: int
    summary: str = ""


# ------------------------------------------------------------------ the child
def _export(job: StoreExport, progress: ProgressFn, pinned: Any) -> Exported:
    from annotator.io.formats import export_project
    from annotator.io.project_file import load_project
    from annotator.io.video_formats import write_coco_with_frames

    def loading(fraction: float) -> None:
        progress(int(SCALE * LOAD_SHARE * fraction), SCALE)

    def exporting(done: int, total: int) -> None:
        progress(int(SCALE * (LOAD_SHARE + (1 - LOAD_SHARE) * done / max(total, 1))), SCALE)

    project = load_project(job.store, recover=False, progress=loading, pinned=pinned)
    gc.disable()  # nothing cyclic is made; a full collection would walk millions of objects
    if job.fmt == "coco":
        images, annotations = write_coco_with_frames(CocoSource.of(project), job.target,
                                                     job.choice, exporting)
        return Exported(images, annotations)
    report = export_project(project, job.fmt, job.target, job.options or DEFAULT_EXPORT,
                            exporting)
    return Exported(report.images, report.instances, report.summary())


def child_main(inp: IO[bytes], out: IO[bytes]) -> int:
    """The child: read a :class:`StoreExport`, wait for ``go``, pin the snapshot, export."""
    lock = threading.Lock()

    def answer(message: tuple[Any, ...]) -> None:
        with lock:
            send_frame(out, pickle.dumps(message))
            out.flush()

    cancel = threading.Event()

    def watch() -> None:  # b"cancel", or the parent gone: stop
        try:
            while recv_frame(inp) != b"cancel":
                pass
        except (EOFError, OSError):
            pass
        cancel.set()

    last = [0.0]

    def progress(done: int, total: int) -> None:
        if cancel.is_set():
            raise Cancelled()
        now = time.monotonic()
        if now - last[0] >= RELAY_S or done >= total:
            last[0] = now
            answer(("progress", done, total))

    try:
        job = pickle.loads(recv_frame(inp))
        if not isinstance(job, StoreExport):
            raise TypeError(f"not an export job: {type(job).__name__}")
        if recv_frame(inp) != b"go":
            return 0
        threading.Thread(target=watch, name="cancel-watch", daemon=True).start()
        result: tuple[Any, ...] = ("done", _export(job, progress, lambda: answer(("ready",))))
    except Cancelled:
        result = ("cancelled",)
    except EOFError:  # the parent went away before "go"
        return 0
    except (OSError, ValueError) as exc:  # FormatError, ProjectFileError: named problems
        result = ("error", str(exc))
    except BaseException as exc:  # noqa: BLE001 (everything goes back to the parent)
        result = ("error", f"{type(exc).__name__}: {exc}")
        log.exception("export in the child failed")
    answer(result)
    return 0


# ------------------------------------------------------------------ the parent
class StoreExportChild:
    """The parent's end of one export in a child process. Made on the GUI thread (starting
    a process takes milliseconds); :meth:`pin` runs on the autosaver's writer,
    :meth:`finish` on the export's thread."""

    def __init__(self, job: StoreExport) -> None:
        self.job = job
        self.proc = subprocess.Popen(child_command("annotator.jobs.store_export"),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=child_env())
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._answers: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,),
                                        name="annotator-export-answers", daemon=True)
        self._reader.start()
        self._send(pickle.dumps(job))

    def _read(self, stdout: IO[bytes]) -> None:
        try:
            while True:
                message = pickle.loads(recv_frame(stdout))
                self._answers.put(message)
                if message[0] in ("done", "cancelled", "error"):
                    return
        except Exception:  # noqa: BLE001 (a dead child: said by the one who waits)
            self._answers.put(("died",))

    def _send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            send_frame(self.proc.stdin, data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ConnectionResetError, ValueError):
            pass  # the child is gone: its answer (or its absence) says so

    def _died(self) -> FormatError:
        code = self.proc.wait()
        return FormatError(f"{self.job.target}: the export process stopped unexpectedly "
                           f"(exit code {code}); nothing was written")

    def _outcome(self, message: tuple[Any, ...]) -> Exported:
        kind = message[0]
        if kind == "done":
            return message[1]
        if kind == "cancelled":
            raise Cancelled()
        if kind == "error":
            raise FormatError(message[1])
        raise self._died()

    def pin(self, timeout: float = READY_S) -> None:
        """Tell the child to pin its snapshot of the store, and wait until it has (on the
        autosaver's writer: nothing is committed meanwhile)."""
        self._send(b"go")
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self._answers.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise FormatError(f"{self.job.target}: the export process did not start "
                                  f"within {timeout:.0f} s") from None
            if message[0] == "ready":
                return
            if message[0] != "progress":
                self._outcome(message)  # an error, or the child died: raises

    def finish(self, pinned: Future[None], progress: ProgressFn | None = None) -> Exported:
        """Wait for the snapshot (``pinned``: the writer's :meth:`pin`), then relay the
        child's progress until it is done. ``progress`` may raise (a cancel): the child
        stops and removes what it staged. Errors come back as FormatError."""
        done, total = 0, SCALE
        try:
            while True:
                if progress is not None:
                    progress(done, total)
                try:
                    pinned.result(timeout=POLL_S)
                    break
                except FutureTimeout:
                    continue
            while True:
                try:
                    message = self._answers.get(timeout=POLL_S)
                except queue.Empty:
                    if progress is not None:
                        progress(done, total)
                    continue
                if message[0] == "progress":
                    done, total = message[1], message[2]
                    if progress is not None:
                        progress(done, total)
                elif message[0] != "ready":
                    result = self._outcome(message)
                    self._close(STOP_S)
                    return result
        except Cancelled:
            pinned.cancel()  # not pinned yet: the writer skips it (no "go" to a dead child)
            self.stop()
            finished = self._finished_anyway()
            if finished is None:
                raise
            log.info("%s: written before the cancel reached the export", self.job.target)
            return finished
        except BaseException:
            self.stop()
            raise

    def _finished_anyway(self) -> Exported | None:
        """What the child wrote when it finished before a cancel reached it (the file is
        there: the caller hears so rather than "cancelled")."""
        while True:
            try:
                message = self._answers.get_nowait()
            except queue.Empty:
                return None
            if message[0] == "done":
                return message[1]

    def stop(self) -> None:
        """Stop the child: ask it to cancel, kill it if it does not within STOP_S, and
        then remove what it was staging."""
        self._send(b"cancel")
        if not self._close(STOP_S):
            target = Path(self.job.target)
            clean_stale_stages(target)
            clean_stale_stages(target, target.suffix)

    def _close(self, timeout: float) -> bool:
        """Close the pipes and reap the child; False when it had to be killed."""
        for pipe in (self.proc.stdin,):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=timeout)
            killed = False
        except subprocess.TimeoutExpired:
            log.warning("the export process for %s did not stop: killed", self.job.target)
            self.proc.kill()
            self.proc.wait()
            killed = True
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            try:
                self.proc.stdout.close()
            except OSError:
                pass
        return not killed


if __name__ == "__main__":
    _answer_to = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints never reach the pipe
    # this file runs as __main__: the real module's classes are the ones that are pickled
    from annotator.jobs import store_export as _module

    _code = _module.child_main(sys.stdin.buffer, _answer_to)
    _answer_to.close()
    sys.stderr.flush()
    os._exit(_code)  # no teardown of the loaded project's millions of objects
