"""COCO keypoint export (valid by construction) and import (strictly validated).

Export follows DESIGN.md section 5. Extra fields that COCO readers ignore carry what COCO has
no place for, so that export -> import -> export round-trips:
``annotations[].keypoint_scores`` (per-keypoint confidence, null where not predicted),
``annotations[].keypoint_origins``, ``annotations[].bbox_source`` ("user" or "keypoints"),
``annotations[].bbox_score`` (a detector's box score, until accepted) and
``images[].annotator_status``.

Instances: one annotation per instance; its id is the instance's own id (from import or
creation), so ids are stable across exports. On import an annotation with a bbox and no
labelled keypoint (all v = 0, or no keypoints field: a detector's output) is a box to fill.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

from annotator.domain.annotation import (
    ImageAnnotation,
    ImageStatus,
    Instance,
    Keypoint,
    Origin,
    Visibility,
)
from annotator.domain.paths import PathEscapeError, normalize_relpath
from annotator.domain.project import ImageRecord, Project
from annotator.domain.schema import KeypointSchema, SchemaError, infer_flip_pairs
from annotator.io.images import ImageLoadError, read_size, resolve_image_path
from annotator.io.jsonio import MAX_COORDINATE, InputFormatError, loads_strict
from annotator.io.project_file import atomic_write_text, atomic_writer

log = logging.getLogger(__name__)

CATEGORY_ID = 1
MIN_BOX_SIDE = 1.0
DECIMALS = 3  # keypoint and box positions are written to 0.001 px
MAX_INPUT_BYTES = 1 << 30  # a COCO file read whole
MAX_NAME = 4096  # characters in an image path


class CocoFormatError(InputFormatError):
    """A COCO file is malformed; the message names the offending entry."""


# ==================================================================== export
def _instance_box(
    inst: Instance, width: int | None, height: int | None
) -> tuple[float, float, float, float]:
    """(x, y, w, h) with w, h >= 1: the user's box, else the labelled keypoints' bounds."""
    user = inst.bbox is not None
    if inst.bbox is not None:
        x, y, w, h = inst.bbox
    else:
        bounds = inst.labelled_bounds()
        assert bounds is not None
        x, y, w, h = bounds
    # a single point, a line or a sliver still needs a positive area after rounding
    if w < MIN_BOX_SIDE:
        x, w = x - (MIN_BOX_SIDE - w) / 2, MIN_BOX_SIDE
    if h < MIN_BOX_SIDE:
        y, h = y - (MIN_BOX_SIDE - h) / 2, MIN_BOX_SIDE
    if user:
        return (x, y, w, h)
    if width:
        x = min(max(x, 0.0), max(width - w, 0.0))
    if height:
        y = min(max(y, 0.0), max(height - h, 0.0))
    return (x, y, w, h)


class ExportScope(str, Enum):
    """Which labels an export carries (recorded in the file's ``info``)."""

    REVIEWED = "reviewed"  # reviewed and reference images only: labels a person checked
    PREDICTIONS = "predictions"  # also every predicted keypoint nobody reviewed
    CONFIDENT = "confident"  # also predicted keypoints scored at or above min_confidence


@dataclass(frozen=True)
class ExportChoice:
    """What to export. The default is the honest one: only images a person reviewed (or
    made references). ``min_confidence`` applies to :attr:`ExportScope.CONFIDENT` only: a
    predicted keypoint scored below it goes out as not labelled (0, 0, 0), its score kept."""

    scope: ExportScope = ExportScope.REVIEWED
    min_confidence: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "scope", ExportScope(self.scope))
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence {self.min_confidence} is not within 0..1")

    def describe(self) -> str:
        """One line for the dialog, the CLI and the file's ``info``."""
        if self.scope == ExportScope.REVIEWED:
            return "reviewed and reference images only"
        if self.scope == ExportScope.PREDICTIONS:
            return "reviewed and reference images, and all unreviewed predictions"
        return ("reviewed and reference images, and unreviewed predicted keypoints with "
                f"confidence >= {self.min_confidence:g}")

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scope": self.scope.value, "description": self.describe()}
        if self.scope == ExportScope.CONFIDENT:
            out["min_confidence"] = self.min_confidence
        return out


