"""Long work on a background thread, done in steps that let a waiting thread (the GUI's)
have the GIL.

Two ways such work keeps the GUI thread waiting:

- one C call over 10^5 items (``sorted``, ``dict(zip(...))``) holds the GIL throughout
  (10-25 ms at 100,000 paths, more while its fresh memory is faulted in);
- a loop that releases the GIL briefly and often, as :mod:`sqlite3` does for every row it
  reads or writes, takes it back each time before the waiting thread has woken up. CPython
  asks the holder to drop the GIL only when a waiter's switch interval passed *without a
  switch*, and each of those brief releases counts as one, so the waiter never asks. While a
  pool thread read the 300,000 instance rows of a 100,000-image store, perf showed the GUI
  thread's timed waits for the GIL expiring every 0.8 ms for 40 ms at a time (30-120 ms
  stalls); with a 0.1 ms sleep every 5 ms of reading (:class:`Cede`), no wait over 10 ms
  and the read no slower (7.8-8.1 s either way).
"""

from __future__ import annotations

import heapq
import sqlite3
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: seconds of work between two pauses of :class:`Cede`: the longest a waiting thread waits
#: for its turn (the probes of the open in BENCHMARKS 7n tried 5, 2 and 1 ms)
CEDE_EVERY_S = 0.002
#: the pause (seconds): long enough for a woken thread to take the GIL (a sleep of 0 was
#: enough on the 2-vCPU test machine; this leaves room for slower wake-ups)
CEDE_PAUSE_S = 0.0001
#: items sorted by one C call in :func:`sorted_in_steps`: about 2 ms for paths
SORT_RUN = 8192
#: items put into a dict by one C call in :func:`dict_in_steps`
STEP_ITEMS = 8192
#: rows given to one ``executemany`` call in :func:`executemany_in_steps` (a few ms)
WRITE_STEP_ROWS = 1024


class Cede:
    """Call it once per item of a long loop: every ``every_s`` seconds of work (default
    :data:`CEDE_EVERY_S`) it sleeps ``pause_s`` (default :data:`CEDE_PAUSE_S`), releasing
    the GIL long enough for a waiting thread to take it. Costs one clock read per call
    otherwise. ``clock`` and ``sleep``: ``time.perf_counter`` and ``time.sleep`` unless
    given (tests)."""

    __slots__ = ("_clock", "_every", "_next", "_pause", "_sleep")

    def __init__(self, every_s: float | None = None, pause_s: float | None = None, *,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        every_s = CEDE_EVERY_S if every_s is None else every_s
        pause_s = CEDE_PAUSE_S if pause_s is None else pause_s
        if every_s <= 0 or pause_s < 0:
            raise ValueError(f"every_s must be > 0 and pause_s >= 0, got {every_s}, {pause_s}")
        self._every, self._pause = every_s, pause_s
        self._clock = time.perf_counter if clock is None else clock
        self._sleep = time.sleep if sleep is None else sleep
        self._next = self._clock() + every_s

    def __call__(self) -> None:
        if self._clock() >= self._next:
            self._sleep(self._pause)
            self._next = self._clock() + self._every


def ceding(items: Iterable[T], cede: Cede | None = None) -> Iterator[T]:
    """``items``, one by one, with ``cede()`` (default: a new :class:`Cede`) before each:
    for iterating an SQLite cursor (or any source that releases the GIL per item) on a
    background thread."""
    cede = Cede() if cede is None else cede
    for item in items:
        cede()
        yield item


def sorted_in_steps(items: list[str], run: int | None = None) -> list[str]:
    """``sorted(items)``, with no single C call holding the GIL for long: runs of ``run``
    items are sorted, then merged by Python code, which lets other threads in. One
    ``sorted`` of 100,000 paths holds the GIL for 25 ms, on a loader thread beside the GUI
    thread; this takes about twice as long in all, in steps of about 2 ms. ``run``: default
    :data:`SORT_RUN`."""
    run = SORT_RUN if run is None else run
    if run < 1:
        raise ValueError(f"run must be >= 1, got {run}")
    if len(items) <= run:
        return sorted(items)
    runs = [sorted(items[i:i + run]) for i in range(0, len(items), run)]
    return list(heapq.merge(*runs))


def dict_in_steps(keys: Sequence[K], values: Sequence[V],
                  step: int | None = None) -> dict[K, V]:
    """``dict(zip(keys, values))`` in steps of ``step`` items (default :data:`STEP_ITEMS`),
    each one short C call: one call over 100,000 paths held the GIL 11-18 ms (26-37 ms
    with its fresh memory faulted in) on the thread preparing a big project's gallery."""
    step = STEP_ITEMS if step is None else step
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if len(keys) != len(values):
        raise ValueError(f"{len(keys)} keys but {len(values)} values")
    out: dict[K, V] = {}
    for start in range(0, len(keys), step):
        out.update(zip(keys[start:start + step], values[start:start + step]))
    return out


def executemany_in_steps(conn: sqlite3.Connection, sql: str, rows: Sequence[Any],
                         step: int | None = None, cede: Cede | None = None) -> None:
    """``conn.executemany(sql, rows)`` in calls of ``step`` rows (default
    :data:`WRITE_STEP_ROWS`) with ``cede()`` between them: one call writes row after row,
    releasing the GIL for each, the pattern that keeps a waiting thread from ever asking for
    it (see the module's text)."""
    step = WRITE_STEP_ROWS if step is None else step
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    cede = Cede() if cede is None else cede
    for start in range(0, len(rows), step):
        if start:
            cede()
        conn.executemany(sql, rows[start:start + step])


__all__ = ["CEDE_EVERY_S", "CEDE_PAUSE_S", "SORT_RUN", "STEP_ITEMS", "WRITE_STEP_ROWS", "Cede",
           "ceding", "dict_in_steps", "executemany_in_steps", "sorted_in_steps"]
