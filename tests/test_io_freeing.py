"""take_apart: big containers freed entry by entry, without touching what others hold."""

from __future__ import annotations

import weakref

from annotator.io.freeing import BIG, take_apart


class Thing:
    def __init__(self, payload: object = None) -> None:
        self.payload = payload


def test_the_roots_are_emptied_and_their_entries_freed() -> None:
    items = [Thing() for _ in range(BIG * 2)]
    refs = [weakref.ref(t) for t in items]
    table = {i: Thing() for i in range(BIG * 2)}
    table_refs = [weakref.ref(t) for t in table.values()]
    take_apart(items, table, None, "not a container")
    assert items == [] and table == {}
    assert all(r() is None for r in refs + table_refs)


def test_nested_big_containers_held_nowhere_else_are_emptied_too() -> None:
    inner = [Thing() for _ in range(BIG + 1)]
    holder = Thing({"rows": inner})
    refs = [weakref.ref(t) for t in inner]
    del inner
    outer = [holder]
    del holder
    take_apart(outer)
    assert outer == [] and all(r() is None for r in refs)


def test_a_container_someone_else_holds_is_left_whole() -> None:
    shared = [Thing() for _ in range(BIG + 1)]
    outer = [{"shared": shared}]
    take_apart(outer)
    assert outer == [] and len(shared) == BIG + 1  # only our reference to it went


def test_pause_is_called_once_per_entry() -> None:
    seen: list[int] = []

    def pause(freed: int) -> int:
        seen.append(freed)
        return freed + 1

    take_apart(list(range(10)), {"a": 1, "b": 2}, pause=pause)
    assert seen == list(range(12))


def test_a_small_container_of_big_ones_is_taken_apart_too() -> None:
    """The gallery drops its old state as a list of a few 10^5-entry tables: freed in one
    call, that held the GIL 100-120 ms; each table is emptied entry by entry instead."""
    rows = [Thing() for _ in range(BIG * 2)]
    index = {i: Thing() for i in range(BIG * 2)}
    refs = [weakref.ref(t) for t in rows + list(index.values())]
    state = [rows, index, None, {"small": 1}]
    del rows, index
    entries: list[int] = []

    def pause(freed: int) -> int:
        entries.append(freed)
        return freed + 1

    holder = [state]
    del state
    take_apart(holder, pause=pause)
    assert holder == [] and all(r() is None for r in refs)
    # one call per entry: the state, its 4 entries, and every row and index entry
    assert len(entries) == 1 + 4 + 4 * BIG


def test_a_small_container_someone_else_holds_is_left_whole() -> None:
    rows = [Thing() for _ in range(BIG * 2)]
    state = [rows]
    take_apart([state])
    assert state == [rows] and len(rows) == BIG * 2
