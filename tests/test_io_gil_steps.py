"""Long background work in GIL-friendly steps: the pause of :class:`Cede` comes exactly when its
time is up, the stepped versions give what the one-call versions give, and the store's big
reads and writes cede as they go (the GUI thread waited 30-120 ms for the GIL without)."""

import sqlite3
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from annotator.domain import ImageRecord, ImageStatus, Keypoint, KeypointSchema, Project
from annotator.domain.annotation import ImageAnnotation, Instance
from annotator.io import gil_steps
from annotator.io.gil_steps import (
    Cede,
    ceding,
    dict_in_steps,
    executemany_in_steps,
    sorted_in_steps,
)
from annotator.io.project_file import load_project, project_to_dict, read_preview, save_project
from annotator.io.store import ProjectStore


class Clock:
    """A clock that moves only when told; records the sleeps asked of it."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append((self.now, seconds))


def test_cede_pauses_only_once_its_time_is_up():
    clock = Clock()
    cede = Cede(0.005, 0.0001, clock=clock, sleep=clock.sleep)
    for t in (0.001, 0.004, 0.0049):
        clock.now = t
        cede()
    assert clock.sleeps == []  # under 5 ms of work: no pause
    clock.now = 0.005
    cede()
    assert clock.sleeps == [(0.005, 0.0001)]
    clock.now = 0.009  # the next pause is 5 ms after the last one, not after the start
    cede()
    assert len(clock.sleeps) == 1
    clock.now = 0.0101
    cede()
    assert clock.sleeps[-1] == (0.0101, 0.0001)


def test_cede_refuses_a_period_of_zero():
    with pytest.raises(ValueError, match="every_s"):
        Cede(0)
    with pytest.raises(ValueError, match="pause_s"):
        Cede(0.005, -1)


def test_ceding_gives_every_item_in_order_and_cedes_before_each():
    calls = []
    assert list(ceding(iter("abc"), lambda: calls.append(1))) == ["a", "b", "c"]
    assert len(calls) == 3


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=6)), st.integers(min_value=1, max_value=5))
def test_sorted_in_steps_is_sorted(items, run):
    # runs of a few items merged in Python: the same list as one sort, duplicates included
    assert sorted_in_steps(items, run) == sorted(items)


def test_sorted_in_steps_rejects_an_empty_run():
    with pytest.raises(ValueError, match="run"):
        sorted_in_steps(["b", "a"], 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=3), st.integers())), st.integers(1, 5))
def test_dict_in_steps_is_the_dict_of_the_pairs(pairs, step):
    keys, values = [k for k, _ in pairs], [v for _, v in pairs]
    got = dict_in_steps(keys, values, step)
    assert got == dict(zip(keys, values))  # a repeated key: the last value, as dict() does
    assert list(got) == list(dict(zip(keys, values)))  # and the same order


def test_dict_in_steps_refuses_unequal_lengths_and_an_empty_step():
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        dict_in_steps(["a", "b"], [1])
    with pytest.raises(ValueError, match="step"):
        dict_in_steps(["a"], [1], 0)


def test_executemany_in_steps_writes_every_row_and_cedes_between_steps():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (i INTEGER, s TEXT)")
    rows = [(i, f"row {i}") for i in range(10)]
    cedes = []
    executemany_in_steps(conn, "INSERT INTO t VALUES (?, ?)", rows, step=3,
                         cede=lambda: cedes.append(1))
    assert conn.execute("SELECT i, s FROM t ORDER BY rowid").fetchall() == rows
    assert len(cedes) == 3  # four calls (3 + 3 + 3 + 1 rows), a pause between each two
    with pytest.raises(ValueError, match="step"):
        executemany_in_steps(conn, "INSERT INTO t VALUES (?, ?)", rows, step=0)


def big_project(root, n: int) -> Project:
    schema = KeypointSchema("dot", ("a", "b"))
    images = [ImageRecord(f"f{i:03d}.png", 8, 8) for i in range(n)]
    anns = {f"f{i:03d}.png": ImageAnnotation(
        (Instance((Keypoint(i, 1), Keypoint(2, i))), Instance((Keypoint(3, 4), Keypoint()))),
        ImageStatus.REVIEWED) for i in range(0, n, 2)}
    return Project(str(root), images, schema, anns)


@pytest.fixture
def counted(monkeypatch):
    """Every Cede made by the store pauses at every call (its clock always says the time is
    up); the pauses are counted."""
    clock = Clock()
    ticking = types.SimpleNamespace(perf_counter=lambda: _tick(clock), sleep=clock.sleep)
    monkeypatch.setattr(gil_steps, "time", ticking)
    monkeypatch.setattr(gil_steps, "CEDE_EVERY_S", 0.5)
    return clock


def _tick(clock: Clock) -> float:
    clock.now += 1.0  # one second per clock read: every Cede call finds its time up
    return clock.now


def test_the_store_cedes_while_it_reads_and_writes_big_tables(tmp_path, counted, monkeypatch):
    monkeypatch.setattr(gil_steps, "WRITE_STEP_ROWS", 4)
    project = big_project(tmp_path, 40)  # 40 images, 20 annotations, 40 instances
    path = tmp_path / "p.kpproj"
    save_project(project, path)
    wrote = len(counted.sleeps)
    assert wrote >= 40 // 4 - 1 + 40 // 4 - 1  # images and instances, written in steps
    before = len(counted.sleeps)
    assert project_to_dict(load_project(path)) == project_to_dict(project)  # all of it
    assert len(counted.sleeps) - before >= 40 + 40  # images; instance rows (with their images)

    store = ProjectStore(path, readonly=True)
    try:
        before = len(counted.sleeps)
        store.document()
        assert len(counted.sleeps) - before >= 40 + 40  # images; instance rows (with their images)
        before = len(counted.sleeps)
        assert len(store.gallery_rows()) == 40
        assert len(counted.sleeps) - before >= 40
    finally:
        store.close()
    before = len(counted.sleeps)
    assert len(read_preview(path).project) == 40
    assert len(counted.sleeps) - before >= 40
