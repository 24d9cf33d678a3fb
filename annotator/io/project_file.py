"""Project files: the SQLite store (``.kpproj``, :mod:`annotator.io.store`) and the versioned
JSON document of previous versions (``.kpproj.json``: opened and migrated, and written by
"Save a copy as JSON"); atomic saves with one backup, loading with clear errors."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import logging
import os
import re
import shutil
import sqlite3
import stat
import tempfile
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from annotator.domain.annotation import (
    ImageAnnotation,
    ImageStatus,
    Instance,
    Keypoint,
    Origin,
    Visibility,
)
from annotator.domain.paths import is_normal_relpath
from annotator.domain.project import ImageRecord, Project, ProjectSettings
from annotator.domain.schema import KeypointSchema
from annotator.io.freeing import take_apart
from annotator.io.images import list_images
from annotator.io.jsonio import (
    MAX_COORDINATE,
    InputFormatError,
    check_coordinate,
    loads_strict,
)
from annotator.io.store import (  # noqa: F401 (backup_path: part of this module's API)
    ProjectStore,
    StoreError,
    backup_path,
    is_store,
    record_data,
    write_store,
)

log = logging.getLogger(__name__)

FORMAT_NAME = "keypoint-annotator-project"
FORMAT_VERSION = 1
PROJECT_SUFFIX = ".kpproj"  # the SQLite store
JSON_SUFFIX = ".kpproj.json"  # the JSON document (previous versions; "Save a copy as JSON")


class ProjectFileError(InputFormatError):
    """A project file cannot be read; the message names the file and the problem."""


# ------------------------------------------------------------------ encoding
def _encode_keypoint(kp: Keypoint) -> list[Any]:
    out: list[Any] = [round(kp.x, 3), round(kp.y, 3), int(kp.v), kp.origin.value]
    if kp.confidence is not None:
        out.append(round(kp.confidence, 5))
    return out


def encode_annotation(ann: ImageAnnotation) -> dict[str, Any]:
    """The JSON form of one image's annotation (as in the project file)."""
    return {
        "status": ann.status.value,
        "instances": [
            {
                "keypoints": [_encode_keypoint(kp) for kp in inst.keypoints],
                **({"bbox": list(inst.bbox)} if inst.bbox else {}),
                **({"box_score": inst.box_score} if inst.box_score is not None else {}),
                **({"id": inst.ann_id} if inst.ann_id is not None else {}),
            }
            for inst in ann.instances
        ],
    }


def encode_schema(s: KeypointSchema) -> dict[str, Any]:
    """The JSON form of a schema (as in the project file)."""
    return {
        "name": s.name,
        "supercategory": s.supercategory,
        "keypoints": list(s.keypoints),
        "skeleton": [list(e) for e in s.skeleton],
        "flip_pairs": [list(p) for p in s.flip_pairs],
        "colors": list(s.colors),
    }


def project_to_dict(project: Project) -> dict[str, Any]:
    """The JSON-ready document for ``project``."""
    annotations = {path: encode_annotation(ann) for path, ann in project.annotations().items()}
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "image_root": project.image_root,
        "schema": encode_schema(project.schema),
        "settings": dataclasses.asdict(project.settings),
        "images": [{"path": r.path, **record_data(r)} for r in project.images],
        "annotations": annotations,
    }


def _decode_keypoint(raw: Any, where: str) -> Keypoint:
    if not isinstance(raw, list) or len(raw) not in (4, 5):
        raise ValueError(f"{where}: keypoint must be [x, y, v, origin(, confidence)]")
    x, y, v, origin = raw[:4]
    conf = raw[4] if len(raw) == 5 else None
    x = check_coordinate(x, f"{where}: x", ProjectFileError)
    y = check_coordinate(y, f"{where}: y", ProjectFileError)
    if isinstance(v, bool) or not isinstance(v, int) or v not in (0, 1, 2):
        raise ProjectFileError(f"{where}: visibility {v!r} is not 0, 1 or 2")
    if not isinstance(origin, str) or origin not in _ORIGINS:
        raise ProjectFileError(f"{where}: origin {origin!r} is not one of "
                               f"{', '.join(_ORIGINS)}")
    if conf is not None:
        conf = check_coordinate(conf, f"{where}: confidence", ProjectFileError, 0.0, 1.0)
    # dictionary lookups: Enum() calls dominated loading 10^5 keypoints
    return Keypoint(x, y, _VISIBILITY[v], _ORIGINS[origin], conf)


