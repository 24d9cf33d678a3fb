"""Shared pieces of the interchange formats: options, errors, the frames an export writes,
building a project from imported frames, and the lazy sleap-io import."""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from annotator.domain.annotation import (
    ImageAnnotation,
    ImageStatus,
    Instance,
    Keypoint,
    Origin,
)
from annotator.domain.paths import PathEscapeError, normalize_relpath
from annotator.domain.project import ImageRecord, Project
from annotator.domain.schema import KeypointSchema
from annotator.io.coco import _instance_box
from annotator.io.images import ImageLoadError, read_size, resolve_image_path
from annotator.io.jsonio import InputFormatError, check_coordinate

log = logging.getLogger(__name__)

MAX_TEXT_BYTES = 256 << 20  # a dataset's YAML, CSV, label or JSON file read whole
MAX_LISTED = 500_000  # entries walked when listing a split folder
MAX_NAME = 4096  # characters in an image path

FORMATS_EXTRA = 'pip install "keypoint-annotator[formats]"'

#: ``progress(done, total)``, called now and then by an export; it may raise (a cancel) to
#: stop the export, whose staged output is then removed (nothing is left at ``out``)
ProgressFn = Callable[[int, int], None]


class FormatError(InputFormatError):
    """An interchange file is missing, malformed or cannot be written; the message names
    the file and the problem."""


@dataclass(frozen=True)
class ExportOptions:
    """What an export writes.

    ``include_predictions``: also write images whose status is only *predicted* (default:
    reviewed and reference images only). ``min_confidence``: with predictions included,
    predicted keypoints below this confidence are written as missing. ``val_fraction``:
    YOLO pose only, the share of images put in the ``val`` split (0: ``val`` is the
    training set). ``image_prefix``: Label Studio only, prepended to each image path in
    ``data.image`` (for example ``/data/local-files/?d=photos/``). ``drop_occluded``: DLC
    only, which has no occluded flag: leave occluded points out instead of writing them as
    labelled.
    """

    include_predictions: bool = False
    min_confidence: float | None = None
    val_fraction: float = 0.0
    image_prefix: str = ""
    drop_occluded: bool = False

    def __post_init__(self) -> None:
        if self.min_confidence is not None and not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence {self.min_confidence} outside [0, 1]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction {self.val_fraction} outside [0, 1)")


