"""The SQLite project store: one ``.kpproj`` file, edits written as small transactions.

Tables (generic, so new optional fields of the domain's records need no schema change):

- ``meta(key, value)``: format, version, image root (relative to the file's folder), the
  keypoint schema (one JSON row) and the folders the application exported to;
- ``settings(key, value)``: one row per :class:`ProjectSettings` field, the value as JSON
  (unknown keys, from a newer version, are ignored when reading);
- ``images(pos, path, data)``: one row per image in project order, ``data`` the record's
  other fields as a JSON object (``width``, ``height``, and whatever fields a newer
  :class:`ImageRecord` has);
- ``annotations(path, status, worst)``: one row per image with a non-empty annotation
  (``worst``: its lowest prediction confidence, what the gallery sorts by);
- ``instances(path, idx, keypoints, bbox, box_score, ann_id)``: one row per instance, the
  keypoints as a compact JSON list of ``[x, y, v, origin(, confidence)]``.

WAL journal mode: a writer's transaction is all or nothing across a crash (SIGKILL, power
loss with ``synchronous=FULL``), and readers never block it. Reading builds the same
document as a JSON project file and validates it with the same code
(:func:`annotator.io.project_file.project_from_dict`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from annotator.domain.annotation import ImageAnnotation
from annotator.domain.project import EMPTY_ANNOTATION, ImageRecord, Project, ProjectSettings
from annotator.domain.schema import KeypointSchema
from annotator.io.gil_steps import Cede, ceding, executemany_in_steps

log = logging.getLogger(__name__)

STORE_FORMAT = "keypoint-annotator-store"
STORE_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    pos INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, data TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS annotations (
    path TEXT PRIMARY KEY, status TEXT NOT NULL, worst REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS instances (
    path TEXT NOT NULL, idx INTEGER NOT NULL, keypoints TEXT NOT NULL, bbox TEXT,
    box_score REAL, ann_id INTEGER, PRIMARY KEY (path, idx)) WITHOUT ROWID;
"""


class StoreError(ValueError):
    """A project store cannot be read or is not one; the message names the file."""


class _OpenStores:
    """The files this process has open as stores (by device and inode), so that
    :func:`is_store` never opens and closes one of them: closing any descriptor of a file
    drops every POSIX lock the process holds on it, those of its SQLite connections
    included, and another process (an export's child, a second window) closing its own
    connection would then take the file for unused and delete its write-ahead log under
    them ("disk I/O error" next). SQLite's own opens avoid this; a plain ``open`` cannot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: dict[tuple[int, int], int] = {}

    @staticmethod
    def key(path: str | os.PathLike[str]) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        return st.st_dev, st.st_ino

    def add(self, key: tuple[int, int] | None) -> None:
        if key is not None:
            with self._lock:
                self._count[key] = self._count.get(key, 0) + 1

    def remove(self, key: tuple[int, int] | None) -> None:
        if key is not None:
            with self._lock:
                left = self._count.get(key, 0) - 1
                if left > 0:
                    self._count[key] = left
                else:
                    self._count.pop(key, None)

    def __contains__(self, key: tuple[int, int] | None) -> bool:
        with self._lock:
            return key in self._count


_OPEN = _OpenStores()


def is_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an SQLite file (by its header, whatever its name). Only a regular
    file is opened: a FIFO would block the open, a device never end. A file this process
    has open as a store is not opened again (see :class:`_OpenStores`)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return False
        if (st.st_dev, st.st_ino) in _OPEN:
            return True
        with open(path, "rb") as f:
            return f.read(16) == SQLITE_MAGIC
    except (OSError, ValueError):
        return False


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _dump_text(obj: Any) -> str:
    """JSON text that SQLite can store: undecodable names (surrogates) as \\u escapes."""
    text = _dump(obj)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text


def _sql_str(path: str) -> str | bytes:
    """A path as an SQLite key: TEXT, or a BLOB of its bytes for a name with undecodable
    bytes (surrogate escapes), which SQLite's UTF-8 text cannot hold."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape")


def _from_sql_str(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def record_data(rec: ImageRecord) -> dict[str, Any]:
    """Every field of an image record but its path, None values left out (generic: fields a
    newer :class:`ImageRecord` adds are stored without a schema change)."""
    return {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)
            if f.name != "path" and getattr(rec, f.name) is not None}


def settings_rows(settings: ProjectSettings) -> list[tuple[str, str]]:
    """(field, JSON value) for every settings field."""
    return [(f.name, _dump(getattr(settings, f.name))) for f in dataclasses.fields(settings)]


