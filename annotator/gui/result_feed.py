"""Streaming results from the worker thread to the GUI thread in bounded slices.

:class:`ResultInbox` coalesces the worker's results: the worker appends, and wakes the GUI
thread only when the inbox was empty, so a burst of results costs one queued event, not two
per result. :class:`BoundedFeed` keeps what the GUI thread took and applies it in chunks
until a time budget is spent, so a tick never does unbounded work; the rest waits for the
next tick, in arrival order. Both are plain Python (tested without Qt).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ResultInbox(Generic[T]):
    """A thread-safe list one thread fills and another empties, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[T] = []

    def put(self, item: T) -> bool:
        """Append ``item``; True when the inbox was empty (the reader must be woken:
        otherwise a wake for the items before it is still on its way)."""
        with self._lock:
            self._items.append(item)
            return len(self._items) == 1

    def take(self) -> list[T]:
        """Everything put so far, oldest first; the inbox is empty afterwards."""
        with self._lock:
            items, self._items = self._items, []
        return items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class BoundedFeed(Generic[T]):
    """Items applied by ``apply(chunk)`` in arrival order, ``chunk`` at a time, until
    ``budget_s`` of the caller's time is spent (:meth:`drain`) or all of them (:meth:`flush`)."""

    def __init__(self, apply: Callable[[list[T]], Any], chunk: int = 8,
                 budget_s: float = 0.010,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._apply, self.chunk, self.budget_s, self._clock = apply, chunk, budget_s, clock
        self._items: deque[T] = deque()

    def extend(self, items: list[T]) -> None:
        self._items.extend(items)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

    def drain(self) -> int:
        """Apply chunks until the budget is spent (at least one chunk); returns how many
        items were applied. What is left stays, in order, for the next call."""
        deadline = self._clock() + self.budget_s
        applied = 0
        while self._items:
            applied += self._apply_chunk()
            if self._clock() >= deadline:
                break
        return applied

    def flush(self) -> int:
        """Apply everything (closing, before an export); returns how many."""
        applied = 0
        while self._items:
            applied += self._apply_chunk()
        return applied

    def _apply_chunk(self) -> int:
        n = min(self.chunk, len(self._items))
        batch = [self._items.popleft() for _ in range(n)]
        self._apply(batch)
        return n
