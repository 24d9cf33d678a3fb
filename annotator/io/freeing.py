"""Freeing big object graphs a piece at a time.

Dropping the last reference to a dict or list of 100,000 entries frees every entry in one C
call that holds the GIL throughout (100-700 ms for a 100,000-image project's export frames,
label paths or decoded document), stalling every other thread, the GUI's included. Taken
apart entry by entry from Python code, the interpreter hands the GIL over in between.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

BIG = 1000  # containers with more entries than this are taken apart


def take_apart(*roots: Any, pause: Callable[[int], int] | None = None) -> None:
    """Empty each of ``roots`` (dicts and lists: the caller's, emptied in place) and every
    big dict or list under them that nothing else refers to (also the attributes of objects
    in them, and the entries of small lists and dicts holding big ones), entry by entry.
    ``pause(freed)`` is called after each entry and returns the new count (a background
    thread sleeps in it now and then)."""
    stack: list[Any] = [r for r in roots if isinstance(r, (dict, list))]
    freed = 0
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            while item:
                _key, value = item.popitem()
                if _worth(value):
                    stack.append(value)
                del value
                freed = pause(freed) if pause is not None else freed + 1
        elif isinstance(item, list):
            while item:
                value = item.pop()
                if _worth(value):
                    stack.append(value)
                del value
                freed = pause(freed) if pause is not None else freed + 1
        else:
            attrs = getattr(item, "__dict__", None)
            for name in list(attrs) if isinstance(attrs, dict) else ():
                value = attrs[name]
                # the attribute, ours, getrefcount's: held nowhere else
                if isinstance(value, (dict, list)) and len(value) > BIG \
                        and sys.getrefcount(value) <= 3:
                    stack.append(value)
                del value
        del item


SMALL = 64  # a container at most this long is looked into for big ones


def _worth(value: Any) -> bool:
    """Whether ``value`` is taken apart too: a big container, a small one holding a big one
    (the gallery's old state: a list of its 10^5-entry tables, 100-120 ms to free in one
    call), or an object holding one; referred to only from where it was taken (anything
    else is freed at once: small)."""
    if sys.getrefcount(value) > 3:  # the caller's, ours, getrefcount's: held elsewhere too
        return False
    if isinstance(value, (dict, list)):
        if len(value) > BIG:
            return True
        return len(value) <= SMALL and any(
            map(_big, value.values() if isinstance(value, dict) else value))
    attrs = getattr(value, "__dict__", None)  # an object holding a big container
    return isinstance(attrs, dict) and not isinstance(value, type) and any(
        map(_big, attrs.values()))


def _big(value: Any) -> bool:
    return isinstance(value, (dict, list)) and len(value) > BIG


__all__ = ["BIG", "take_apart"]