def _decode_keypoints(raw: Any, where: str) -> tuple[Keypoint, ...]:
    """An instance's keypoints, checked as :func:`_decode_keypoint` checks them, in one tight
    loop (loading 5 million keypoints spent most of its time in per-field calls); any
    problem is reported by :func:`_decode_keypoint`, which names it."""
    out = []
    append, new, vis, origins, num = out.append, object.__new__, _VISIBILITY, _ORIGINS, _NUMBER
    lo, hi = -MAX_COORDINATE, MAX_COORDINATE
    try:
        for k in raw:
            if type(k) is not list:
                break
            n = len(k)
            if n == 5:
                x, y, v, o, c = k
                if type(c) not in num or not 0.0 <= c <= 1.0:
                    break
                c = float(c)
            elif n == 4:
                x, y, v, o = k
                c = None
            else:
                break
            if (type(x) not in num or type(y) not in num or type(v) is not int
                    or not (lo <= x <= hi and lo <= y <= hi)):
                break
            kp = new(Keypoint)
            # the fields Keypoint.__init__ would set, values checked above (no NaN passes
            # the range test)
            kp.__dict__.update(x=float(x), y=float(y), v=vis[v], origin=origins[o],
                               confidence=c)
            append(kp)
        else:
            return tuple(out)
    except (KeyError, TypeError, ValueError):
        pass
    _kind(raw, list, f"{where}: keypoints")
    for k in raw:  # raises naming the problem
        _decode_keypoint(k, where)
    raise ProjectFileError(f"{where}: invalid keypoints")  # pragma: no cover (defensive)


_NUMBER = frozenset((int, float))
_VISIBILITY = {int(v): v for v in Visibility}
_IMAGE_FIELDS = tuple(f.name for f in dataclasses.fields(ImageRecord))
_ORIGINS = {o.value: o for o in Origin}


def _strings(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise ProjectFileError(f"{where} must be a list of strings")
    return tuple(raw)


def _int_pairs(raw: Any, where: str) -> tuple[tuple[int, int], ...]:
    ok = isinstance(raw, list) and all(
        isinstance(e, list) and len(e) == 2
        and all(isinstance(i, int) and not isinstance(i, bool) for i in e) for e in raw)
    if not ok:
        raise ProjectFileError(f"{where} must be a list of [int, int] pairs")
    return tuple((int(a), int(b)) for a, b in raw)


def _kind(raw: Any, kind: type, where: str) -> Any:
    if not isinstance(raw, kind) or isinstance(raw, bool):
        what = "an object" if kind is dict else f"a {kind.__name__}"
        raise ProjectFileError(f"{where} must be {what}")
    return raw


@functools.cache
def _settings_hints() -> dict[str, Any]:
    """The field types of :class:`ProjectSettings` (resolved once: a millisecond each time,
    and a project still loading reads one per image shown)."""
    return typing.get_type_hints(ProjectSettings)


def _settings_from_dict(raw: Any, source: str) -> ProjectSettings:
    """Settings with every value type-checked; unknown keys (newer versions) are ignored."""
    if not isinstance(raw, dict):
        raise ProjectFileError(f"{source}: settings must be an object")
    hints = _settings_hints()
    values = {}
    for f in dataclasses.fields(ProjectSettings):
        if f.name not in raw:
            continue
        value, kinds = raw[f.name], typing.get_args(hints[f.name]) or (hints[f.name],)
        if value is None:
            ok = type(None) in kinds  # "the preset's own value"
        elif bool in kinds:
            ok = isinstance(value, bool)
        elif float in kinds:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, kinds) and not isinstance(value, bool)
        if not ok:
            expected = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise ProjectFileError(
                f"{source}: setting {f.name!r} is {value!r}, expected {expected}"
            )
        values[f.name] = value
    return ProjectSettings(**values)


