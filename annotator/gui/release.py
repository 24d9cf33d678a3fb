"""Freeing big object graphs off the GUI thread (a closed 100,000-image project, the gallery
rows of one), without holding the GIL for long."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from annotator.io.freeing import take_apart

_running = threading.Event()  # cleared while something urgent runs (see paused())
_running.set()
_paused_by = 0
_lock = threading.Lock()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Background frees wait while the block runs (what the user waits for: the gallery of
    a project being opened, often right after another was closed; the window switching
    projects, which hands the old one's parts to the frees as it goes)."""
    global _paused_by
    with _lock:
        _paused_by += 1
        _running.clear()
    try:
        yield
    finally:
        with _lock:
            _paused_by -= 1
            if not _paused_by:
                _running.set()


def drop_in_background(obj: object, wait_s: float = 2.0,
                       steps: list[Any] | None = None) -> threading.Thread:
    """Free a big object graph (a closed project: 5 million objects at 100,000 x 3; the
    gallery rows of one) on a daemon thread rather than the GUI thread.

    Freeing a dict drops all its values in one C call that holds the GIL throughout (about
    a second for a project's annotations), so the thread takes big containers apart one
    entry at a time: the GUI thread gets the GIL back in between. That happens only once
    the thread holds the last reference (it waits up to ``wait_s`` for the caller to let
    go); otherwise the object is simply released. ``steps``: the project's undo steps
    (:meth:`UndoStack.take`), freed first, a piece at a time: they refer to the project
    (a cycle), and a propagation's step holds thousands of annotations."""
    holder = [obj]
    del obj
    steps = [] if steps is None else steps

    def run() -> None:
        _running.wait(30.0)  # what dropped it (a close, an open) finishes first
        take_apart(*_parts_of(steps), pause=_pause)
        take_apart(steps, pause=_pause)
        deadline = time.monotonic() + wait_s
        while sys.getrefcount(holder[0]) > 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        if sys.getrefcount(holder[0]) == 2:  # ours alone: nobody sees it taken apart
            take_apart(holder, pause=_pause)
        holder.clear()

    thread = threading.Thread(target=run, name="drop-project", daemon=True)
    thread.start()
    return thread


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


__all__ = ["drop_in_background", "paused"]
