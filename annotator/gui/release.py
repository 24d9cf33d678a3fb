"""Freeing big object graphs off the GUI thread (a closed 100,000-image project, the gallery
rows of one), without holding the GIL for long."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

_running = threading.Event()  # cleared while something urgent runs (see paused())
_running.set()
_paused_by = 0
_lock = threading.Lock()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Background frees wait while the block runs (what the user waits for: the gallery of
    a project being opened, often right after another was closed)."""
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


def drop_in_background(obj: object, wait_s: float = 2.0) -> threading.Thread:
    """Free a big object graph (a closed project: 5 million objects at 100,000 x 3; the
    gallery rows of one) on a daemon thread rather than the GUI thread.

    Freeing a dict drops all its values in one C call that holds the GIL throughout (about
    a second for a project's annotations), so the thread takes big containers apart one
    entry at a time: the GUI thread gets the GIL back in between. That happens only once
    the thread holds the last reference (it waits up to ``wait_s`` for the caller to let
    go); otherwise the object is simply released."""
    holder = [obj]
    del obj

    def run() -> None:
        deadline = time.monotonic() + wait_s
        while sys.getrefcount(holder[0]) > 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        if sys.getrefcount(holder[0]) == 2:  # ours alone: nobody sees it taken apart
            _take_apart(holder)
        holder.clear()

    thread = threading.Thread(target=run, name="drop-project", daemon=True)
    thread.start()
    return thread


_BIG = 1000  # containers with more entries than this are taken apart


def _take_apart(root: list[Any]) -> None:
    """Empty ``root`` and every big dict or list under it (also the attributes of objects
    in it), entry by entry, so that no single free is big."""
    stack: list[Any] = [root]
    freed = 0
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            while item:
                _key, value = item.popitem()
                if _worth(value):
                    stack.append(value)
                del value
                freed = _pause(freed)
        elif isinstance(item, list):
            while item:
                value = item.pop()
                if _worth(value):
                    stack.append(value)
                del value
                freed = _pause(freed)
        else:
            attrs = getattr(item, "__dict__", None)
            for name in list(attrs) if isinstance(attrs, dict) else ():
                value = attrs[name]
                # the attribute, ours, getrefcount's: held nowhere else
                if isinstance(value, (dict, list)) and len(value) > _BIG \
                        and sys.getrefcount(value) <= 3:
                    stack.append(value)
                del value
        del item


def _pause(freed: int) -> int:
    """Sleep 4 ms every 256 entries (a millisecond or two of work): a CPU-bound thread
    otherwise makes every GIL hand-over of the GUI thread wait up to the 5 ms switch
    interval, and the next project's load (often right after a close) would share the GIL
    with it half and half. Freeing a 100,000 x 3 project takes a few seconds this way."""
    if freed % 256 == 255:
        time.sleep(0.004)
        _running.wait(30.0)
    return freed + 1


def _worth(value: Any) -> bool:
    """Whether ``value`` is taken apart too: a big container, or an object holding one,
    referred to only from where it was taken (anything else is freed at once: small)."""
    if sys.getrefcount(value) > 3:  # the caller's, ours, getrefcount's: held elsewhere too
        return False
    if isinstance(value, (dict, list)):
        return len(value) > _BIG
    attrs = getattr(value, "__dict__", None)  # an object holding a big container
    return isinstance(attrs, dict) and not isinstance(value, type) and any(
        isinstance(v, (dict, list)) and len(v) > _BIG for v in attrs.values())


__all__ = ["drop_in_background", "paused"]
