"""Freeing big object graphs off the GUI thread (a closed 100,000-image project, the gallery
rows of one), without holding the GIL for long."""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from annotator.io.freeing import take_apart

log = logging.getLogger(__name__)

_running = threading.Event()  # cleared while something urgent runs (see paused())
_running.set()
_paused_by = 0
_lock = threading.Lock()


class FreesHeld:
    """Background frees wait from its making until :meth:`release` (once, from any thread):
    a hold that spans more than one block of code, such as an open from its start until
    the window has shown the preview (see :func:`hold_frees`)."""

    def __init__(self) -> None:
        global _paused_by
        self._released = False
        with _lock:
            _paused_by += 1
            _running.clear()

    def release(self) -> None:
        """Let the frees go on (again: nothing)."""
        global _paused_by
        with _lock:
            if self._released:
                return
            self._released = True
            _paused_by -= 1
            if not _paused_by:
                _running.set()


def hold_frees() -> FreesHeld:
    """Background frees wait until the returned hold is released. A free waits 30 s at
    most for one (:func:`_free`, :func:`_pause`): a hold never released slows the frees
    down, it does not stop them."""
    return FreesHeld()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Background frees wait while the block runs (what the user waits for: the window
    switching projects, which hands the old one's parts to the frees as it goes)."""
    held = FreesHeld()
    try:
        yield
    finally:
        held.release()


class Dropped:
    """A project handed to :func:`drop_in_background`: :meth:`join` waits until it is
    freed (or released: somebody else still refers to it)."""

    def __init__(self) -> None:
        self._done = threading.Event()

    def join(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def is_alive(self) -> bool:
        """Whether it is still waiting or being freed."""
        return not self._done.is_set()


#: threads freeing at once: a close hands over three things (the project, its gallery rows,
#: its review counts), an open's full load three more (the preview's); each is paced
#: (:func:`_pause`), so one thread for all made them queue up for 15-20 s at 100,000 x 3,
#: and the next project loaded while the last one was still held
FREEING_THREADS = 4


class _Freer:
    """Daemon threads that free what they are handed (:data:`FREEING_THREADS`, taking it in
    order). They live as long as the process: starting a thread per close or open cost the
    GUI thread 2-4 ms each in ``Thread.start`` (waiting for the new thread to get the GIL
    while a project loads)."""

    def __init__(self, threads: int = FREEING_THREADS) -> None:
        self._queue: queue.SimpleQueue[tuple[list[object], list[Any], float, Dropped]] = \
            queue.SimpleQueue()
        self._threads: list[threading.Thread | None] = [None] * threads
        self._lock = threading.Lock()
        self._pending = 0  # handed and not yet freed (under _lock, like the threads)

    def start(self) -> None:
        """Start the threads not running (the window does at once, so that no open or
        close pays for it)."""
        with self._lock:
            for i, thread in enumerate(self._threads):
                if thread is None or not thread.is_alive():
                    thread = threading.Thread(target=self._run, name="drop-project",
                                              daemon=True)
                    thread.start()
                    self._threads[i] = thread

    def put(self, holder: list[object], steps: list[Any], wait_s: float) -> Dropped:
        dropped = Dropped()
        with self._lock:
            self._pending += 1
        self._queue.put((holder, steps, wait_s, dropped))
        self.start()
        return dropped

    def pending(self) -> int:
        """How many of the objects handed over are not freed yet."""
        with self._lock:
            return self._pending

    def _run(self) -> None:
        while True:
            holder, steps, wait_s, dropped = self._queue.get()
            try:
                _free(holder, steps, wait_s)
            except Exception:  # noqa: BLE001 (a free never ends the thread)
                log.exception("freeing a closed project failed")
            finally:
                holder.clear()
                del holder, steps
                with self._lock:
                    self._pending -= 1
                dropped._done.set()


_freer = _Freer()


def start_freeing() -> None:
    """Start the threads that :func:`drop_in_background` hands to (at once, not on the
    first close or open)."""
    _freer.start()


def frees_held() -> int:
    """How many holds (:func:`paused` blocks, :class:`FreesHeld`) keep the frees waiting."""
    with _lock:
        return _paused_by


def frees_pending() -> int:
    """How many objects handed to :func:`drop_in_background` are not freed yet."""
    return _freer.pending()


def drop_in_background(obj: object, wait_s: float = 2.0,
                       steps: list[Any] | None = None) -> Dropped:
    """Free a big object graph (a closed project: 5 million objects at 100,000 x 3; the
    gallery rows of one) on a background thread rather than the GUI thread.

    Freeing a dict drops all its values in one C call that holds the GIL throughout (about
    a second for a project's annotations), so the thread takes big containers apart one
    entry at a time: the GUI thread gets the GIL back in between. That happens only once
    the thread holds the last reference (it waits up to ``wait_s`` for the caller to let
    go); otherwise the object is simply released. ``steps``: the project's undo steps
    (:meth:`UndoStack.take`), freed first, a piece at a time: they refer to the project
    (a cycle), and a propagation's step holds thousands of annotations. The threads are
    started once (:func:`start_freeing`), not per call."""
    holder = [obj]
    del obj
    return _freer.put(holder, [] if steps is None else steps, wait_s)


def _free(holder: list[object], steps: list[Any], wait_s: float) -> None:
    _running.wait(30.0)  # what dropped it (a close, an open) finishes first
    take_apart(*_parts_of(steps), pause=_pause)
    take_apart(steps, pause=_pause)
    deadline = time.monotonic() + wait_s
    # the holder's reference, getrefcount's: nobody sees it taken apart
    while sys.getrefcount(holder[0]) > 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    if sys.getrefcount(holder[0]) == 2:
        take_apart(holder, pause=_pause)


def _parts_of(steps: list[Any]) -> list[Any]:
    """The containers held by undo steps (an annotation step's payload: the annotations
    of every image it changed, before and after). They are emptied in place: once the
    project is closed, nothing reads its undo steps again."""
    parts: list[Any] = []
    for step in steps:
        payload = getattr(step, "payload", None)
        if isinstance(payload, tuple):
            parts.extend(p for p in payload if isinstance(p, (dict, list)))
    return parts


def _pause(freed: int) -> int:
    """Sleep 4 ms every 256 entries (a millisecond or two of work): a CPU-bound thread
    otherwise makes every GIL hand-over of the GUI thread wait up to the 5 ms switch
    interval, and the next project's load (often right after a close) would share the GIL
    with it half and half. Freeing a 100,000 x 3 project takes a few seconds this way."""
    if freed % 256 == 255:
        time.sleep(0.004)
        _running.wait(30.0)
    return freed + 1


__all__ = ["Dropped", "FreesHeld", "drop_in_background", "frees_held", "frees_pending",
           "hold_frees", "paused", "start_freeing"]
