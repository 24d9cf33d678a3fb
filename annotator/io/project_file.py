"""Versioned JSON project files: atomic saves with one backup, loading with clear errors."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from annotator.domain.annotation import (
    ImageAnnotation,
    ImageStatus,
    Instance,
    Keypoint,
    Origin,
    Visibility,
)
from annotator.domain.project import ImageRecord, Project, ProjectSettings
from annotator.domain.schema import KeypointSchema
from annotator.io.images import list_images

log = logging.getLogger(__name__)

FORMAT_NAME = "keypoint-annotator-project"
FORMAT_VERSION = 1
PROJECT_SUFFIX = ".kpproj.json"


class ProjectFileError(ValueError):
    """A project file cannot be read; the message names the file and the problem."""


# ------------------------------------------------------------------ encoding
def _encode_keypoint(kp: Keypoint) -> list[Any]:
    out: list[Any] = [round(kp.x, 3), round(kp.y, 3), int(kp.v), kp.origin.value]
    if kp.confidence is not None:
        out.append(round(kp.confidence, 5))
    return out


def project_to_dict(project: Project) -> dict[str, Any]:
    """The JSON-ready document for ``project``."""
    s = project.schema
    annotations = {}
    for path, ann in project.annotations().items():
        annotations[path] = {
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
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "image_root": project.image_root,
        "schema": {
            "name": s.name,
            "supercategory": s.supercategory,
            "keypoints": list(s.keypoints),
            "skeleton": [list(e) for e in s.skeleton],
            "flip_pairs": [list(p) for p in s.flip_pairs],
            "colors": list(s.colors),
        },
        "settings": dataclasses.asdict(project.settings),
        "images": [
            {"path": r.path, **({"width": r.width, "height": r.height} if r.width else {})}
            for r in project.images
        ],
        "annotations": annotations,
    }


def _decode_keypoint(raw: Any, where: str) -> Keypoint:
    if not isinstance(raw, list) or len(raw) not in (4, 5):
        raise ValueError(f"{where}: keypoint must be [x, y, v, origin(, confidence)]")
    x, y, v, origin = raw[:4]
    conf = raw[4] if len(raw) == 5 else None
    # dictionary lookups: Enum() calls dominated loading 10^5 keypoints
    vis = _VISIBILITY.get(v) if type(v) is int else None
    return Keypoint(float(x), float(y), vis if vis is not None else Visibility(int(v)),
                    _ORIGINS.get(origin) or Origin(origin), conf)


_VISIBILITY = {int(v): v for v in Visibility}
_ORIGINS = {o.value: o for o in Origin}


def _settings_from_dict(raw: Any, source: str) -> ProjectSettings:
    """Settings with every value type-checked; unknown keys (newer versions) are ignored."""
    if not isinstance(raw, dict):
        raise ProjectFileError(f"{source}: settings must be an object")
    defaults = ProjectSettings()
    values = {}
    for f in dataclasses.fields(ProjectSettings):
        if f.name not in raw:
            continue
        value, default = raw[f.name], getattr(defaults, f.name)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ProjectFileError(
                f"{source}: setting {f.name!r} is {value!r}, expected {type(default).__name__}"
            )
        values[f.name] = value
    return ProjectSettings(**values)


def project_from_dict(doc: Any, source: str = "<document>") -> Project:
    """Build a :class:`Project` from a decoded document; raises :class:`ProjectFileError`."""
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
        sd = doc["schema"]
        schema = KeypointSchema(
            name=sd["name"],
            keypoints=tuple(sd["keypoints"]),
            skeleton=tuple(tuple(e) for e in sd.get("skeleton", [])),
            flip_pairs=tuple(tuple(p) for p in sd.get("flip_pairs", [])),
            colors=tuple(sd.get("colors", ())),
            supercategory=sd.get("supercategory", ""),
        )
        settings = _settings_from_dict(doc.get("settings", {}), source)
        images = [
            ImageRecord(i["path"], i.get("width"), i.get("height")) for i in doc["images"]
        ]
        annotations = {}
        for path, a in doc.get("annotations", {}).items():
            instances = []
            for n, inst in enumerate(a["instances"]):
                where = f"annotation of {path!r}, instance {n}"
                kps = tuple(_decode_keypoint(k, where) for k in inst["keypoints"])
                bbox = tuple(inst["bbox"]) if inst.get("bbox") else None
                instances.append(Instance(kps, bbox, inst.get("box_score"), inst.get("id")))
            annotations[path] = ImageAnnotation(tuple(instances), ImageStatus(a["status"]))
        return Project(doc["image_root"], images, schema, annotations, settings)
    except ProjectFileError:
        raise
    except KeyError as exc:
        raise ProjectFileError(f"{source}: missing field {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ProjectFileError(f"{source}: invalid content: {exc}") from None


# -------------------------------------------------------------------- files
def atomic_write_text(path: str | os.PathLike[str], text: str, backup: bool = True) -> None:
    """Write ``text`` to ``path`` atomically (temp file, fsync, rename), keeping ``path~``
    as a backup of the previous version when ``backup`` is true."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    bak_tmp = None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))  # keep the file's permissions
            if backup:  # copy, never move: the project file exists at every instant
                bak_fd, bak_tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".bak",
                                                   dir=path.parent)
                os.close(bak_fd)
                shutil.copy2(path, bak_tmp)
                os.replace(bak_tmp, backup_path(path))
                bak_tmp = None
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