def project_from_dict(doc: Any, source: str = "<document>",
                      progress: Progress | None = None,
                      annotations: Iterable[tuple[str, Any]] | None = None) -> Project:
    """Build a :class:`Project` from a decoded document; raises :class:`ProjectFileError`.
    ``progress``: see :func:`load_project`. ``annotations``: the (path, entry) pairs of the
    document's "annotations", when they come one by one rather than in ``doc`` (a store's
    :meth:`~annotator.io.store.ProjectStore.annotation_entries`: each entry is built as it
    comes and dropped, so the whole document is never held; ``progress`` is then theirs)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise ProjectFileError(f"{source}: not a keypoint-annotator project file")
    version = doc.get("version")
    if not isinstance(version, int):
        raise ProjectFileError(f"{source}: missing or invalid format version")
    if version > FORMAT_VERSION:
        raise ProjectFileError(
            f"{source}: written by a newer version of the annotator (project format {version}, "
            f"this version reads up to {FORMAT_VERSION}); update the annotator to open it"
        )
    try:
        sd = _kind(doc["schema"], dict, "schema")
        schema = KeypointSchema(
            name=_kind(sd["name"], str, "schema.name"),
            keypoints=_strings(sd["keypoints"], "schema.keypoints"),
            skeleton=_int_pairs(sd.get("skeleton", []), "schema.skeleton"),
            flip_pairs=_int_pairs(sd.get("flip_pairs", []), "schema.flip_pairs"),
            colors=_strings(sd.get("colors", []), "schema.colors"),
            supercategory=_kind(sd.get("supercategory", ""), str, "schema.supercategory"),
        )
        settings = _settings_from_dict(doc.get("settings", {}), source)
        images = []
        for n, i in enumerate(_kind(doc["images"], list, "images")):
            i = _kind(i, dict, f"images[{n}]")
            _kind(i["path"], str, f"images[{n}].path")
            # every field the record has (generic: newer optional fields round-trip);
            # unknown keys (written by a newer version) are ignored
            images.append(ImageRecord(**{k: i[k] for k in _IMAGE_FIELDS if k in i}))
        built = {}
        if annotations is None:
            raw = _kind(doc.get("annotations", {}), dict, "annotations")
            total = max(1, len(raw))
            for done, (path, a) in enumerate(raw.items()):
                if progress is not None and not done % 2000:
                    progress(done / total)
                built[path] = _annotation_from_entry(path, a)
        else:
            for path, a in annotations:
                built[path] = _annotation_from_entry(path, a)
        root = _kind(doc["image_root"], str, "image_root")
        project = Project(root, images, schema, built, settings)
        return project
    except ProjectFileError as exc:
        msg = str(exc)
        raise ProjectFileError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    except StoreError:
        raise  # the store's rows (``annotations``): names the file already
    except KeyError as exc:
        raise ProjectFileError(f"{source}: missing field {exc}") from None
    except (TypeError, ValueError, AttributeError, OverflowError, RecursionError) as exc:
        raise ProjectFileError(f"{source}: invalid content: {exc}") from None


def _annotation_from_entry(path: str, a: Any) -> ImageAnnotation:
    """One document entry ({"status", "instances"}) of image ``path``, checked."""
    a = _kind(a, dict, f"annotation of {path!r}")
    instances = []
    for n, inst in enumerate(_kind(a["instances"], list, f"annotation of {path!r}")):
        where = f"annotation of {path!r}, instance {n}"
        inst = _kind(inst, dict, where)
        kps = _decode_keypoints(inst["keypoints"], where)
        bbox = None
        if inst.get("bbox"):
            raw_box = _kind(inst["bbox"], list, f"{where}: bbox")
            if len(raw_box) != 4:
                raise ProjectFileError(f"{where}: bbox must be [x, y, w, h]")
            bbox = tuple(check_coordinate(b, f"{where}: bbox", ProjectFileError)
                         for b in raw_box)
        score = inst.get("box_score")
        if score is not None:
            score = check_coordinate(score, f"{where}: box_score", ProjectFileError,
                                     0.0, 1.0)
        ann_id = inst.get("id")
        if ann_id is not None and (isinstance(ann_id, bool) or not isinstance(ann_id, int)
                                   or ann_id < 1):
            raise ProjectFileError(f"{where}: id {ann_id!r} is not an integer >= 1")
        instances.append(Instance(kps, bbox, score, ann_id))
    status = _kind(a["status"], str, f"annotation of {path!r}: status")
    return ImageAnnotation(tuple(instances), ImageStatus(status))


# -------------------------------------------------------------------- files
_OWN_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.(tmp|bak)$")
STALE_TEMP_S = 3600.0  # our temporary files older than this were left by a killed save


def process_umask() -> int:
    """The process umask, read without changing it where the platform allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # fallback: read by setting (briefly) and restoring
    os.umask(mask)
    return mask