def _keypoint_row(kp: Any) -> list[Any]:
    out: list[Any] = [round(kp.x, 3), round(kp.y, 3), int(kp.v), kp.origin.value]
    if kp.confidence is not None:
        out.append(round(kp.confidence, 5))
    return out


def _instance_rows(path: str, ann: ImageAnnotation) -> list[tuple[Any, ...]]:
    key = _sql_str(path)
    return [(key, i, _dump([_keypoint_row(kp) for kp in inst.keypoints]),
             _dump(list(inst.bbox)) if inst.bbox else None, inst.box_score, inst.ann_id)
            for i, inst in enumerate(ann.instances)]


def encode_schema(s: KeypointSchema) -> dict[str, Any]:
    """The JSON form of a schema (the same as in a JSON project file)."""
    return {"name": s.name, "supercategory": s.supercategory, "keypoints": list(s.keypoints),
            "skeleton": [list(e) for e in s.skeleton],
            "flip_pairs": [list(p) for p in s.flip_pairs], "colors": list(s.colors)}


class ProjectStore:
    """An open ``.kpproj`` file. Not thread-safe: one thread uses it at a time (the
    autosaver's writer thread, or the caller)."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False,
                 synchronous: str = "FULL", readonly: bool = False) -> None:
        self.path = Path(path)
        if not create:
            if not self.path.exists():
                raise StoreError(f"{self.path}: file not found")
            if not is_store(self.path):
                raise StoreError(f"{self.path}: not a project store (not an SQLite file)")
        target, uri = str(self.path), False
        if readonly:  # a read-only folder: no -shm can be made; immutable when no WAL is left
            left = os.path.exists(f"{self.path}-wal")
            target = f"{self.path.resolve().as_uri()}?{'mode=ro' if left else 'immutable=1'}"
            uri = True
        try:
            self.conn = sqlite3.connect(target, isolation_level=None, uri=uri,
                                        check_same_thread=False, timeout=10.0)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot be opened ({exc})") from None
        self._key = _OPEN.key(self.path)  # SQLite opened (or made) it: see _OpenStores
        _OPEN.add(self._key)
        try:
            if not create:  # before anything could change a file that is not ours
                self._check_format()
            if readonly:
                return
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={synchronous}")
            if create:
                self.conn.executescript(_DDL)
                with self.transaction():
                    self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                          [("format", STORE_FORMAT),
                                           ("version", str(STORE_VERSION))])
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"{self.path}: not a readable project store ({exc})") from None
        except StoreError:
            self.close()
            raise

    def _check_format(self) -> None:
        tables = {r[0] for r in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"meta", "settings", "images", "annotations", "instances"} <= tables:
            raise StoreError(f"{self.path}: not a keypoint-annotator project store")
        meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != STORE_FORMAT:
            raise StoreError(f"{self.path}: not a keypoint-annotator project store")
        try:
            version = int(meta.get("version", ""))
        except ValueError:
            raise StoreError(f"{self.path}: missing or invalid store version") from None
        if version > STORE_VERSION:
            raise StoreError(
                f"{self.path}: written by a newer version of the annotator (store version "
                f"{version}, this version reads up to {STORE_VERSION}); update the annotator")

    # ------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def transaction(self) -> Any:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextlib.contextmanager
    def read_snapshot(self) -> Any:
        """A read transaction begun now: every read in the block sees the file as it was
        when the block was entered, whatever other connections commit meanwhile (WAL)."""
        self.conn.execute("BEGIN")
        try:
            self.conn.execute("SELECT COUNT(*) FROM meta").fetchone()  # the snapshot starts
            yield self.conn
        finally:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("COMMIT")

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        _OPEN.remove(self._key)
        self._key = None

    # ------------------------------------------------------------- writing
    def write_meta(self, items: Mapping[str, Any]) -> None:
        """Set meta rows (values as JSON); call inside :meth:`transaction`."""
        self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                              [(k, _dump_text(v)) for k, v in items.items()])

    def write_schema(self, schema: KeypointSchema) -> None:
        self.write_meta({"schema": encode_schema(schema)})

    def write_settings(self, settings: ProjectSettings) -> None:
        self.conn.execute("DELETE FROM settings")
        self.conn.executemany("INSERT INTO settings VALUES (?, ?)", settings_rows(settings))

    def write_images(self, records: Sequence[ImageRecord], start: int = 0) -> None:
        """Rows ``start..`` of the image list (replacing what was there)."""
        self.conn.execute("DELETE FROM images WHERE pos >= ?", (start,))
        executemany_in_steps(
            self.conn, "INSERT INTO images VALUES (?, ?, ?)",
            [(start + i, _sql_str(r.path), _dump_text(record_data(r)))
             for i, r in enumerate(records)])

    def update_images(self, changed: Iterable[tuple[int, ImageRecord]]) -> None:
        executemany_in_steps(self.conn, "UPDATE images SET data = ? WHERE pos = ?",
                             [(_dump_text(record_data(r)), i) for i, r in changed])

    def write_annotations(self, changes: Mapping[str, ImageAnnotation]) -> None:
        """Replace the annotations of the given images (empty: removed)."""
        cede = Cede()  # 10^5 rows written one by one: see annotator.io.gil_steps
        keys = [(_sql_str(p),) for p in changes]
        executemany_in_steps(self.conn, "DELETE FROM instances WHERE path = ?", keys,
                             cede=cede)
        executemany_in_steps(self.conn, "DELETE FROM annotations WHERE path = ?", keys,
                             cede=cede)
        rows, inst_rows = [], []
        for path, ann in changes.items():
            if ann == EMPTY_ANNOTATION:
                continue
            rows.append((_sql_str(path), ann.status.value, ann.worst_confidence()))
            inst_rows.extend(_instance_rows(path, ann))
        executemany_in_steps(self.conn, "INSERT INTO annotations VALUES (?, ?, ?)", rows,
                             cede=cede)
        executemany_in_steps(self.conn, "INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?)",
                             inst_rows, cede=cede)

    def replace_all_annotations(self, annotations: Mapping[str, ImageAnnotation]) -> None:
        self.conn.execute("DELETE FROM instances")
        self.conn.execute("DELETE FROM annotations")
        self.write_annotations(annotations)

    def write_project(self, project: Project | Any, image_root: str) -> None:
        """Everything of ``project`` (a :class:`Project` or a snapshot), in one transaction."""
        with self.transaction():
            self.write_meta({"image_root": image_root})
            self.write_schema(project.schema)
            self.write_settings(project.settings)
            self.write_images(list(project.images))
            self.replace_all_annotations(project.annotations())

    # ------------------------------------------------------------- reading
    def meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return default
        try:
            return json.loads(row[0])
        except ValueError:
            raise StoreError(f"{self.path}: meta {key!r} is not valid JSON") from None

    def image_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def gallery_rows(self) -> list[tuple[str, str | None, float | None]]:
        """(path, status or None, worst confidence) per image in project order: what the
        gallery needs, without decoding a single keypoint."""
        return [(_from_sql_str(p), s, w) for p, s, w in ceding(self.conn.execute(
            "SELECT i.path, a.status, a.worst FROM images i LEFT JOIN annotations a "
            "ON a.path = i.path ORDER BY i.pos"))]

    def summary_rows(self) -> list[tuple[str, str, str | None, float | None]]:
        """(path, image data as JSON text, status or None, worst confidence) per image in
        project order: what the gallery shows of a project still loading (the instances
        table, nearly all of the file, is not read: 0.1 s at 100,000 x 3)."""
        return [(_from_sql_str(p), d, s, w) for p, d, s, w in ceding(self.conn.execute(
            "SELECT i.path, i.data, a.status, a.worst FROM images i LEFT JOIN annotations a "
            "ON a.path = i.path ORDER BY i.pos"))]

    def head(self) -> dict[str, Any]:
        """Image root (as stored), schema and settings of :meth:`document` (no images, no
        annotations)."""
        settings = {}
        for key, value in self.conn.execute("SELECT key, value FROM settings"):
            try:
                settings[key] = json.loads(value)
            except ValueError:
                raise StoreError(f"{self.path}: setting {key!r} is not valid JSON") from None
        return {"image_root": self.meta("image_root"), "schema": self.meta("schema"),
                "settings": settings, "images": [], "annotations": {}}

    def annotation_entry(self, path: str) -> dict[str, Any] | None:
        """The annotation of one image as a JSON-project document entry ({"status",
        "instances"}), or None when it has none; not validated."""
        key = _sql_str(path)
        row = self.conn.execute("SELECT status FROM annotations WHERE path = ?",
                                (key,)).fetchone()
        if row is None:
            return None
        instances = []
        for kps, bbox, score, ann_id in self.conn.execute(
                "SELECT keypoints, bbox, box_score, ann_id FROM instances WHERE path = ? "
                "ORDER BY idx", (key,)):
            instances.append(self._instance(path, kps, bbox, score, ann_id))
        return {"status": row[0], "instances": instances}

    def _instance(self, path: Any, kps: str, bbox: str | None, score: float | None,
                  ann_id: int | None) -> dict[str, Any]:
        try:
            inst: dict[str, Any] = {"keypoints": json.loads(kps)}
            if bbox is not None:
                inst["bbox"] = json.loads(bbox)
        except ValueError:
            raise StoreError(f"{self.path}: instance of {path!r}: invalid JSON") from None
        if score is not None:
            inst["box_score"] = score
        if ann_id is not None:
            inst["id"] = ann_id
        return inst

    def head_document(self) -> dict[str, Any]:
        """:meth:`document` without the annotations (image root, schema, settings, images):
        what a project still loading shows."""
        doc = self.head()
        images = doc["images"]
        for path, data in ceding(self.conn.execute(
                "SELECT path, data FROM images ORDER BY pos")):
            try:
                rec = json.loads(data)
            except ValueError:
                raise StoreError(f"{self.path}: image {path!r}: invalid data") from None
            if not isinstance(rec, dict):
                raise StoreError(f"{self.path}: image {path!r}: invalid data")
            rec["path"] = _from_sql_str(path)
            images.append(rec)
        return doc

    def document(self, progress: Callable[[float], None] | None = None) -> dict[str, Any]:
        """The project as a JSON-project document without its format header (image root
        as stored), not validated. ``progress``: see :meth:`annotation_entries`."""
        doc = self.head_document()
        doc["annotations"].update(self.annotation_entries(progress))
        return doc

    def annotation_entries(self, progress: Callable[[float], None] | None = None,
                           ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(path, entry) of every annotated image, one image at a time in path order: what
        :meth:`document` holds under "annotations" ({"status", "instances"}), not validated.
        A load that builds each image's annotation as it comes never holds the whole
        document (1.7 GB at 100,000 x 3). ``progress`` is called with the fraction of rows
        read, every few thousand rows (it may raise to stop)."""
        orphan = self.conn.execute(
            "SELECT path FROM instances i WHERE NOT EXISTS "
            "(SELECT 1 FROM annotations a WHERE a.path = i.path) LIMIT 1").fetchone()
        if orphan is not None:
            raise StoreError(f"{self.path}: an instance of {_from_sql_str(orphan[0])!r}, "
                             "which has no annotation row")
        total = max(1, sum(int(self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                           for table in ("instances", "annotations")))
        key: Any = None  # the image being gathered, as stored (its path is never NULL)
        path, entry = "", {}
        # read on a loader thread beside the GUI's: see annotator.io.gil_steps
        for done, (sql_path, status, kps, bbox, score, ann_id) in enumerate(ceding(
                self.conn.execute(
                    "SELECT a.path, a.status, i.keypoints, i.bbox, i.box_score, i.ann_id "
                    "FROM annotations a LEFT JOIN instances i ON i.path = a.path "
                    "ORDER BY a.path, i.idx"))):
            if progress is not None and not done % 5000:
                progress(min(1.0, done / total))
            if sql_path != key:
                if key is not None:
                    yield path, entry
                key, path = sql_path, _from_sql_str(sql_path)
                entry = {"status": status, "instances": []}
            if kps is not None:  # NULL: an annotation without instances (the left join)
                entry["instances"].append(self._instance(path, kps, bbox, score, ann_id))
        if key is not None:
            yield path, entry
        if progress is not None:
            progress(1.0)

def backup_path(path: str | os.PathLike[str]) -> Path:
    """Where the previous version of ``path`` is kept (``path~``)."""
    p = Path(path)
    return p.with_name(p.name + "~")


def remove_sidecars(path: Path) -> None:
    """Remove ``-wal`` / ``-shm`` files of ``path`` (before replacing the file itself: an
    old write-ahead log must never be applied to a new file)."""
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def write_store(project: Project | Any, path: str | os.PathLike[str], image_root: str) -> None:
    """Write ``project`` as a new store at ``path``, atomically: a temporary file in the same
    folder, checkpointed and closed, then renamed over ``path``."""
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{path} is read-only; not overwritten (save it elsewhere or "
                              "make the file writable)")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # sqlite creates it
    try:
        store = ProjectStore(tmp, create=True, synchronous="NORMAL")
        try:
            store.write_project(project, image_root)
            store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            store.conn.execute("PRAGMA synchronous=FULL")
        finally:
            store.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        remove_sidecars(Path(tmp))
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = None
        if mode is not None:
            os.chmod(tmp, mode)
        remove_sidecars(path)
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, f"{tmp}-wal", f"{tmp}-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def copy_store(src: ProjectStore, dest: str | os.PathLike[str]) -> None:
    """A consistent copy of an open store at ``dest`` (SQLite's online backup), atomically."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        out = sqlite3.connect(tmp)
        try:
            src.conn.backup(out)
            out.execute("PRAGMA journal_mode=DELETE")
        finally:
            out.close()
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


__all__ = ["ProjectStore", "StoreError", "backup_path", "copy_store", "is_store", "write_store"]
