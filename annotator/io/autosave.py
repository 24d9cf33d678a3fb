"""Autosave with a write-ahead journal: at most about a second of edits at risk.

Every edit is appended to ``<project file>.journal`` as one checksummed line (the new state of
each image it changed, or the whole schema, settings and annotations for a schema or settings
change) and fsynced at once, by a background thread in ``background`` mode. The project file
itself is rewritten ("folded") after a pause in editing or a maximum wait, from an immutable
snapshot, atomically, on a background thread in ``background`` mode (the GUI). The file
records which journal records it holds (``"journal": {"id": ..., "seq": ...}``);
:func:`annotator.io.journal.recover_document` (used by
:func:`annotator.io.project_file.load_project`) replays the newer ones when the project is
opened, so a crash loses only edits not yet fsynced. A torn or damaged journal line ends the
replay (the lines before it are used).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from annotator.domain.annotation import ImageAnnotation
from annotator.domain.project import Project
from annotator.io import project_file as pf
from annotator.io.journal import (  # noqa: F401 (journal_path, read_journal: public here too)
    JOURNAL_FORMAT,
    _line,
    journal_path,
    read_journal,
    read_stamp,
    recover_document,
)

log = logging.getLogger(__name__)

_EMPTY = ImageAnnotation()


@dataclasses.dataclass(frozen=True)
class _Change:
    seq: int
    annotations: Mapping[str, ImageAnnotation]
    full: tuple[Any, Any] | None = None  # (schema, settings) for a whole-project change


def _encode_change(change: _Change) -> bytes:
    if change.full is None:
        a = {p: (None if ann == _EMPTY else pf.encode_annotation(ann))
             for p, ann in change.annotations.items()}
        return _line({"seq": change.seq, "a": a})
    schema, settings = change.full
    return _line({"seq": change.seq, "schema": pf.encode_schema(schema),
                  "settings": dataclasses.asdict(settings),
                  "annotations": {p: pf.encode_annotation(a)
                                  for p, a in change.annotations.items()}})


class Autosaver:
    """Journals every edit of ``project`` and folds them into the file at ``path``.

    The file is rewritten when the project changed and no further edit arrived for
    ``delay_s`` seconds, or when changes have been waiting for ``max_wait_s``; call
    :meth:`maybe_save` from a timer (the GUI) or after edits (scripts). With
    ``background=True`` journal appends and saves run on background threads (the GUI thread
    only takes a snapshot) and :meth:`poll` reports finished saves; otherwise everything
    happens in the calling thread. ``dirty`` starts true when the project holds edits the
    file does not (recovered from the journal).
    """

    def __init__(
        self,
        project: Project,
        path: str | os.PathLike[str],
        delay_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        max_wait_s: float = 15.0,
        *,
        background: bool = False,
        dirty: bool = False,
    ) -> None:
        self.project = project
        self.path = Path(path)
        self.delay_s = delay_s
        self.max_wait_s = max(max_wait_s, delay_s)
        self.background = background
        self._clock = clock
        self._saved_revision = project.revision - (1 if dirty else 0)
        self._last_change = clock()
        self._dirty_since: float | None = self._last_change if dirty else None
        self.saves = 0
        self._lock = threading.Lock()  # journal file and records (held across fsyncs)
        self._results_lock = threading.Lock()  # never held long: poll() runs on the GUI
        self._fold_lock = threading.Lock()  # one project-file write at a time
        self._results: list[tuple[bool, str]] = []
        self._fold_thread: threading.Thread | None = None
        self._queue: queue.Queue[_Change | None] = queue.Queue()
        self._journal_thread: threading.Thread | None = None
        self._records: list[tuple[int, bytes]] = []  # journaled since the last fold
        self.journal = journal_path(self.path)
        self._open_journal()
        if background:
            self._journal_thread = threading.Thread(
                target=self._journal_loop, name="autosave-journal", daemon=True)
            self._journal_thread.start()
        self._unsubscribe: Callable[[], None] | None = project.subscribe(self._on_change)

    # ------------------------------------------------------------------ journal
    def _open_journal(self) -> None:
        stamp = read_stamp(self.path)
        header, records = None, []
        if self.journal.exists():
            try:
                header, records, _ = read_journal(self.journal)
            except OSError as exc:
                log.warning("edit journal %s cannot be read (%s)", self.journal, exc)
        if stamp is not None and header is not None and header.get("id") == stamp[0]:
            self._id, file_seq = stamp
            self._records = [(r["seq"], _line(r)) for r in records if r["seq"] > file_seq]
            self._seq = max([file_seq, *(r["seq"] for r in records)])
            self._rewrite_journal()  # drops folded records and any torn tail
            return
        if self.journal.exists():  # another file's journal: keep it aside, never delete
            with contextlib.suppress(OSError):
                os.replace(self.journal, str(self.journal) + "~")
        if stamp is not None:  # the file names a journal that is not there: start it
            self._id, self._seq = stamp
            self._records = []
            self._rewrite_journal()
            return
        self._id = uuid.uuid4().hex
        self._seq = 0
        self._rewrite_journal()
        # the file must name this journal before its records count: write it now
        try:
            self._fold(pf.snapshot(self.project), self._seq)
        except OSError as exc:
            log.warning("project %s not stamped for its journal yet (%s)", self.path, exc)

    def _header(self) -> bytes:
        return _line({"format": JOURNAL_FORMAT, "id": self._id})

    def _rewrite_journal(self) -> None:
        with self._lock:
            data = self._header() + b"".join(line for _, line in self._records)
            try:
                pf.atomic_write_bytes(self.journal, data)
            except OSError as exc:
                log.warning("edit journal %s not written (%s)", self.journal, exc)
                self._report(False, f"edit journal not written: {exc}")

    def _append(self, changes: list[_Change]) -> None:
        lines = [(c.seq, _encode_change(c)) for c in changes]
        with self._lock:
            self._records.extend(lines)
            try:
                with open(self.journal, "ab") as f:
                    f.write(b"".join(line for _, line in lines))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:  # kept in memory: the next fold writes them
                log.warning("edit journal %s not written (%s)", self.journal, exc)
                self._report(False, f"edit journal not written: {exc}")

    def _journal_loop(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            changes = [c for c in batch if c is not None]
            try:
                if changes:
                    self._append(changes)
            except Exception:  # never let the journal thread die silently
                log.exception("edit journal append failed")
            finally:
                for _ in batch:
                    self._queue.task_done()
            if None in batch:
                return

    def _on_change(self, paths: frozenset[str]) -> None:
        self._seq += 1
        if paths:
            change = _Change(self._seq, {p: self.project.annotation(p) for p in paths})
        else:
            change = _Change(self._seq, self.project.annotations(),
                             (self.project.schema, self.project.settings))
        if self.background and self._journal_thread is not None:
            self._queue.put(change)
        else:
            self._append([change])
        self.notify()

    # ------------------------------------------------------------------ saving
    @property
    def dirty(self) -> bool:
        return self.project.revision != self._saved_revision

    @property
    def saving(self) -> bool:
        """Whether a background save is running."""
        t = self._fold_thread
        return t is not None and t.is_alive()

    def notify(self) -> None:
        """Record that an edit happened now."""
        self._last_change = self._clock()
        if self._dirty_since is None:
            self._dirty_since = self._last_change

    def maybe_save(self, now: float | None = None) -> bool:
        """Save if dirty and quiet for ``delay_s`` (or waiting for ``max_wait_s``); returns
        whether it saved (started a save, in background mode)."""
        now = self._clock() if now is None else now
        if not self.dirty or self.saving:
            return False
        waiting = now - (self._dirty_since if self._dirty_since is not None else now)
        if now - self._last_change >= self.delay_s or waiting >= self.max_wait_s:
            if self.background:
                self.save_async()
            else:
                self.flush()
            return True
        return False

    def _fold(self, snap: pf.ProjectSnapshot, seq: int, cooperative: bool = False) -> None:
        """Write the project file holding journal records up to ``seq``, then drop them."""
        with self._fold_lock:
            stamp = {"id": self._id, "seq": seq}
            if cooperative:
                pf.save_project(snap, self.path, journal=stamp, cooperative=True)
            else:
                pf.save_project(snap, self.path, journal=stamp)
            with self._lock:
                self._records = [(s, line) for s, line in self._records if s > seq]
            self._rewrite_journal()

    def save_async(self) -> bool:
        """Snapshot now and write the file on a background thread; False when a save is
        already running (the next tick saves what it missed)."""
        if self.saving:
            return False
        snap, seq = pf.snapshot(self.project), self._seq
        self._dirty_since = None

        def run() -> None:
            try:
                self._fold(snap, seq, cooperative=True)
            except Exception as exc:  # reported through poll(); the journal keeps the edits
                log.warning("saving %s failed: %s", self.path, exc)
                self._report(False, f"Cannot save {self.path}: {exc}")
                return
            self._saved_revision = snap.revision
            self.saves += 1
            self._report(True, f"Saved {self.path}")

        self._fold_thread = threading.Thread(target=run, name="autosave-save", daemon=True)
        self._fold_thread.start()
        return True

    def _report(self, ok: bool, message: str) -> None:
        with self._results_lock:
            self._results.append((ok, message))

    def poll(self) -> list[tuple[bool, str]]:
        """(ok, message) for each background save or journal problem since the last poll."""
        with self._results_lock:
            out, self._results = self._results, []
        return out

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the background save and the journal queue."""
        t = self._fold_thread
        if t is not None:
            t.join(timeout)
        if self._journal_thread is not None and self._journal_thread.is_alive():
            self._queue.join()

    def flush(self) -> None:
        """Save now (in this thread) if anything changed; raises OSError when it fails."""
        self.wait()
        if self.dirty:
            revision, seq = self.project.revision, self._seq
            self._fold(pf.snapshot(self.project), seq)
            self._saved_revision = revision
            self._dirty_since = None
            self.saves += 1

    def close(self) -> None:
        """Flush, stop listening to the project and remove the (folded) journal."""
        try:
            self.flush()
        finally:  # stop the journal thread even when the save fails (the journal stays)
            self.detach()
        with self._lock:
            if not self._records:
                with contextlib.suppress(OSError):
                    self.journal.unlink()

    def detach(self) -> None:
        """Stop listening to the project without saving (journaled edits are kept)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._journal_thread is not None:
            self._queue.put(None)
            self._journal_thread.join()
            self._journal_thread = None
        t = self._fold_thread
        if t is not None:
            t.join()