def _clean_stale_temps(folder: Path, name: str) -> None:
    """Remove our own temporary files for ``name`` left by killed saves (older than an hour)."""
    stale = time.time() - STALE_TEMP_S
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        m = _OWN_TEMP.match(e.name)
        if not m or m.group("name") != name:
            continue
        try:
            if e.is_file(follow_symlinks=False) and e.stat().st_mtime < stale:
                os.unlink(e.path)
        except OSError:
            pass


def atomic_write_text(path: str | os.PathLike[str], text: str, backup: bool = True) -> None:
    """Write ``text`` as UTF-8 with :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"), backup)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, backup: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename), keeping ``path~``
    as a backup of the previous version when ``backup`` is true (see :func:`atomic_writer`)."""
    with atomic_writer(path, backup) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], backup: bool = False) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into, piece by piece; when the block
    ends without an error it is fsynced and renamed over ``path`` (atomically), keeping
    ``path~`` as a backup of the previous version when ``backup`` is true; after an error
    (a cancel) nothing is left and ``path`` is untouched.

    A symlink is written through (its target is replaced, the link stays); an existing
    file keeps its permissions, a new one gets 0666 minus the umask; a read-only file is
    refused with :class:`PermissionError`; our stale temporary files are cleaned."""
    path = Path(os.path.realpath(path))  # write through symlinks to the real file
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{path} is not a regular file; not overwritten")
        if not (st.st_mode & 0o222) or not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is read-only; not overwritten (save it elsewhere or "
                                  "make the file writable)")
    _clean_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    bak_tmp = None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if st is not None:
            os.chmod(tmp, stat.S_IMODE(st.st_mode))  # keep the file's permissions
            if backup:  # copy, never move: the project file exists at every instant
                bak_fd, bak_tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".bak",
                                                   dir=path.parent)
                os.close(bak_fd)
                shutil.copy2(path, bak_tmp)
                os.replace(bak_tmp, backup_path(path))
                bak_tmp = None
        else:
            os.chmod(tmp, 0o666 & ~process_umask())
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, bak_tmp):
            if leftover and os.path.exists(leftover):
                os.unlink(leftover)
        raise
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # not supported on every platform/filesystem
        pass


def dumps_document(doc: Any, indent: int | None = 1) -> str:
    """JSON text for a document: never NaN/Infinity; non-ASCII kept readable unless a name
    holds undecodable bytes (surrogate escapes), which are then written as \\u escapes so
    the file stays UTF-8 and the name round-trips."""
    text = json.dumps(doc, indent=indent, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(doc, indent=indent, ensure_ascii=True, allow_nan=False)
    return text


def _portable_root(image_root: str, project_dir: Path) -> str:
    """The image root relative to the project file's folder (so both can move together),
    or absolute when that is not possible (another drive)."""
    try:
        return Path(os.path.relpath(Path(image_root).resolve(), project_dir.resolve())).as_posix()
    except ValueError:
        return image_root


def _dump(obj: Any) -> str:
    """Compact one-line JSON (C encoder); \\u escapes only for undecodable names."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(obj, ensure_ascii=True, allow_nan=False)
    return text