@dataclass(frozen=True)
class CocoSource:
    """An immutable snapshot of what an export reads, taken on the GUI thread in
    milliseconds (annotations and image records are frozen; only the dicts are copied), so
    the document can be built and written on another thread while the user edits on."""

    image_root: str
    images: tuple[ImageRecord, ...]
    schema: KeypointSchema
    annotations: Mapping[str, ImageAnnotation]

    @classmethod
    def of(cls, project: Project) -> CocoSource:
        return cls(project.image_root, project.images, project.schema, project.annotations())

    def annotation(self, path: str) -> ImageAnnotation:
        return self.annotations.get(path, _EMPTY)


_EMPTY = ImageAnnotation()
ProgressFn = Callable[[int, int], None]


def _image_size(image_root: str, rec: ImageRecord) -> tuple[int, int] | None:
    """(width, height), read from the file header when the project does not know it yet;
    None when the file cannot be read."""
    if rec.width and rec.height:
        return rec.width, rec.height
    try:
        return read_size(resolve_image_path(image_root, rec.path))
    except (ImageLoadError, ValueError) as exc:
        log.warning("image %s left out of the COCO export: %s", rec.path, exc)
        return None


def _annotation_ids(annotations: Iterable[ImageAnnotation]) -> Callable[[Instance], int]:
    """Id per exported instance: its own ``ann_id`` (kept from import or creation, so ids are
    stable across exports) when unique, else the next id above every known one, in order."""
    seen: set[int] = set()
    counter = 1 + max((inst.ann_id for ann in annotations for inst in ann.instances
                       if inst.ann_id is not None), default=0)

    def next_id(inst: Instance) -> int:
        nonlocal counter
        if inst.ann_id is not None and inst.ann_id not in seen:
            seen.add(inst.ann_id)
            return inst.ann_id
        while counter in seen:
            counter += 1
        seen.add(counter)
        return counter

    return next_id


def _exported(ann: ImageAnnotation, choice: ExportChoice) -> ImageAnnotation | None:
    """What of ``ann`` the export carries under ``choice`` (None: the image is left out)."""
    if ann.status in (ImageStatus.REVIEWED, ImageStatus.REFERENCE):
        return ann
    if choice.scope == ExportScope.REVIEWED:
        return None
    if choice.scope == ExportScope.PREDICTIONS:
        return ann
    low = choice.min_confidence
    insts = tuple(
        replace(inst, keypoints=tuple(
            Keypoint(origin=kp.origin, confidence=kp.confidence)
            if kp.origin == Origin.PREDICTED and kp.labelled
            and (kp.confidence is None or kp.confidence < low)
            else kp
            for kp in inst.keypoints
        ))
        for inst in ann.instances
    )
    return replace(ann, instances=insts)


