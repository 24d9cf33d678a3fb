"""Shared pieces of the interchange formats: options, errors, the frames an export writes,
building a project from imported frames, and the lazy sleap-io import."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
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

FORMATS_EXTRA = 'pip install "keypoint-annotator[formats]"'


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


def export_frames(project: Project, options: ExportOptions) -> list[Frame]:
    """The images an export writes, in project order: reviewed and reference images (and
    predicted ones when asked), with instances that hold a labelled keypoint or a box."""
    wanted = exported_statuses(options)
    frames = []
    for rec in project.images:
        ann = project.annotation(rec.path)
        if ann.status not in wanted:
            continue
        source = resolve_image_path(project.image_root, rec.path)
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


def copy_image(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` (a real copy: editing the dataset never touches the
    project's images)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copy2(source, target)
    except OSError as exc:
        raise FormatError(f"cannot copy image {source} to {target}: {exc}") from None


@contextmanager
def staged_folder(out: Path, what: str) -> Iterator[Path]:
    """A temporary sibling of ``out`` to write a dataset folder into, renamed to ``out``
    when the block succeeds and removed when it fails; ``out`` must be new or empty."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FormatError(
            f"{out}: the {what} folder must be new or empty (an export would mix its files "
            "with the ones there)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
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
    """A temporary sibling of ``out`` (same suffix) renamed to ``out`` on success."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    stage = Path(name)
    try:
        yield stage
        os.replace(stage, out)
    except BaseException:
        stage.unlink(missing_ok=True)
        raise