def document_text(project: Project, image_root: str | None = None,
                  cooperative: bool = False) -> str:
    """The project file's text: one line per top-level field, image and annotation.

    Written entry by entry from small temporary objects rather than one big document, so a
    save on a background thread neither holds the GIL for long nor grows the heap enough to
    trigger full garbage collections that would stall the GUI thread. ``cooperative`` (a
    background save) sleeps 1 ms every 64 entries: a CPU-bound Python thread otherwise makes
    every GIL hand-over of the GUI thread wait up to the 5 ms switch interval."""
    pause = (lambda: time.sleep(0.001)) if cooperative else (lambda: None)
    head: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
    head["image_root"] = project.image_root if image_root is None else image_root
    head["schema"] = encode_schema(project.schema)
    head["settings"] = dataclasses.asdict(project.settings)
    parts = ["{\n"]
    parts.extend(f"{_dump(k)}: {_dump(v)},\n" for k, v in head.items())
    images = project.images
    parts.append('"images": [\n')
    last = len(images) - 1
    for i, r in enumerate(images):
        rec = {"path": r.path, **record_data(r)}
        parts.append(_dump(rec) + (",\n" if i < last else "\n"))
        if i % 64 == 63:
            pause()
    parts.append('],\n"annotations": {\n')
    annotations = project.annotations()
    last = len(annotations) - 1
    for i, (path, ann) in enumerate(annotations.items()):
        parts.append(f"{_dump(path)}: {_dump(encode_annotation(ann))}"
                     + (",\n" if i < last else "\n"))
        if i % 64 == 63:
            pause()
    parts.append("}\n}\n")
    return "".join(parts)


def is_json_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a JSON project (``.json``) rather than a store."""
    return str(path).lower().endswith(".json")


def save_project(project: Project, path: str | os.PathLike[str],
                 cooperative: bool = False) -> None:
    """Save the whole project at ``path``, atomically: the SQLite store, or for a name ending
    in ``.json`` the JSON document (keeping one backup, ``path~``). The image root is stored
    relative to the file's folder. ``cooperative``: see :func:`document_text`."""
    root = _portable_root(project.image_root, Path(path).parent)
    if is_json_path(path):
        atomic_write_text(path, document_text(project, root, cooperative))
    else:
        write_store(project, path, root)
    log.debug("saved project %s (revision %d)", path, project.revision)


def save_json_copy(project: Project, path: str | os.PathLike[str]) -> None:
    """"Save a copy as JSON": the JSON document at ``path`` (for diffs and version control)."""
    root = _portable_root(project.image_root, Path(path).parent)
    atomic_write_text(path, document_text(project, root))


Progress = Callable[[float], None]
"""Called with the fraction done (0..1) while a project loads; it may raise
:class:`LoadCancelled` (or any exception) to stop the load."""


class LoadCancelled(Exception):  # noqa: N818 (not an error: the caller asked for it)
    """Raised by a :data:`Progress` callback to stop a load."""


def load_project(path: str | os.PathLike[str], recover: bool = True,
                 progress: Progress | None = None, *,
                 pinned: Callable[[], None] | None = None) -> Project:
    """Load a project file (store or JSON); raises :class:`ProjectFileError` and never
    modifies the file. With ``recover``, the edit journal of a JSON project (written by
    previous versions) is applied. ``progress`` (for loads off the GUI thread) is called
    every few thousand rows. ``pinned`` (a store only): the store is read in one read
    transaction, and ``pinned()`` is called once it has begun, before anything else is
    read: the project loaded is the file as it was at that call, whatever another process
    commits while the load goes on."""
    return load_project_recovering(path, recover, progress, pinned=pinned)[0]


# a project at least this big has its objects frozen after loading (see below)
_COLLECT_AFTER_IMAGES = 2000