def backup_path(path: str | os.PathLike[str]) -> Path:
    """Where the previous version of ``path`` is kept."""
    p = Path(path)
    return p.with_name(p.name + "~")


def _portable_root(image_root: str, project_dir: Path) -> str:
    """The image root relative to the project file's folder (so both can move together),
    or absolute when that is not possible (another drive)."""
    try:
        return Path(os.path.relpath(Path(image_root).resolve(), project_dir.resolve())).as_posix()
    except ValueError:
        return image_root


def save_project(project: Project, path: str | os.PathLike[str]) -> None:
    """Save atomically, keeping one backup of the previous file. The image root is stored
    relative to the project file's folder."""
    doc = project_to_dict(project)
    doc["image_root"] = _portable_root(project.image_root, Path(path).parent)
    text = json.dumps(doc, indent=1, ensure_ascii=False)
    atomic_write_text(path, text)
    log.debug("saved project %s (revision %d)", path, project.revision)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside, then one collection: building 10^5 small
    immutable objects would otherwise trigger dozens of collections (half the load time of
    a 10,000-image project with 3 instances per image), and without the final one the first
    automatic collection after loading would scan them all at some later moment (a 0.3 s
    stall while the user sorts or scrolls). Restored after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
            gc.collect()  # the survivors move to the oldest generation now, once


def load_project(path: str | os.PathLike[str]) -> Project:
    """Load a project file; raises :class:`ProjectFileError` and never modifies the file."""
    with _gc_paused():
        project = _load_project(Path(path))
        for ann in project.annotations().values():
            ann.worst_confidence()  # cached per annotation: the first worst-first sort is fast
        return project


def _load_project(path: Path) -> Project:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        hint = ""
        if backup_path(path).exists():
            hint = f"; the previous version is in {backup_path(path)}"
        raise ProjectFileError(f"{path}: file not found{hint}") from None
    except OSError as exc:
        raise ProjectFileError(f"{path}: cannot be read ({exc})") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProjectFileError(f"{path}: not a text file (not a project file)") from None
    except json.JSONDecodeError as exc:
        hint = ""
        if backup_path(path).exists():
            hint = f"; the previous version is in {backup_path(path)}"
        raise ProjectFileError(
            f"{path}: truncated or invalid JSON at line {exc.lineno} column {exc.colno}{hint}"
        ) from None
    if isinstance(doc, dict) and isinstance(doc.get("image_root"), str):
        root = Path(doc["image_root"])
        if not root.is_absolute():
            doc["image_root"] = str((path.parent / root).resolve())
    return project_from_dict(doc, str(path))


def new_project(image_root: str | os.PathLike[str], schema: KeypointSchema) -> Project:
    """A project over every image found under ``image_root``."""
    root = Path(image_root).resolve()
    images = [ImageRecord(p) for p in list_images(root)]
    return Project(str(root), images, schema)


class Autosaver:
    """Coalesces rapid edits into one save ``delay_s`` after the last change.

    Call :meth:`maybe_save` from a timer (the GUI) or after edits (scripts); it saves when
    the project changed and no further edit arrived for ``delay_s`` seconds, or when changes
    have been waiting for ``max_wait_s`` (a stream of edits, such as predictions arriving
    during a long propagation, still gets saved regularly).
    """

    def __init__(
        self,
        project: Project,
        path: str | os.PathLike[str],
        delay_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        max_wait_s: float = 15.0,
    ) -> None:
        self.project = project
        self.path = Path(path)
        self.delay_s = delay_s
        self.max_wait_s = max(max_wait_s, delay_s)
        self._clock = clock
        self._saved_revision = project.revision
        self._last_change = clock()
        self._dirty_since: float | None = None
        self.saves = 0
        self._unsubscribe: Callable[[], None] | None = project.subscribe(
            lambda _paths: self.notify()
        )

    @property
    def dirty(self) -> bool:
        return self.project.revision != self._saved_revision

    def notify(self) -> None:
        """Record that an edit happened now."""
        self._last_change = self._clock()
        if self._dirty_since is None:
            self._dirty_since = self._last_change

    def maybe_save(self, now: float | None = None) -> bool:
        """Save if dirty and quiet for ``delay_s`` (or waiting for ``max_wait_s``); returns
        whether it saved."""
        now = self._clock() if now is None else now
        if not self.dirty:
            return False
        waiting = now - (self._dirty_since if self._dirty_since is not None else now)
        if now - self._last_change >= self.delay_s or waiting >= self.max_wait_s:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        """Save now if anything changed."""
        if self.dirty:
            revision = self.project.revision
            save_project(self.project, self.path)
            self._saved_revision = revision
            self._dirty_since = None
            self.saves += 1

    def close(self) -> None:
        """Flush and stop listening to the project."""
        self.flush()
        self.detach()

    def detach(self) -> None:
        """Stop listening to the project without saving (it was saved elsewhere)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
