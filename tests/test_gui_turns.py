"""Issue 22: work split over turns of the event loop (a close's last steps), so that no
single turn of the GUI thread is long."""

from __future__ import annotations

import logging

import pytest
from PySide6.QtCore import QTimer

from annotator.gui.turns import TurnSteps
from tests.test_gui_support import qt_isolated  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("qt_isolated")


def _steps(seen: list[str], names: str) -> list:
    def step(name: str):  # noqa: ANN202
        def run() -> None:
            seen.append(name)
            # something the event loop has to do meanwhile (a paint, a key press)
            QTimer.singleShot(0, lambda: seen.append(f"loop after {name}"))
        return run
    return [step(n) for n in names]


def test_steps_run_one_per_turn_in_order_with_the_event_loop_between_them(qtbot):
    seen: list[str] = []
    steps = TurnSteps()
    steps.start(_steps(seen, "abc"), then=lambda: seen.append("then"))
    assert seen == [] and steps.pending == 3  # nothing runs in the call itself
    qtbot.waitUntil(lambda: "then" in seen and len(seen) == 7)
    assert [s for s in seen if not s.startswith("loop")] == ["a", "b", "c", "then"]
    # what a step gave the event loop ran before the next step: one step per turn
    assert seen.index("loop after a") < seen.index("b")
    assert seen.index("loop after b") < seen.index("c")
    assert steps.pending == 0


def test_dropped_steps_never_run_but_then_does_once(qtbot):
    seen: list[str] = []
    steps = TurnSteps()
    steps.start(_steps(seen, "ab"), then=lambda: seen.append("then"))
    steps.drop()
    assert seen == ["then"] and steps.pending == 0
    steps.drop()  # nothing left: nothing more happens
    qtbot.wait(50)
    assert seen == ["then"]


def test_finish_runs_what_is_left_at_once_and_a_new_start_finishes_the_old_steps(qtbot):
    seen: list[str] = []
    steps = TurnSteps()
    steps.start(_steps(seen, "ab"), then=lambda: seen.append("then 1"))
    steps.start(_steps(seen, "c"), then=lambda: seen.append("then 2"))
    assert seen == ["a", "b", "then 1"] and steps.pending == 1
    steps.finish()
    assert seen == ["a", "b", "then 1", "c", "then 2"]
    qtbot.wait(50)
    assert [s for s in seen if not s.startswith("loop")] == ["a", "b", "then 1", "c", "then 2"]


def test_a_failing_step_is_logged_and_the_rest_still_run(qtbot, caplog):
    seen: list[str] = []

    def fails() -> None:
        raise RuntimeError("broken step")

    steps = TurnSteps()
    with caplog.at_level(logging.ERROR, logger="annotator.gui.turns"):
        steps.start([fails, *_steps(seen, "b")], then=lambda: seen.append("then"))
        qtbot.waitUntil(lambda: "then" in seen)
    assert [s for s in seen if not s.startswith("loop")] == ["b", "then"]
    assert "broken step" in caplog.text


def test_no_steps_runs_then_at_once():
    seen: list[str] = []
    TurnSteps().start([], then=lambda: seen.append("then"))
    assert seen == ["then"]