def load_project_recovering(path: str | os.PathLike[str], recover: bool = True,
                            progress: Progress | None = None, *,
                            pinned: Callable[[], None] | None = None) -> tuple[Project, int]:
    """(project, number of legacy journal records recovered) for :func:`load_project`.

    No cyclic garbage collection while loading: building 10^5 small immutable objects would
    otherwise trigger dozens of collections (half the load time of a 10,000-image project
    with 3 instances per image). The objects made meanwhile all sit in the youngest
    generation, so the next automatic collection would walk every one of them (0.9 s at
    10,000 x 3, seconds at 100,000, holding the GIL against the GUI thread). A big project's
    objects are therefore frozen (``gc.freeze``: moved out of the collector's sight, O(1));
    they are still freed by reference counting once unreferenced. A small one needs
    neither."""
    was = gc.isenabled()
    gc.disable()
    big = False
    try:
        project, count = _load_project_recovering(path, recover, progress, pinned)
        for ann in project.annotations().values():
            ann.worst_confidence()  # cached per annotation: the first worst-first sort is fast
        big = len(project.images) >= _COLLECT_AFTER_IMAGES
    finally:
        if was:
            if big:
                gc.freeze()  # before enabling: no collection may walk them first
            gc.enable()
    if progress is not None:
        progress(1.0)
    return project, count


def _load_project_recovering(path: str | os.PathLike[str], recover: bool,
                             progress: Progress | None = None,
                             pinned: Callable[[], None] | None = None) -> tuple[Project, int]:
    if is_store(path):
        return _load_store(Path(path), progress, pinned), 0
    if pinned is not None:
        raise ProjectFileError(f"{path}: not a project store (a pinned read needs one)")
    read = None if progress is None else (lambda f: progress(0.4 * f))
    build = None if progress is None else (lambda f: progress(0.4 + 0.6 * f))
    doc = read_project_document(path, read)
    try:
        if recover:  # a journal is a JSON project's (stores are loaded above)
            from annotator.io.legacy_journal import recover_document

            recovered, count = recover_document(doc, path)
            if count:
                try:
                    return project_from_dict(recovered, str(path), build), count
                except ProjectFileError as exc:
                    log.warning("the edit journal of %s was not applied: %s", path, exc)
                finally:
                    release_document(recovered)
        return project_from_dict(doc, str(path), build), 0
    finally:
        release_document(doc)


HEAD_SHARE = 0.1  # the share of a store's load (progress) its image rows take


def _load_store(path: Path, progress: Progress | None,
                pinned: Callable[[], None] | None) -> Project:
    """The project in the store at ``path``, each image's annotation built as its rows are
    read: the whole document is never held beside the project (peak RSS 2.0 GB rather than
    3.1 GB at 100,000 x 3, BENCHMARKS 7o). ``pinned``: see :func:`load_project`."""
    rows = None if progress is None else (lambda f: progress(HEAD_SHARE + (1 - HEAD_SHARE) * f))

    def read(store: ProjectStore) -> Project:
        if pinned is None:
            return build(store)
        with store.read_snapshot():
            pinned()
            return build(store)

    def build(store: ProjectStore) -> Project:
        if progress is not None:
            progress(0.0)
        doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **store.head_document()}
        _absolute_root(doc, path)
        try:
            return project_from_dict(doc, str(path), None, store.annotation_entries(rows))
        finally:
            release_document(doc)

    return _read_store(path, read)


def release_document(doc: Any) -> None:
    """Free a decoded project document entry by entry (see :mod:`annotator.io.freeing`):
    dropped at once, its millions of lists and floats would be freed in one C call that
    holds the GIL for up to a second at 100,000 x 3 (the GUI's thread stalls meanwhile)."""
    if isinstance(doc, dict):
        take_apart(*(doc.get(key) for key in ("annotations", "images")))


def _backup_hint(path: Path) -> str:
    return f"; the previous version is in {backup_path(path)}" if backup_path(path).exists() \
        else ""


def read_project_document(path: str | os.PathLike[str],
                          progress: Progress | None = None) -> Any:
    """The project as a decoded JSON-project document (image root made absolute), not yet
    validated: read from the store, or parsed from a JSON project file. (A store is loaded
    without it: :func:`load_project`.)"""
    path = Path(path)
    if is_store(path):
        doc = _read_store(path, lambda store: store.document(progress))
        doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **doc}
    else:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ProjectFileError(f"{path}: file not found{_backup_hint(path)}") from None
        except OSError as exc:
            raise ProjectFileError(f"{path}: cannot be read ({exc})") from None
        try:
            doc = loads_strict(raw, str(path), ProjectFileError)
        except ProjectFileError as exc:
            if "not UTF-8" in str(exc):
                raise ProjectFileError(f"{path}: not a text file (not a project file)") from None
            raise ProjectFileError(str(exc).replace("invalid or truncated", "truncated or invalid")
                                   + _backup_hint(path)) from None
    _absolute_root(doc, path)
    return doc