def _entries(
    project: Project | CocoSource, choice: ExportChoice, progress: ProgressFn | None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """("image" | "annotation", entry), in document order within each kind."""
    source = CocoSource.of(project) if isinstance(project, Project) else project
    n_images = 0
    next_id = _annotation_ids(source.annotations.values())
    total = len(source.images)
    step = max(1, total // 100)
    for done, rec in enumerate(source.images):
        if progress is not None and done % step == 0:
            progress(done, total)
        ann = _exported(source.annotation(rec.path), choice)
        if ann is None:
            continue
        size = _image_size(source.image_root, rec)
        if size is None:
            if ann.has_labels:
                raise CocoFormatError(
                    f"cannot export image {rec.path!r}: it has keypoints but its size is unknown "
                    "and the file cannot be read"
                )
            continue  # an unreadable image without labels has nothing to export
        width, height = size
        if isinstance(project, Project) and not rec.width:
            project.set_image_size(rec.path, width, height)
        n_images += 1
        image_id = n_images
        yield "image", {
            "id": image_id,
            "file_name": rec.path,
            "width": width,
            "height": height,
            "annotator_status": ann.status.value,
        }
        for inst in ann.instances:
            if inst.num_labelled == 0 and inst.bbox is None:
                continue
            # positions as written (3 decimals), so the box derived on re-export is the same
            inst = replace(
                inst,
                keypoints=tuple(
                    replace(k, x=round(k.x, DECIMALS), y=round(k.y, DECIMALS))
                    for k in inst.keypoints
                ),
            )
            flat: list[float] = []
            scores: list[float | None] = []
            for kp in inst.keypoints:
                if kp.labelled:
                    flat += [kp.x, kp.y, int(kp.v)]
                else:
                    flat += [0, 0, 0]
                scores.append(None if kp.confidence is None else round(kp.confidence, 4))
            x, y, w, h = (round(b, DECIMALS) for b in _instance_box(inst, width, height))
            yield "annotation", {
                "id": next_id(inst),
                "image_id": image_id,
                "category_id": CATEGORY_ID,
                "keypoints": flat,
                "num_keypoints": inst.num_labelled,
                "bbox": [x, y, w, h],
                "area": round(w * h, 4),
                "bbox_source": "user" if inst.bbox is not None else "keypoints",
                "iscrowd": 0,
                "segmentation": [],
                "keypoint_scores": scores,
                "keypoint_origins": [kp.origin.value for kp in inst.keypoints],
                **({"bbox_score": round(inst.box_score, 4)}
                   if inst.box_score is not None else {}),
            }
    if progress is not None:
        progress(total, total)


def _frame(schema: KeypointSchema, choice: ExportChoice) -> dict[str, Any]:
    """The document without its images and annotations, keys in the order written."""
    category = {
        "id": CATEGORY_ID,
        "name": schema.name,
        "supercategory": schema.supercategory or schema.name,
        "keypoints": list(schema.keypoints),
        "skeleton": [[a + 1, b + 1] for a, b in schema.skeleton],
    }
    return {
        "info": {"description": "exported by keypoint-annotator", "version": "1.0",
                 "annotator_export": choice.info()},
        "licenses": [],
        "images": [],
        "annotations": [],
        "categories": [category],
    }


def export_coco(
    project: Project | CocoSource,
    choice: ExportChoice | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """COCO keypoints document for ``project`` (or a snapshot of it) under ``choice``
    (default: reviewed and reference images only).

    Images whose labels the choice leaves out are left out entirely, so that a reader does
    not take them for images without objects; so are unreadable images without labels
    (logged). Sizes read from files are stored in ``project`` when it is a :class:`Project`.
    ``progress(done, total)`` is called now and then. The choice is recorded in
    ``info["annotator_export"]``.
    """
    choice = choice or ExportChoice()
    doc = _frame(project.schema, choice)
    for kind, entry in _entries(project, choice, progress):
        doc["images" if kind == "image" else "annotations"].append(entry)
    return doc


def stream_coco(
    project: Project | CocoSource,
    out: TextIO,
    choice: ExportChoice | None = None,
    progress: ProgressFn | None = None,
    file_names: list[str] | None = None,
    spill_dir: str | os.PathLike[str] | None = None,
) -> tuple[int, int]:
    """Write ``json.dumps(export_coco(...))`` to ``out`` one entry at a time; returns (images,
    annotations). Each image entry is written as soon as it is made; the annotation entries,
    which come after every image in the document, wait in an unnamed temporary file (in
    ``spill_dir``) and are copied in chunks. No call holds the GIL for the whole document
    (joining and encoding tens of MB in one go stalled the GUI thread) and no large graph of
    objects is ever held. ``file_names`` receives the ``file_name`` of every image written."""
    choice = choice or ExportChoice()
    n_images = n_annotations = 0
    with tempfile.TemporaryFile("w+", encoding="ascii", newline="", dir=spill_dir) as spill:
        frame = _frame(project.schema, choice)
        head = []
        for key, value in frame.items():
            if key == "images":
                break
            head.append(f"{json.dumps(key)}: {json.dumps(value, allow_nan=False)}")
        out.write("{" + ", ".join(head) + ', "images": [')
        for kind, entry in _entries(project, choice, progress):
            text = json.dumps(entry, allow_nan=False)  # ASCII: ensure_ascii
            if kind == "image":
                out.write(text if n_images == 0 else ", " + text)
                n_images += 1
                if file_names is not None:
                    file_names.append(entry["file_name"])
            else:
                spill.write(text if n_annotations == 0 else ", " + text)
                n_annotations += 1
        out.write('], "annotations": [')
        spill.seek(0)
        shutil.copyfileobj(spill, out, 1 << 16)
        out.write("]")
        after = list(frame)[list(frame).index("annotations") + 1:]
        for key in after:
            out.write(f", {json.dumps(key)}: {json.dumps(frame[key], allow_nan=False)}")
        out.write("}")
    return n_images, n_annotations


def render_coco(
    project: Project | CocoSource,
    choice: ExportChoice | None = None,
    progress: ProgressFn | None = None,
) -> tuple[str, int, int]:
    """(``json.dumps(export_coco(...))``, images, annotations), built one entry at a time
    (:func:`stream_coco` into a string)."""
    buf = io.StringIO()
    n_images, n_annotations = stream_coco(project, buf, choice, progress)
    return buf.getvalue(), n_images, n_annotations


def write_coco(
    project: Project | CocoSource,
    path: str | os.PathLike[str],
    choice: ExportChoice | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Export ``project`` (or a snapshot) to ``path`` atomically; returns the document."""
    doc = export_coco(project, choice, progress)
    atomic_write_text(path, json.dumps(doc, allow_nan=False), backup=False)
    return doc


def write_coco_text(
    project: Project | CocoSource,
    path: str | os.PathLike[str],
    choice: ExportChoice | None = None,
    progress: ProgressFn | None = None,
    file_names: list[str] | None = None,
    before_rename: Callable[[], None] | None = None,
) -> tuple[int, int]:
    """Like :func:`write_coco` (the same bytes) but streamed into the staged file entry by
    entry (:func:`stream_coco`), for a background thread; returns (images, annotations).
    ``before_rename`` runs once the text is written, before it replaces ``path`` (an error
    there, or a cancel meanwhile, leaves ``path`` untouched)."""
    with atomic_writer(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        try:
            counts = stream_coco(project, text, choice, progress, file_names,
                                 spill_dir=Path(os.path.realpath(path)).parent)
            text.flush()
        finally:
            text.detach()  # the writer closes (and fsyncs) the file itself
        if before_rename is not None:
            before_rename()
    return counts


# ==================================================================== import
def _need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict):
        raise CocoFormatError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise CocoFormatError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CocoFormatError(f"{where}: field {key!r} has the wrong type {type(value).__name__}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CocoFormatError(f"{where}: {value!r} is not a number")
    try:
        f = float(value)
    except OverflowError:
        raise CocoFormatError(f"{where}: {str(value)[:40]}... is out of range") from None
    if not math.isfinite(f):
        raise CocoFormatError(f"{where}: {value!r} is not finite")
    if abs(f) > MAX_COORDINATE:
        raise CocoFormatError(f"{where}: {value!r} is out of range (|value| <= {MAX_COORDINATE:g})")
    return f


def _int_id(obj: dict, key: str, where: str) -> int:
    value = _need(obj, key, (int, float), where)
    if isinstance(value, int) and abs(value) >= 1 << 63:
        raise CocoFormatError(f"{where}: {key} is out of range (more than 64 bits)")
    if not math.isfinite(value) or float(value) != int(value):
        raise CocoFormatError(f"{where}: {key} {value!r} is not an integer")
    return int(value)


def _pick_category(categories: list, category: str | int | None, source: str) -> dict:
    kp_cats = []
    for i, c in enumerate(categories):
        where = f"{source}: categories[{i}]"
        _int_id(c, "id", where)
        _need(c, "name", str, where)
        if isinstance(c.get("keypoints"), list) and c["keypoints"]:
            kp_cats.append(c)
    if category is not None:
        for c in kp_cats:
            if c["name"] == category or c["id"] == category:
                return c
        raise CocoFormatError(f"{source}: no keypoint category {category!r}")
    if not kp_cats:
        raise CocoFormatError(f"{source}: no category defines keypoints")
    if len(kp_cats) > 1:
        names = ", ".join(repr(c["name"]) for c in kp_cats)
        raise CocoFormatError(f"{source}: several keypoint categories ({names}); "
                              "choose one (convert --category NAME)")
    return kp_cats[0]


def _schema_from_category(cat: dict, source: str) -> KeypointSchema:
    where = f"{source}: category {cat['name']!r}"
    names = cat["keypoints"]
    if not all(isinstance(n, str) for n in names):
        raise CocoFormatError(f"{where}: keypoint names must be strings")
    k = len(names)
    skeleton = []
    raw_skeleton = cat.get("skeleton") or []
    if not isinstance(raw_skeleton, list):
        raise CocoFormatError(f"{where}: skeleton must be a list of [a, b] pairs")
    for j, edge in enumerate(raw_skeleton):
        if (
            not isinstance(edge, list)
            or len(edge) != 2
            or not all(isinstance(e, int) and not isinstance(e, bool) for e in edge)
        ):
            raise CocoFormatError(f"{where}: skeleton[{j}] = {edge!r} is not a pair of integers")
        a, b = edge
        if not (1 <= a <= k and 1 <= b <= k):
            raise CocoFormatError(
                f"{where}: skeleton[{j}] = {edge!r} is outside 1..{k} (COCO skeletons are 1-based)"
            )
        skeleton.append((a - 1, b - 1))
    supercategory = cat.get("supercategory", "")
    try:
        return KeypointSchema(
            name=cat["name"],
            keypoints=tuple(names),
            skeleton=tuple(skeleton),
            flip_pairs=infer_flip_pairs(names),
            supercategory=supercategory if isinstance(supercategory, str) else "",
        )
    except SchemaError as exc:
        raise CocoFormatError(f"{where}: {exc}") from None


def _parse_keypoints(ann: dict, k: int, where: str) -> tuple[Keypoint, ...]:
    if "keypoints" not in ann and "bbox" in ann:  # a detection: a box to fill
        return tuple(Keypoint() for _ in range(k))
    flat = _need(ann, "keypoints", list, where)
    if len(flat) != 3 * k:
        raise CocoFormatError(f"{where}: {len(flat)} keypoint numbers, expected 3 x {k} = {3 * k}")
    scores = ann.get("keypoint_scores")
    origins = ann.get("keypoint_origins")
    if scores is not None and (not isinstance(scores, list) or len(scores) != k):
        raise CocoFormatError(f"{where}: keypoint_scores must be a list of {k} values")
    if origins is not None and (not isinstance(origins, list) or len(origins) != k):
        raise CocoFormatError(f"{where}: keypoint_origins must be a list of {k} values")
    kps = []
    for j in range(k):
        x = _number(flat[3 * j], f"{where}, keypoint {j} x")
        y = _number(flat[3 * j + 1], f"{where}, keypoint {j} y")
        v = _number(flat[3 * j + 2], f"{where}, keypoint {j} visibility")
        if v not in (0, 1, 2):
            raise CocoFormatError(f"{where}, keypoint {j}: visibility {v!r} is not 0, 1 or 2")
        conf = None
        if scores is not None and scores[j] is not None:
            conf = _number(scores[j], f"{where}, keypoint_scores[{j}]")
            if not 0 <= conf <= 1:
                raise CocoFormatError(f"{where}, keypoint_scores[{j}]: {conf} outside [0, 1]")
        origin = Origin.MANUAL
        if origins is not None:
            try:
                origin = Origin(origins[j])
            except (ValueError, TypeError):
                raise CocoFormatError(
                    f"{where}, keypoint_origins[{j}]: unknown origin {origins[j]!r}"
                ) from None
        if v == 0:
            # a reviewed deletion stays reviewed; a prediction not found keeps its confidence
            kps.append(Keypoint(origin=origin, confidence=conf))
        else:
            kps.append(Keypoint(x, y, Visibility(int(v)), origin, conf))
    return tuple(kps)


def _parse_bbox(ann: dict, where: str) -> tuple[float, float, float, float] | None:
    raw = ann.get("bbox")
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) != 4:
        raise CocoFormatError(f"{where}: bbox must be [x, y, w, h]")
    box = tuple(_number(b, f"{where}, bbox") for b in raw)
    if box[2] <= 0 or box[3] <= 0:
        return None
    return box  # type: ignore[return-value]


def coco_to_project(
    doc: Any,
    image_root: str | os.PathLike[str],
    source: str = "<COCO>",
    category: str | int | None = None,
) -> Project:
    """Build a project from a decoded COCO keypoints document (strict validation)."""
    if not isinstance(doc, dict):
        raise CocoFormatError(f"{source}: top level must be an object")
    raw_images = _need(doc, "images", list, source)
    raw_anns = _need(doc, "annotations", list, source)
    categories = _need(doc, "categories", list, source)
    known_cats: set[int] = set()
    for i, c in enumerate(categories):
        cat_id = _int_id(c, "id", f"{source}: categories[{i}]")
        if cat_id in known_cats:
            raise CocoFormatError(f"{source}: categories[{i}]: duplicate category id {cat_id}")
        known_cats.add(cat_id)
    cat = _pick_category(categories, category, source)
    schema = _schema_from_category(cat, source)
    k = len(schema)

    images: list[ImageRecord] = []
    id_to_path: dict[int, str] = {}
    statuses: dict[str, ImageStatus] = {}
    for i, im in enumerate(raw_images):
        where = f"{source}: images[{i}]"
        image_id = _int_id(im, "id", where)
        if image_id in id_to_path:
            raise CocoFormatError(f"{where}: duplicate image id {image_id}")
        name = _need(im, "file_name", str, where)
        if len(name) > MAX_NAME:
            raise CocoFormatError(f"{where}: file_name of {len(name):,} characters (at most "
                                  f"{MAX_NAME:,})")
        try:
            path = normalize_relpath(name)
        except PathEscapeError as exc:
            raise CocoFormatError(f"{where}: {exc}") from None
        if path in statuses:
            raise CocoFormatError(f"{where}: file_name {name!r} is listed twice")
        width = height = None
        if "width" in im or "height" in im:
            width, height = _int_id(im, "width", where), _int_id(im, "height", where)
            if width <= 0 or height <= 0:
                raise CocoFormatError(f"{where}: width and height must be positive")
        status_raw = im.get("annotator_status")
        try:
            statuses[path] = ImageStatus(status_raw) if status_raw else ImageStatus.UNLABELLED
        except ValueError:
            raise CocoFormatError(f"{where}: unknown annotator_status {status_raw!r}") from None
        images.append(ImageRecord(path, width, height))
        id_to_path[image_id] = path

    instances: dict[str, list[Instance]] = {}
    seen_ann: set[int] = set()
    for i, ann in enumerate(raw_anns):
        where = f"{source}: annotations[{i}]"
        ann_id = _int_id(ann, "id", where)
        where = f"{source}: annotation id {ann_id}"
        if ann_id in seen_ann:
            raise CocoFormatError(f"{where}: duplicate annotation id {ann_id}")
        seen_ann.add(ann_id)
        image_id = _int_id(ann, "image_id", where)
        if image_id not in id_to_path:
            raise CocoFormatError(f"{where}: unknown image_id {image_id}")
        cat_id = _int_id(ann, "category_id", where)
        if cat_id not in known_cats:
            raise CocoFormatError(f"{where}: unknown category_id {cat_id}")
        if cat_id != cat["id"]:
            continue
        kps = _parse_keypoints(ann, k, where)
        # a box we derived from the keypoints is not a user box: derive it again on export
        bbox = None if ann.get("bbox_source") == "keypoints" else _parse_bbox(ann, where)
        if bbox is None and not any(kp.labelled for kp in kps):
            continue  # neither a box nor a labelled keypoint: nothing to keep
        score = ann.get("bbox_score")
        if score is not None:
            score = _number(score, f"{where}, bbox_score")
            if not 0 <= score <= 1 or bbox is None:
                raise CocoFormatError(f"{where}: bbox_score {score} needs a box and [0, 1]")
        instances.setdefault(id_to_path[image_id], []).append(
            Instance(kps, bbox, score, ann_id if ann_id >= 1 else None)
        )

    annotations = {}
    for path, insts in instances.items():
        status = statuses[path]
        if status == ImageStatus.UNLABELLED:
            # labelled by another tool: a reference; only boxes to fill: still a target
            if any(inst.num_labelled for inst in insts):
                status = ImageStatus.REFERENCE
        annotations[path] = ImageAnnotation(tuple(insts), status)
    try:
        return Project(str(image_root), images, schema, annotations)
    except ValueError as exc:
        raise CocoFormatError(f"{source}: {exc}") from None


def import_coco(
    path: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    category: str | int | None = None,
) -> Project:
    """Read a COCO keypoints file into a new project.

    ``image_root`` defaults to the folder holding the COCO file.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise CocoFormatError(f"{path}: not a regular file; not read")
        with open(path, "rb") as f:
            raw = f.read(MAX_INPUT_BYTES + 1)
    except FileNotFoundError:
        raise CocoFormatError(f"{path}: file not found") from None
    except OSError as exc:
        raise CocoFormatError(f"{path}: cannot be read ({exc})") from None
    if len(raw) > MAX_INPUT_BYTES:
        raise CocoFormatError(f"{path}: larger than {MAX_INPUT_BYTES >> 30} GiB; not read")
    try:
        doc = loads_strict(raw, str(path), CocoFormatError)
    except CocoFormatError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise CocoFormatError(f"{path}: not valid JSON ({reason})") from None
    root = Path(image_root) if image_root is not None else path.parent
    try:
        return coco_to_project(doc, root.resolve(), str(path), category)
    except CocoFormatError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError,
            RecursionError) as exc:  # anything else malformed: the same error type
        raise CocoFormatError(f"{path}: malformed content ({type(exc).__name__}: {exc})"
                              ) from None


def predictions_to_coco_results(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """COCO *results* list (for COCOeval) from an exported document: one entry per
    annotation, scored by the mean keypoint confidence (1.0 where none is known)."""
    results = []
    for ann in doc["annotations"]:
        scores = [s for s in ann.get("keypoint_scores") or [] if s is not None]
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "keypoints": list(ann["keypoints"]),
                "score": float(sum(scores) / len(scores)) if scores else 1.0,
            }
        )
    return results
