"""Undo/redo command stack shared by the GUI and scripts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Command:
    """A reversible edit. ``merge_key`` lets consecutive edits (a drag) fold into one step."""

    description: str
    apply: Callable[[], None]
    revert: Callable[[], None]
    merge_key: object | None = None
    payload: object | None = None  # what the owner needs to fold a later edit into this one


class UndoStack:
    """Linear history of :class:`Command` objects with a bounded depth.

    The stacks are updated *before* a command runs, so listeners that the command notifies
    (menus reading :attr:`can_undo`, :attr:`redo_text`) already see the new history. When a
    command raises, the history is put back as it was and the error propagates."""

    def __init__(self, limit: int = 500) -> None:
        if limit < 1:
            raise ValueError("undo limit must be at least 1")
        self._limit = limit
        self._done: list[Command] = []
        self._undone: list[Command] = []

    def push(self, command: Command, keep_redo: bool = False) -> None:
        """Apply ``command`` and record it. ``keep_redo`` keeps the redo history (for edits
        that do not conflict with it, such as predictions for images the user has not
        touched). Folding edits into the newest step is the owner's job (see
        :meth:`top` and :meth:`replace_top`)."""
        saved = (list(self._done), list(self._undone))
        if not keep_redo:
            self._undone.clear()
        self._done.append(command)
        if len(self._done) > self._limit:
            del self._done[0]
        try:
            command.apply()
        except BaseException:
            self._done, self._undone = saved
            raise

    @property
    def top(self) -> Command | None:
        """The command the next undo reverts, or None."""
        return self._done[-1] if self._done else None

    def replace_top(self, command: Command) -> None:
        """Swap the newest command for ``command`` (already applied by the caller)."""
        if not self._done:
            raise IndexError("no command to replace")
        self._done[-1] = command

    def undo(self) -> str | None:
        """Revert the last command; returns its description, or None when nothing to undo."""
        if not self._done:
            return None
        command = self._done.pop()
        self._undone.append(command)
        try:
            command.revert()
        except BaseException:
            self._undone.pop()
            self._done.append(command)
            raise
        return command.description

    def redo(self) -> str | None:
        """Re-apply the last undone command; returns its description, or None."""
        if not self._undone:
            return None
        command = self._undone.pop()
        self._done.append(command)
        try:
            command.apply()
        except BaseException:
            self._done.pop()
            self._undone.append(command)
            raise
        return command.description

    def clear(self) -> None:
        self._done.clear()
        self._undone.clear()

    def take(self) -> list[Command]:
        """Empty the history and return its commands (done, then undone) for the caller to
        free: the steps of a big project hold thousands of annotations (a propagation's),
        and freeing them all at once is one long call."""
        steps = self._done + self._undone
        self._done, self._undone = [], []
        return steps

    def end_merge(self) -> None:
        """Stop folding further edits into the last command (end of a drag)."""
        if self._done and self._done[-1].merge_key is not None:
            self._done[-1] = replace(self._done[-1], merge_key=None)

    @property
    def can_undo(self) -> bool:
        return bool(self._done)

    @property
    def can_redo(self) -> bool:
        return bool(self._undone)

    @property
    def undo_text(self) -> str:
        return self._done[-1].description if self._done else ""

    @property
    def redo_text(self) -> str:
        return self._undone[-1].description if self._undone else ""