def _absolute_root(doc: Any, path: Path) -> None:
    if isinstance(doc, dict) and isinstance(doc.get("image_root"), str):
        root = Path(doc["image_root"])
        if not root.is_absolute():
            doc["image_root"] = str((path.parent / root).resolve())


def _read_store(path: Path, read: Callable[[ProjectStore], Any]) -> Any:
    """``read(store)`` on the store at ``path`` (read-only when its folder or file is);
    store and SQLite errors become :class:`ProjectFileError` naming the file."""
    try:
        try:
            store = ProjectStore(path)
        except StoreError as exc:
            if "unable to open" not in str(exc) and "readonly" not in str(exc):
                raise
            store = ProjectStore(path, readonly=True)  # a read-only folder or file
        try:
            return read(store)
        finally:
            store.close()
    except (StoreError, sqlite3.Error) as exc:
        msg = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
        raise ProjectFileError(msg + _backup_hint(path)) from None


#: (status, worst prediction confidence or None, number of instances) of one image
Summary = tuple[ImageStatus, "float | None"]


@dataclasses.dataclass(frozen=True)
class ProjectPreview:
    """What a big store shows while its annotations load: ``project`` has the images,
    schema and settings but no annotation; ``summary`` gives each annotated image's status
    and worst confidence (read from the store's summary rows); ``path``:
    the store."""

    project: Project
    summary: Mapping[str, Summary]
    path: Path


def read_preview(path: str | os.PathLike[str]) -> ProjectPreview:
    """The :class:`ProjectPreview` of the store at ``path`` (no keypoint decoded: about half
    a second at 100,000 images x 3); raises :class:`ProjectFileError`."""
    path = Path(path)

    def read(store: ProjectStore) -> tuple[Any, list[Any]]:
        return store.head(), store.summary_rows()

    was = gc.isenabled()
    gc.disable()  # 10^5 records: no collection while building them (as in a full load)
    big = False
    try:
        doc, rows = _read_store(path, read)
        _absolute_root(doc, path)
        # schema, settings and root checked as a full load checks them
        empty = project_from_dict({"format": FORMAT_NAME, "version": FORMAT_VERSION, **doc},
                                  str(path))
        statuses = {s.value: s for s in ImageStatus}
        summary: dict[str, Summary] = {}
        records = []
        for start in range(0, len(rows), 4096):
            chunk = rows[start:start + 4096]
            try:  # one parse per chunk: 10^5 separate json.loads calls cost a quarter second
                datas = json.loads("[" + ",".join(r[1] for r in chunk) + "]")
            except ValueError:
                raise ProjectFileError(f"{path}: invalid image data") from None
            for (p, _d, status, worst), data in zip(chunk, datas):
                records.append(_image_record(p, data, path))
                if status is None:
                    continue
                if status not in statuses:
                    raise ProjectFileError(f"{path}: image {p!r}: status {status!r} is not one "
                                           f"of {', '.join(statuses)}")
                summary[p] = (statuses[status], worst)
        try:
            project = Project(empty.image_root, records, empty.schema, None, empty.settings)
        except ValueError as exc:
            raise ProjectFileError(f"{path}: {exc}") from None
        big = len(records) >= _COLLECT_AFTER_IMAGES
    finally:
        if was:
            if big:
                gc.freeze()  # as after a full load: no collection walks the records
            gc.enable()
    return ProjectPreview(project, summary, path)


_RECORD_FIELDS = frozenset(_IMAGE_FIELDS) - {"path"}
_RECORD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ImageRecord)}
_SIZE_FIELDS = frozenset(("width", "height"))