DEFAULT_EXPORT = ExportOptions()


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and what the format could not keep."""

    path: Path
    images: int
    instances: int
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        text = f"wrote {self.path}: {self.images} image(s), {self.instances} instance(s)"
        return "; ".join([text, *self.notes])


@dataclass(frozen=True)
class Frame:
    """One image as an export writes it: labelled instances only, size known."""

    path: str  # relative to the project's image root
    source: Path  # the image file
    width: int
    height: int
    status: ImageStatus
    instances: tuple[Instance, ...]


def exported_statuses(options: ExportOptions) -> frozenset[ImageStatus]:
    wanted = {ImageStatus.REVIEWED, ImageStatus.REFERENCE}
    if options.include_predictions:
        wanted.add(ImageStatus.PREDICTED)
    return frozenset(wanted)


def _filtered(inst: Instance, min_confidence: float | None) -> Instance:
    if min_confidence is None:
        return inst
    kps = tuple(
        Keypoint(origin=kp.origin, confidence=kp.confidence)
        if kp.labelled and kp.origin == Origin.PREDICTED
        and (kp.confidence is None or kp.confidence < min_confidence)
        else kp
        for kp in inst.keypoints
    )
    return replace(inst, keypoints=kps)


class Phase:
    """One phase of an export as ``progress(done, total)`` calls: step ``i`` of ``count``
    is unit ``start + i * span // count`` of ``total``; about every 1 % and at the end."""

    def __init__(self, progress: ProgressFn | None, count: int, start: int = 0,
                 span: int | None = None, total: int | None = None) -> None:
        self.progress, self.count, self.start = progress, max(count, 1), start
        self.span = self.count if span is None else span
        self.total = self.start + self.span if total is None else total
        self.every = max(1, self.count // 100)

    def __call__(self, i: int) -> None:
        if self.progress is not None and (i % self.every == 0 or i >= self.count):
            self.progress(self.start + min(i, self.count) * self.span // self.count, self.total)


def write_phase(progress: ProgressFn | None, project: Project, count: int) -> Phase:
    """The writing phase of an export after :func:`export_frames` scanned ``project``: the
    second half of ``2 * len(project.images)`` units, over ``count`` written images."""
    n = max(len(project.images), 1)
    return Phase(progress, count, n, n, 2 * n)


def export_frames(project: Project, options: ExportOptions,
                  progress: ProgressFn | None = None) -> list[Frame]:
    """The images an export writes, in project order: reviewed and reference images (and
    predicted ones when asked), with instances that hold a labelled keypoint or a box.
    ``progress``: the scan is the first half of ``2 * len(project.images)`` units."""
    wanted = exported_statuses(options)
    frames = []
    n = max(len(project.images), 1)
    scanned = Phase(progress, n, 0, n, 2 * n)
    for i, rec in enumerate(project.images):
        scanned(i)
        ann = project.annotation(rec.path)
        if ann.status not in wanted:
            continue
        try:
            source = resolve_image_path(project.image_root, rec.path)
        except ValueError as exc:  # a link that leaves the image folder: never followed
            raise FormatError(f"cannot export image {rec.path!r}: {exc}") from None
        if rec.width and rec.height:
            width, height = rec.width, rec.height
        else:
            try:
                width, height = read_size(source)
            except (ImageLoadError, ValueError) as exc:
                raise FormatError(
                    f"cannot export image {rec.path!r}: its size is unknown and the file "
                    f"cannot be read ({exc})"
                ) from None
        insts = tuple(
            inst
            for inst in (_filtered(i, options.min_confidence) for i in ann.instances)
            if inst.num_labelled or inst.bbox is not None
        )
        frames.append(Frame(rec.path, source, width, height, ann.status, insts))
    return frames


def instance_box(inst: Instance, width: int, height: int) -> tuple[float, float, float, float]:
    """(x, y, w, h) of an instance: the user's box, else the labelled keypoints' bounds
    (at least 1 px a side, inside the image) -- the same box as the COCO export."""
    return _instance_box(inst, width, height)


def clip_box(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[float, float, float, float]:
    """``box`` cut to the image (x, y, w, h); a box wholly outside keeps a 1 px sliver."""
    x0, y0 = min(max(box[0], 0.0), width - 1.0), min(max(box[1], 0.0), height - 1.0)
    x1 = min(max(box[0] + box[2], x0 + 1.0), float(width))
    y1 = min(max(box[1] + box[3], y0 + 1.0), float(height))
    return (x0, y0, x1 - x0, y1 - y0)


def relpath_or_error(path: str, source: str) -> str:
    """``path`` normalised as a relative POSIX path, or a FormatError naming ``source``."""
    if isinstance(path, str) and len(path) > MAX_NAME:
        raise FormatError(f"{source}: an image path of {len(path):,} characters (at most "
                          f"{MAX_NAME:,})")
    try:
        return normalize_relpath(path)
    except PathEscapeError as exc:
        raise FormatError(f"{source}: {exc}") from None


def common_root(paths: Sequence[Path], fallback: Path) -> tuple[Path, list[str]]:
    """The deepest folder holding every absolute path in ``paths`` and each path relative
    to it (``fallback`` when there are none)."""
    if not paths:
        return fallback, []
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return root, [p.relative_to(root).as_posix() for p in paths]


def project_from_frames(
    root: Path,
    schema: KeypointSchema,
    frames: Iterable[tuple[str, int | None, int | None, ImageAnnotation]],
    source: str,
) -> Project:
    """A project over ``root`` from (relative path, width, height, annotation) tuples."""
    images: list[ImageRecord] = []
    annotations: dict[str, ImageAnnotation] = {}
    for path, width, height, ann in frames:
        rel = relpath_or_error(path, source)
        if rel in annotations:
            raise FormatError(f"{source}: image {rel!r} is listed twice")
        for i, inst in enumerate(ann.instances):
            for j, kp in enumerate(inst.keypoints):
                if kp.labelled:  # bounded like project files, so that the project saves
                    where = f"{source}: image {rel!r}, instance {i}, keypoint {j}"
                    check_coordinate(kp.x, f"{where}, x", FormatError)
                    check_coordinate(kp.y, f"{where}, y", FormatError)
        images.append(ImageRecord(rel, width, height))
        annotations[rel] = ann
    try:
        return Project(str(root.resolve()), images, schema, annotations)
    except ValueError as exc:
        raise FormatError(f"{source}: {exc}") from None


def imported_status(instances: Sequence[Instance]) -> ImageStatus:
    """Status of an image labelled by another tool: predicted when all its points are
    machine predictions (they must not serve as references), else a reference when it has
    labels, reviewed (confirmed empty) when the format lists it without any."""
    labelled = [kp for inst in instances for kp in inst.keypoints if kp.labelled]
    if labelled and all(kp.origin == Origin.PREDICTED for kp in labelled):
        return ImageStatus.PREDICTED
    return ImageStatus.REFERENCE if instances else ImageStatus.REVIEWED


def require_sleap_io() -> Any:
    """The ``sleap_io`` module, or a FormatError saying how to install it."""
    try:
        import sleap_io
    except ImportError:
        raise FormatError(
            f"this format needs the optional sleap-io package: {FORMATS_EXTRA}"
        ) from None
    return sleap_io


def require_yaml() -> Any:
    """The ``yaml`` module (PyYAML), or a FormatError saying how to install it."""
    try:
        import yaml
    except ImportError:
        raise FormatError("this format needs PyYAML: pip install PyYAML") from None
    return yaml


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or below it (both taken as they are: resolve first)."""
    return path == root or root in path.parents


def dataset_file(path: Path, root: Path, what: str) -> Path:
    """``path`` with links resolved, checked to be a regular file inside ``root`` (the
    dataset's folder): a crafted dataset must not make an importer read ``~/.ssh/id_rsa``
    or ``/dev/zero``."""
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if not is_inside(real, real_root):
        raise FormatError(f"{path}: the {what} is outside the dataset folder {real_root}; "
                          "not read")
    try:
        st = os.stat(real)
    except OSError as exc:
        raise FormatError(f"{path}: the {what} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{path}: the {what} is not a regular file; not read")
    return real


def read_dataset_text(path: Path, root: Path, what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a dataset file (see :func:`dataset_file`), at most ``limit``
    bytes; every failure is a FormatError naming the file."""
    real = dataset_file(path, root, what)
    try:
        with open(real, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise FormatError(f"{path}: the {what} cannot be read ({exc.strerror})") from None
    if len(data) > limit:
        raise FormatError(f"{path}: the {what} is larger than {limit >> 20} MiB; not read")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: the {what} is not UTF-8 text (byte {exc.start})") from None
    if "\x00" in text:
        raise FormatError(f"{path}: the {what} contains a NUL character; not a text file")
    return text


def read_input_bytes(path: Path, what: str, limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of the file the user named (a regular file of at most ``limit`` bytes)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{path}: the {what} is not a regular file; not read")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise FormatError(f"{path}: cannot be read ({exc.strerror})") from None
    if len(data) > limit:
        raise FormatError(f"{path}: the {what} is larger than {limit >> 20} MiB; not read")
    return data


def load_yaml(text: str, source: str) -> Any:
    """``text`` parsed as safe YAML (libyaml's C parser when PyYAML has it), or a
    FormatError naming ``source``."""
    yaml = require_yaml()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise FormatError(f"{source}: not readable YAML ({exc})") from None


def copy_image(source: Path, target: Path) -> None:
    """Copy the regular file ``source`` to ``target`` (a real copy: editing the dataset
    never touches the project's images). Links are not followed at the last step and a
    device, pipe or folder is refused (``/dev/zero`` would fill the disk); the copy's mode
    follows the umask."""
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(source, flags)
    except OSError as exc:
        reason = "a link" if exc.errno == errno.ELOOP else exc.strerror
        raise FormatError(f"cannot copy image {source}: {reason}") from None
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(f"cannot copy image {source}: not a regular file")
        try:
            with open(target, "xb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError as exc:
            raise FormatError(f"cannot copy image {source} to {target}: {exc}") from None


def refuse_symlink(out: Path) -> None:
    """A FormatError when ``out`` is a symbolic link: an export never writes through one
    (it would overwrite the link's target)."""
    if out.is_symlink():
        raise FormatError(f"{out} is a symbolic link; write the export to a real path")


def _stage_name(out: Path, suffix: str = "") -> str:
    return f".{out.name}.{secrets.token_hex(4)}.partial{suffix}"


def clean_stale_stages(out: Path, suffix: str = "") -> None:
    """Remove what an earlier export of ``out`` that was killed left behind (its hidden
    ``.<name>.<random>.partial`` folder or file)."""
    if not out.parent.is_dir():
        return
    for stale in out.parent.glob(f".{out.name}.????????.partial{suffix}"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextmanager
def staged_folder(out: Path, what: str) -> Iterator[Path]:
    """A temporary sibling of ``out`` to write a dataset folder into, renamed to ``out``
    when the block succeeds and removed when it fails (what a killed export left is
    removed by the next one); ``out`` must be new or empty; modes follow the umask."""
    refuse_symlink(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FormatError(
            f"{out}: the {what} folder must be new or empty (an export would mix its files "
            "with the ones there)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_stages(out)
    stage = out.parent / _stage_name(out)
    os.mkdir(stage)  # 0777 minus the umask, unlike mkdtemp's 0700
    try:
        yield stage
        if out.exists():
            out.rmdir()
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


@contextmanager
def staged_file(out: Path) -> Iterator[Path]:
    """A temporary sibling of ``out`` (same suffix, mode from the umask) renamed to
    ``out`` on success."""
    refuse_symlink(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_stages(out, out.suffix)
    stage = out.parent / _stage_name(out, out.suffix)
    os.close(os.open(stage, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield stage
        os.replace(stage, out)
    except BaseException:
        stage.unlink(missing_ok=True)
        raise
