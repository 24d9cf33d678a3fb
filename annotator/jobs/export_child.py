"""Exports whose last step is one long call into another library, run in a child process.

sleap-io's ``save_slp`` turns every point of the file into a numpy structured array in single
C calls that hold the GIL (176 ms at 10,000 images x 3 instances, ten times that at 100,000):
on a thread of the GUI process that freezes the window, and the call cannot be split. So the
GUI builds the export's :class:`~annotator.io.formats.sleap.SleapPlan` (a few flat arrays) on
its export thread, and a child process (``python -m annotator.jobs.export_child``: a fresh
interpreter that imports nothing of the parent's main script) builds sleap-io's objects from it
and writes the file. The arrays go down the child's stdin in 1 MB pieces, so no single call
copies them all while holding the GIL; the answer comes back on its stdout.

Progress and cancel stay those of the export: ``progress(done, total)`` is called while the
child works and may raise (a cancel); the child is then killed and the file it was staging
removed, so nothing is left at the target. An error in the child comes back as a
:class:`~annotator.io.formats.FormatError` with its message; a child that dies says so.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Any

from annotator.domain.project import Project
from annotator.io.formats import ExportOptions, ExportReport, FormatError, ProgressFn

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per piece of an array sent to the child
POLL_S = 0.1  # how often the parent checks the child (and calls progress: a cancel)
_LEN = struct.Struct("<Q")


def send_frame(f: IO[bytes], data: bytes) -> None:
    f.write(_LEN.pack(len(data)))
    f.write(data)


def recv_frame(f: IO[bytes]) -> bytes:
    head = f.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError("the other process closed the pipe")
    n = _LEN.unpack(head)[0]
    data = f.read(n)
    if len(data) < n:
        raise EOFError("the other process closed the pipe")
    return data


def _send_array(f: IO[bytes], arr: Any) -> None:
    import numpy as np

    arr = np.ascontiguousarray(arr)
    send_frame(f, pickle.dumps((arr.dtype.str, arr.shape)))
    data = memoryview(arr).cast("B")
    for i in range(0, len(data), CHUNK):
        send_frame(f, bytes(data[i:i + CHUNK]))
    send_frame(f, b"")  # the end of this array


def _recv_array(f: IO[bytes]) -> Any:
    import numpy as np

    dtype, shape = pickle.loads(recv_frame(f))
    buf = bytearray()
    while piece := recv_frame(f):
        buf += piece
    return np.frombuffer(bytes(buf), dtype=np.dtype(dtype)).reshape(shape)


def child_main(inp: IO[bytes], out: IO[bytes]) -> int:
    """The child: read a SleapPlan and the target from ``inp``, write the file, answer
    ("done", report) or ("error", message) on ``out``."""
    try:
        from annotator.io.formats.sleap import SleapPlan, write_plan

        fields, target = pickle.loads(recv_frame(inp))
        sources: list[str] = []
        while piece := recv_frame(inp):
            sources += pickle.loads(piece)
        fields["sources"] = tuple(sources)
        arrays = {name: _recv_array(inp) for name in SleapPlan.ARRAYS}
        answer: tuple[str, Any] = ("done", write_plan(SleapPlan(**fields, **arrays), target))
    except FormatError as exc:
        answer = ("error", str(exc))
    except BaseException as exc:  # noqa: BLE001 (everything goes back to the parent)
        answer = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")
    send_frame(out, pickle.dumps(answer))
    out.flush()
    return 0


def child_env() -> dict[str, str]:
    """The parent's environment, with the folder of this ``annotator`` package first on the
    child's import path (the child runs the same code)."""
    import annotator

    env = dict(os.environ)
    root = str(Path(annotator.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def child_command(module: str = "annotator.jobs.export_child") -> list[str]:
    """A child's command line: this interpreter running ``module`` (default: this one)."""
    return [sys.executable, "-m", module]


def write_sleap_in_child(project: Project, out: str | Path,
                         options: ExportOptions | None = None,
                         progress: ProgressFn | None = None) -> ExportReport:
    """:func:`annotator.io.formats.sleap.write_sleap`, with the sleap-io part in a child
    process (see the module's note). The same file; the same progress, cancel and errors."""
    from annotator.io.formats._common import clean_stale_stages, refuse_symlink
    from annotator.io.formats.sleap import SleapPlan, check_sleap_target, plan_sleap

    out = check_sleap_target(out)
    refuse_symlink(out)
    plan = plan_sleap(project, options or ExportOptions(), progress)
    total = max(2 * len(project.images), 1)
    proc = subprocess.Popen(child_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=child_env())
    assert proc.stdin is not None and proc.stdout is not None
    answers: queue.Queue[tuple[str, Any]] = queue.Queue()

    def read_answer(stdout: IO[bytes]) -> None:
        try:
            answers.put(pickle.loads(recv_frame(stdout)))
        except Exception:  # noqa: BLE001 (a dead child: said below)
            answers.put(("died", None))

    reader = threading.Thread(target=read_answer, args=(proc.stdout,),
                              name="annotator-sleap-export-answer", daemon=True)
    reader.start()
    try:
        fields = {name: getattr(plan, name) for name in ("schema", "boxes")}
        try:
            send_frame(proc.stdin, pickle.dumps((fields, str(out))))
            # the image paths a few thousand at a time: one pickle of 100,000 holds the GIL
            for i in range(0, len(plan.sources), 4096):
                send_frame(proc.stdin, pickle.dumps(list(plan.sources[i:i + 4096])))
            send_frame(proc.stdin, b"")
            for name in SleapPlan.ARRAYS:
                _send_array(proc.stdin, getattr(plan, name))
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):  # the child died: said below
            pass
        del plan
        while True:
            if progress is not None:
                progress(total, total)  # raises on cancel: the child is killed below
            try:
                kind, value = answers.get(timeout=POLL_S)
                break
            except queue.Empty:
                continue
    except BaseException:
        proc.kill()
        proc.wait()
        clean_stale_stages(out, out.suffix)  # what the killed child was staging
        raise
    finally:
        reader.join(timeout=5)
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
    proc.wait()
    if kind == "done":
        return value
    if kind == "error":
        raise FormatError(f"SLEAP export failed: {value}")
    clean_stale_stages(out, out.suffix)
    raise FormatError(f"{out}: the SLEAP writer process stopped unexpectedly "
                      f"(exit code {proc.returncode}); nothing was written")


if __name__ == "__main__":
    _answer_to = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints never reach the pipe
    _code = child_main(sys.stdin.buffer, _answer_to)
    _answer_to.close()
    sys.stderr.flush()
    os._exit(_code)  # no teardown of sleap-io's millions of objects (the parent waits)
