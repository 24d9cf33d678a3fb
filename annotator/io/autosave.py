"""Autosave into the SQLite project store: every edit is its own small transaction.

The :class:`Autosaver` listens to the project; each change (the new annotations of the images
it touched; for a schema, settings or image-list change, what of those changed) is written
to the store by a background writer thread in ``background`` mode (the GUI thread only
captures the changed annotations, which are immutable values) or at once in the calling
thread otherwise. Changes that queue up while a transaction commits are written together in
the next one. Commits are ``synchronous=FULL`` in WAL mode: a crash (even a power cut) loses
at most the changes not yet committed, typically milliseconds of edits; the file opens as
the result of a prefix of the edits, never a torn state. There is no whole-file rewrite.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from annotator.domain.annotation import ImageAnnotation
from annotator.domain.project import ImageRecord, Project, ProjectSettings
from annotator.domain.schema import KeypointSchema
from annotator.io.store import ProjectStore, StoreError, backup_path, copy_store, is_store

log = logging.getLogger(__name__)

#: how often :meth:`Autosaver.maybe_save` looks for image records changed without an edit
#: (sizes learnt when images are first read)
IMAGE_CHECK_S = 5.0


@dataclasses.dataclass(frozen=True)
class _Change:
    revision: int
    annotations: Mapping[str, ImageAnnotation]
    schema: KeypointSchema | None = None
    settings: ProjectSettings | None = None
    images: tuple[ImageRecord, ...] | None = None
    all_annotations: Mapping[str, ImageAnnotation] | None = None  # with a new schema


_SAVED = object()  # queue marker: report "Saved" once everything before it is written
_STOP = object()


class Autosaver:
    """Writes every edit of ``project`` to the store at ``path`` as a transaction.

    ``path`` must be a store (``.kpproj``) holding the project as it is now (just loaded or
    saved); with ``dirty`` the whole project is written first (it holds edits the file does
    not). ``background``: a writer thread commits (batched), :meth:`poll` reports problems
    and the end of a :meth:`save_async`; otherwise each edit commits before the edit call
    returns. ``backup``: keep a copy of the store as it was when opened at ``path~``
    (a thread of its own copies it from a read transaction begun here, before anything is
    written: no write, flush or export waits for the copy; :meth:`detach` does, when it
    has not finished). ``stored_images``: the image list the store holds when the project
    has more (images added before the autosaver was made); they are written
    first. ``delay_s``, ``clock`` and ``max_wait_s`` are kept for callers of the earlier
    journal-and-rewrite autosaver; writes no longer wait for a pause.
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
        backup: bool = False,
        stored_images: Sequence[ImageRecord] | None = None,
    ) -> None:
        self.project = project
        self.path = Path(path)
        self.delay_s = delay_s
        self.max_wait_s = max_wait_s
        self.background = background
        self._clock = clock
        if not is_store(self.path):
            raise StoreError(f"{self.path}: not a project store; save the project there first")
        self._store = ProjectStore(self.path)
        dirs = self._store.meta("exported_dirs", [])
        self._export_dirs = [d for d in dirs if isinstance(d, str)] \
            if isinstance(dirs, list) else []
        self._db_lock = threading.Lock()  # the connection: writer thread or flush()
        self._results_lock = threading.Lock()
        self._results: list[tuple[bool, str]] = []
        self._pending: list[_Change] = []  # written by the next transaction (retried on error)
        self._written_revision = project.revision - (1 if dirty else 0)
        self._schema, self._settings = project.schema, project.settings  # as in the store
        # the image list the store holds: images added before (found in the folder while
        # the project was loaded off the GUI thread) are written first
        self._images = project.images if stored_images is None else tuple(stored_images)
        # the project's image list version last compared with the store's (None: compare)
        self._images_checked: int | None = (project.images_version if stored_images is None
                                            else None)
        self._seen_schema = project.schema  # last schema captured on the editing thread
        self._last_image_check = clock()
        self.saves = 0
        self._failed = False
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.RLock()  # _pending and the transaction writing it
        self.backup_thread: threading.Thread | None = None
        self.close_thread: threading.Thread | None = None
        if backup:
            self._start_backup()
        if dirty:
            self._queue.put(self._full_change(project.revision, everything=True))
        if background:
            self._thread = threading.Thread(target=self._loop, name="autosave-writer",
                                            daemon=True)
            self._thread.start()
        else:
            self._drain_now()
        self._unsubscribe: Callable[[], None] | None = project.subscribe(self._on_change)
        if stored_images is not None:
            self.check_images()

    # --------------------------------------------------------------- changes
    def _full_change(self, revision: int, everything: bool = False) -> _Change:
        p = self.project
        new_schema = everything or p.schema is not self._seen_schema
        self._seen_schema = p.schema
        return _Change(revision, {}, p.schema, p.settings, p.images,
                       p.annotations() if new_schema else None)

    def _on_change(self, paths: frozenset[str]) -> None:
        p = self.project
        if paths:
            change = _Change(p.revision, {path: p.annotation(path) for path in paths})
        else:
            change = self._full_change(p.revision)
        self._queue.put(change)
        if self._thread is None:
            self._drain_now()

    # --------------------------------------------------------------- writing
    def _write(self, changes: list[_Change]) -> None:
        """One transaction holding ``changes`` (in order; consecutive annotation edits
        coalesced by image); the remembered store state moves only once it committed."""
        store = self._store
        schema, settings, images = self._schema, self._settings, self._images
        batch: dict[str, ImageAnnotation] = {}
        with self._db_lock, store.transaction():
            for c in changes:
                if c.images is None:
                    batch.update(c.annotations)
                    continue
                if batch:
                    store.write_annotations(batch)
                    batch = {}
                if c.all_annotations is not None or (c.schema is not None
                                                     and c.schema != schema):
                    store.write_schema(c.schema or schema)
                    store.replace_all_annotations(
                        c.all_annotations if c.all_annotations is not None
                        else self.project.annotations())
                    schema = c.schema or schema
                if c.settings is not None and c.settings != settings:
                    store.write_settings(c.settings)
                    settings = c.settings
                self._write_images(images, c.images)
                images = c.images
            if batch:
                store.write_annotations(batch)
        self._schema, self._settings, self._images = schema, settings, images
        self._written_revision = max(self._written_revision, changes[-1].revision)
        self.saves += 1

    def _write_images(self, old: tuple[ImageRecord, ...], new: tuple[ImageRecord, ...]) -> None:
        n = 0
        limit = min(len(old), len(new))
        while n < limit and (old[n] is new[n] or old[n].path == new[n].path):
            n += 1
        if n < len(old) or len(new) > len(old):
            self._store.write_images(new[n:], n)  # appended (rescan), or the order changed
        self._store.update_images((i, new[i]) for i in range(n)
                                  if new[i] is not old[i] and new[i] != old[i])

    def _try_write(self) -> bool:
        with self._write_lock:
            if not self._pending:
                return True
            try:
                self._write(self._pending)
            except (sqlite3.Error, OSError, StoreError) as exc:
                log.warning("saving %s failed: %s", self.path, exc)
                if not self._failed:
                    self._report(False, f"Cannot save {self.path}: {exc}")
                self._failed = True
                return False
            self._pending = []
            if self._failed:
                self._report(True, f"Saved {self.path}")
            self._failed = False
            return True

    def _start_backup(self) -> None:
        """Pin the store as it is now (a read transaction on a connection of its own) and
        copy it to ``path~`` on a thread (0.5-2 s at 100,000 x 3)."""
        try:
            source = ProjectStore(self.path)
            pinned = source.read_snapshot()
            pinned.__enter__()
        except (sqlite3.Error, OSError, StoreError) as exc:
            log.warning("backup of %s not written: %s", self.path, exc)
            return

        def copy() -> None:
            try:
                copy_store(source, backup_path(self.path))
            except (sqlite3.Error, OSError) as exc:
                log.warning("backup of %s not written: %s", self.path, exc)
            finally:
                pinned.__exit__(None, None, None)
                source.close()

        self.backup_thread = threading.Thread(target=copy, name="autosave-backup",
                                              daemon=True)
        self.backup_thread.start()

    def _record_export(self, rel: str) -> None:
        try:
            with self._db_lock, self._store.transaction():
                dirs = self._store.meta("exported_dirs", [])
                dirs = dirs if isinstance(dirs, list) else []
                if rel not in dirs:
                    self._store.write_meta({"exported_dirs": [*dirs, rel]})
        except (sqlite3.Error, OSError, StoreError) as exc:
            log.warning("export folder not recorded in %s: %s", self.path, exc)

    def _take(self, items: list[Any]) -> tuple[bool, bool]:
        """Sort queue items into pending changes; (saved marker seen, stop seen)."""
        saved = stop = False
        for item in items:
            if isinstance(item, _Change):
                with self._write_lock:
                    self._pending.append(item)
            elif item is _SAVED:
                saved = True
            elif item is _STOP:
                stop = True
            elif isinstance(item, tuple) and item[0] == "export_dir":
                self._try_write()  # in order: the edits queued before it first
                self._record_export(item[1])
            elif isinstance(item, tuple) and item[0] == "call":
                self._call(item[1], item[2])
        return saved, stop

    def _call(self, fn: Callable[[], Any], future: Future[Any]) -> None:
        """Run ``fn`` once every change queued before it is committed (see
        :meth:`after_writes`)."""
        if not future.set_running_or_notify_cancel():
            return
        if not self._try_write():
            future.set_exception(OSError(
                f"Cannot save {self.path}: the project store cannot be written"))
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 (handed to the caller)
            future.set_exception(exc)

    def _drain(self) -> list[Any]:
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _drain_now(self) -> None:
        items = self._drain()
        try:
            saved, _ = self._take(items)
            ok = self._try_write()
            if saved and ok:
                self._report(True, f"Saved {self.path}")
        finally:
            for _ in items:
                self._queue.task_done()

    def _loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=1.0 if self._pending else None)
            except queue.Empty:  # retry a failed write
                self._try_write()
                continue
            items = [first, *self._drain()]
            try:
                saved, stop = self._take(items)
                ok = self._try_write()
                if saved and ok:
                    self._report(True, f"Saved {self.path}")
                elif saved:
                    self._report(False, f"Cannot save {self.path}: the last write failed")
            except Exception:  # never let the writer die silently
                log.exception("autosave writer failed")
            finally:
                for _ in items:
                    self._queue.task_done()
            if stop:
                return

    # --------------------------------------------------------------- public
    @property
    def dirty(self) -> bool:
        """Whether the project holds edits the store does not yet."""
        return self.project.revision != self._written_revision

    @property
    def saving(self) -> bool:
        """Whether changes are waiting for the writer."""
        return self._queue.unfinished_tasks > 0 or bool(self._pending)

    def notify(self) -> None:
        """Retry a failed write soon (kept for callers of the earlier autosaver)."""
        if self._thread is None:
            self._drain_now()

    def check_images(self) -> None:
        """Queue the image records changed without an edit (sizes learnt on reading)."""
        self._last_image_check = self._clock()
        version = self.project.images_version
        if version == self._images_checked:  # unchanged since compared: no copy of the list
            return
        self._images_checked = version
        images = self.project.images
        if images != self._images:
            self._queue.put(_Change(self._written_revision, {}, None, None, images, None))
            if self._thread is None:
                self._drain_now()

    def maybe_save(self, now: float | None = None) -> bool:
        """Every :data:`IMAGE_CHECK_S`, write image records learnt since; retry a failed
        write. Returns whether it queued anything."""
        now = self._clock() if now is None else now
        if now - self._last_image_check < IMAGE_CHECK_S:
            return False
        before = self._queue.unfinished_tasks
        self.check_images()
        return self._queue.unfinished_tasks > before

    def save_async(self) -> bool:
        """Ctrl+S: True when edits are still being written (:meth:`poll` then reports
        "Saved" once they are); False when the store already holds everything."""
        self.check_images()
        if not self.dirty and not self.saving:
            return False
        self._queue.put(_SAVED)
        if self._thread is None:
            self._drain_now()
        return True

    @property
    def failing(self) -> bool:
        """Whether the last write failed (the store lacks edits until a retry succeeds)."""
        return self._failed

    def after_writes(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the writer as soon as every change made so far is committed, and
        before any later change is written: for as long as ``fn`` runs, the store holds
        exactly the project as it is now (another process can pin that state with a read
        transaction). The future holds what ``fn`` returns or raises, or an OSError when
        the changes could not be written or the autosaver is closed."""
        future: Future[Any] = Future()
        if self._unsubscribe is None:
            future.set_exception(OSError(f"{self.path}: the project store is closed"))
            return future
        self.check_images()
        self._queue.put(("call", fn, future))
        if self._thread is None:
            self._drain_now()
        return future

    def _report(self, ok: bool, message: str) -> None:
        with self._results_lock:
            self._results.append((ok, message))

    def poll(self) -> list[tuple[bool, str]]:
        """(ok, message) for each failed write, recovery or finished Ctrl+S since the last
        poll."""
        with self._results_lock:
            out, self._results = self._results, []
        return out

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the writer has taken everything queued so far."""
        if self._thread is None or not self._thread.is_alive():
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return
            time.sleep(0.002)

    def flush(self) -> None:
        """Write everything now (image records included); raises OSError when it fails."""
        self.check_images()
        self.wait()
        if self._thread is None or not self._thread.is_alive():
            self._drain_now()
        if not self._try_write():
            raise OSError(f"Cannot save {self.path}: the project store cannot be written")

    def close(self, wait_backup: bool = True) -> None:
        """Write everything, stop listening and close the store (see :meth:`detach`)."""
        try:
            self.flush()
        finally:
            self.detach(wait_backup)

    def detach(self, wait_backup: bool = True) -> None:
        """Stop listening to the project; what was queued is still written (a failed write
        is abandoned: the store keeps its last committed state). Closes the store. With
        ``wait_backup``, a backup still being copied (a project closed right after it was
        opened) is waited for; otherwise it finishes on its own thread (its copy is written
        whole or not at all), and so does the store's close (:meth:`threads_left`)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        else:
            self._drain_now()
        if wait_backup:
            self._close_store()
            if self.backup_thread is not None:  # closed right after opening
                self.backup_thread.join()
        else:  # closing the last connection checkpoints the write-ahead log into the file
            # (50-100 ms of I/O after a long session at 100,000 images): off the caller's
            # thread; every edit is already committed, so nothing waits for it
            self.close_thread = threading.Thread(target=self._close_store,
                                                 name="autosave-close")
            self.close_thread.start()

    def _close_store(self) -> None:
        with self._db_lock:
            self._store.close()

    def threads_left(self) -> list[threading.Thread]:
        """The backup copy and the store's close, while they still run (after
        ``detach(wait_backup=False)``; whoever quits the process waits for them)."""
        return [t for t in (self.backup_thread, self.close_thread)
                if t is not None and t.is_alive()]

    # --------------------------------------------------------------- extras
    def exported_dirs(self) -> list[str]:
        """Folders (relative to the image root, POSIX) the application exported to."""
        return list(self._export_dirs)

    def record_export_dir(self, rel: str) -> None:
        """Remember (in the store) that the application exported into ``rel`` (under the
        image root)."""
        if rel not in self._export_dirs:
            self._export_dirs.append(rel)
        self._queue.put(("export_dir", rel))
        if self._thread is None:
            self._drain_now()