def _image_record(image: str, data: Any, source: Path) -> ImageRecord:
    """The record of ``image`` from its stored fields (unknown ones, from a newer version,
    ignored)."""
    if type(data) is not dict:
        raise ProjectFileError(f"{source}: image {image!r}: invalid data")
    if data.keys() <= _SIZE_FIELDS and is_normal_relpath(image):
        width, height = data.get("width"), data.get("height")
        if (width is None or (type(width) is int and width > 0)) \
                and (height is None or (type(height) is int and height > 0)):
            # a plain image (no video frame), every value checked as ImageRecord checks
            # it: the fields its __init__ would set (10^5 validating calls cost a third of
            # a second; this path a quarter of that)
            rec = object.__new__(ImageRecord)
            fields = rec.__dict__
            fields.update(_RECORD_DEFAULTS)
            fields.update(data)
            fields["path"] = image
            return rec
    if not data.keys() <= _RECORD_FIELDS:
        data = {k: v for k, v in data.items() if k in _RECORD_FIELDS}
    try:
        return ImageRecord(image, **data)
    except (TypeError, ValueError) as exc:
        raise ProjectFileError(f"{source}: image {image!r}: {exc}") from None


def read_annotation(store: ProjectStore, image: str) -> ImageAnnotation:
    """The annotation of one image of an open ``store`` (empty when it has none), checked
    as a full load checks it (a few milliseconds: what a project still loading shows of the
    image on screen); raises :class:`ProjectFileError`."""
    try:
        entry = store.annotation_entry(image)
        doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "image_root": ".",
               "schema": store.meta("schema"), "images": [{"path": image}],
               "annotations": {image: entry} if entry is not None else {}}
    except (StoreError, sqlite3.Error) as exc:
        raise ProjectFileError(f"{store.path}: {exc}") from None
    return project_from_dict(doc, str(store.path)).annotation(image)


def store_path_for(path: str | os.PathLike[str]) -> Path:
    """The store a JSON project migrates to: ``x.kpproj.json`` -> ``x.kpproj`` (``x.json``
    -> ``x.kpproj``), with `` (2)``, `` (3)``... when that name is taken by a file that is
    not already its migration."""
    p = Path(path)
    name = p.name
    for suffix in (JSON_SUFFIX, ".json"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return p.with_name(name + PROJECT_SUFFIX)


@dataclasses.dataclass(frozen=True)
class OpenedProject:
    """What :func:`open_project_file` found: the project, the store it is saved in, and
    whether it came from a JSON project (``migrated_from``) with journaled edits."""

    project: Project
    path: Path
    migrated_from: Path | None = None
    recovered: int = 0


def open_project_file(path: str | os.PathLike[str],
                      progress: Progress | None = None) -> OpenedProject:
    """Open a project for editing: a store as it is; a JSON project (previous versions) is
    migrated to a store beside it (``x.kpproj.json`` -> ``x.kpproj``; the JSON file stays as
    it is, as a backup). When the store is there already from an earlier migration and not
    older than the JSON file, it is opened instead. Raises :class:`ProjectFileError`.
    ``progress``: see :func:`load_project`."""
    path = Path(path)
    if is_store(path) or not path.exists():
        return OpenedProject(load_project(path, progress=progress), path)
    target = store_path_for(path)
    n = 1
    while target.exists():
        if is_store(target) and target.stat().st_mtime >= path.stat().st_mtime:
            log.info("%s was migrated to %s before; opening that", path, target)
            return OpenedProject(load_project(target, progress=progress), target, path)
        n += 1
        target = store_path_for(path).with_name(
            store_path_for(path).name.removesuffix(PROJECT_SUFFIX) + f" ({n}){PROJECT_SUFFIX}")
    project, recovered = load_project_recovering(path, progress=progress)
    try:
        save_project(project, target)
    except OSError as exc:
        raise ProjectFileError(f"{path}: cannot be migrated to {target} ({exc})") from None
    log.info("migrated %s to %s (%d journaled edit(s) applied)", path, target, recovered)
    return OpenedProject(project, target, path, recovered)


def new_project(image_root: str | os.PathLike[str], schema: KeypointSchema) -> Project:
    """A project over every image found under ``image_root``."""
    root = Path(image_root).resolve()
    images = [ImageRecord(p) for p in list_images(root)]
    return Project(str(root), images, schema)
