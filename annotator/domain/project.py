"""The project: image list, schema, annotations, settings and the undo history."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from annotator.domain.annotation import (
    Box,
    ImageAnnotation,
    ImageStatus,
    Instance,
    Keypoint,
    Origin,
    Visibility,
)
from annotator.domain.history import Command, UndoStack
from annotator.domain.paths import normalize_relpath
from annotator.domain.schema import IndexMap, KeypointSchema

EMPTY_ANNOTATION = ImageAnnotation()


@dataclass(frozen=True)
class ImageRecord:
    """One image of the project; ``path`` is relative to the image root (POSIX).

    A frame of a video has ``video`` (its path relative to the image root, or absolute),
    ``frame`` (0-based index) and ``time_s`` (timestamp); its ``path`` is then a synthetic
    name such as ``<video stem>/img0123.png`` (what a DeepLabCut export writes), decoded on
    demand rather than read from disk."""

    path: str
    width: int | None = None
    height: int | None = None
    video: str | None = None
    frame: int | None = None
    time_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", normalize_relpath(self.path))
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"image {self.path!r}: {name} {value!r} must be a positive int")
        if (self.video is None) != (self.frame is None):
            raise ValueError(f"image {self.path!r}: a video frame needs both video and frame")
        if self.video is not None and (not isinstance(self.video, str) or not self.video):
            raise ValueError(f"image {self.path!r}: video {self.video!r} must be a path")
        f = self.frame
        if f is not None and (isinstance(f, bool) or not isinstance(f, int) or f < 0):
            raise ValueError(f"image {self.path!r}: frame {f!r} must be an int >= 0")
        t = self.time_s
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))
                              or not math.isfinite(t) or t < 0):
            raise ValueError(f"image {self.path!r}: time {t!r} must be a finite number >= 0")


@dataclass(frozen=True)
class ProjectSettings:
    """Engine settings stored with the project."""

    sd_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    dino_model: str = "facebook/dinov2-base"
    preset: str = "paper"
    #: None: the preset's own value (annotator.jobs.engine_factory resolves presets)
    fusion: str | None = None
    device: str = "auto"
    dtype: str = "fp32"
    #: None: the preset's own (propagation flips with the schema's partners, DIY-SC does not)
    flip: bool | None = None
    #: None: the preset's own: hard argmax for paper and fast (on real DINOv2 features the
    #: window soft-argmax moves points off exact matches: BENCHMARKS.md "Real images"), the
    #: method's window for geoaware and diy; True: the preset's window
    soft_argmax: bool | None = None
    review_threshold: float = 0.5
    cache_dir: str = ""
    cache_cap_gb: float = 20.0
    # instances (DESIGN.md section 10): "bbox" transfers between box crops, "none" whole images
    crop: str = "bbox"
    crop_margin: float = 0.15
    # zero-shot box detection (text-prompted, open vocabulary); prompt "" = the schema's name
    detector_model: str = "google/owlv2-base-patch16-ensemble"
    detect_prompt: str = ""
    detect_threshold: float = 0.2
    detect_max_boxes: int = 10
    #: CleanDIFT-style UNet state dict (local .safetensors or owner/repo/file); "" = none
    sd_unet: str = ""
    #: local DIY-SC adapter checkpoint for the diy preset; "" = download on first use
    diy_checkpoint: str = ""
    #: targets without boxes: "auto" finds the labelled kind of object from the references'
    #: features (no detector) and transfers between crops; "none" matches whole images
    boxes: str = "auto"
    #: several references: "prototype" (per keypoint the mean of the references' descriptors,
    #: one match) or "best" (each reference matched, the most confident wins)
    combine: str = "prototype"
    #: learn from reviewed images: a per-project keypoint head, used by propagation once it
    #: was trained on enough reviewed images (annotator.jobs.train)
    use_head: bool = True
    #: weight of the box-normalised spatial prior of the prototype rule (0 = off; a set weight
    #: comes with the layout rule); None: weight and rule chosen per run by leaving each
    #: reference out (annotator.references.prototype_rule; one: 0.1 between drawn boxes)
    prior_weight: float | None = None
    #: canvas of crop transfer: "auto" matches large reference crops (median longest side
    #: >= 224 px) at the fast preset's canvas with the same models, small ones at the
    #: preset's (annotator.references.crop_engine); "preset": always the preset's canvas
    crop_canvas: str = "auto"

    def __post_init__(self) -> None:
        if self.crop_canvas not in ("auto", "preset"):
            raise ValueError(f"crop_canvas must be 'auto' or 'preset', got {self.crop_canvas!r}")
        if self.boxes not in ("auto", "none"):
            raise ValueError(f"boxes must be 'auto' or 'none', got {self.boxes!r}")
        if self.combine not in ("prototype", "best"):
            raise ValueError(f"combine must be 'prototype' or 'best', got {self.combine!r}")
        w = self.prior_weight
        if w is not None and not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ValueError(f"prior_weight must be None or a finite number >= 0, got {w!r}")
        if self.crop not in ("bbox", "none"):
            raise ValueError(f"crop must be 'bbox' or 'none', got {self.crop!r}")
        if not 0.0 <= self.crop_margin <= 2.0:
            raise ValueError(f"crop margin {self.crop_margin} outside [0, 2]")
        if not 0.0 <= self.detect_threshold <= 1.0:
            raise ValueError(f"detection threshold {self.detect_threshold} outside [0, 1]")
        if self.detect_max_boxes < 1:
            raise ValueError(f"max boxes {self.detect_max_boxes} must be >= 1")
        cap = self.cache_cap_gb
        if not (isinstance(cap, (int, float)) and math.isfinite(cap) and cap > 0):
            raise ValueError(f"cache_cap_gb must be a number > 0 (GB), got {cap!r}")
        t = self.review_threshold
        if not (isinstance(t, (int, float)) and math.isfinite(t)):
            raise ValueError(f"review_threshold must be a finite number, got {t!r}")


class Project:
    """Mutable project state. Every edit goes through the undo stack and notifies listeners.

    Listeners receive the set of image paths whose annotation changed (empty set for
    schema/settings changes that affect everything).
    """

    def __init__(
        self,
        image_root: str,
        images: Iterable[ImageRecord],
        schema: KeypointSchema,
        annotations: Mapping[str, ImageAnnotation] | None = None,
        settings: ProjectSettings | None = None,
    ) -> None:
        self.image_root = str(image_root)
        self._images: list[ImageRecord] = []
        self._index: dict[str, int] = {}
        self._images_version = 0  # bumped by every change of the image list
        for rec in images:
            self._add_record(rec)
        self.schema = schema
        self._annotations: dict[str, ImageAnnotation] = {}
        for path, ann in (annotations or {}).items():
            path = normalize_relpath(path)
            if path not in self._index:
                raise ValueError(f"annotation for {path!r}, which is not in the image list")
            self._check_annotation(path, ann)
            self._annotations[path] = ann
        self.settings = settings or ProjectSettings()
        self.history = UndoStack()
        self.revision = 0
        self._listeners: list[Callable[[frozenset[str]], None]] = []

    @classmethod
    def of_checked_parts(
        cls,
        image_root: str,
        images: Sequence[ImageRecord],
        schema: KeypointSchema,
        annotations: Mapping[str, ImageAnnotation],
        settings: ProjectSettings,
    ) -> Project:
        """A project of parts copied from a valid project (a snapshot of one): the same as
        ``Project(...)`` without checking every annotation again (0.4 s of one thread at
        100,000 x 3 images, competing with the GUI thread for the GIL)."""
        project = cls(image_root, (), schema, None, settings)
        project._images = list(images)
        project._images_version = 1
        project._index = {rec.path: i for i, rec in enumerate(project._images)}
        if len(project._index) != len(project._images):
            raise ValueError("an image is listed twice")
        # a dict or a read-only view of one is cloned in one step; dict() of a view walks it
        # key by key in one C call that holds the GIL (25-35 ms at 100,000 images)
        project._annotations = (annotations.copy()
                                if isinstance(annotations, (dict, MappingProxyType))
                                else dict(annotations))
        return project

    # ------------------------------------------------------------- images
    def _add_record(self, rec: ImageRecord) -> None:
        if rec.path in self._index:
            raise ValueError(f"image {rec.path!r} is listed twice")
        self._index[rec.path] = len(self._images)
        self._images.append(rec)
        self._images_version += 1

    @property
    def images(self) -> tuple[ImageRecord, ...]:
        return tuple(self._images)

    @property
    def images_version(self) -> int:
        """A number that changes whenever an image record is added or replaced (a cheap
        "has the image list changed since": copying 100,000 records to compare them costs
        milliseconds)."""
        return self._images_version

    def __len__(self) -> int:
        return len(self._images)

    def image(self, path: str) -> ImageRecord:
        return self._images[self._index_of(path)]

    def index_of(self, path: str) -> int:
        return self._index_of(path)

    def _index_of(self, path: str) -> int:
        try:
            return self._index[path]
        except KeyError:
            raise KeyError(f"image {path!r} is not in the project") from None

    def add_images(self, records: Iterable[ImageRecord]) -> list[str]:
        """Add the images not in the project yet (found in the folder later), at the end;
        returns their paths. Not an undoable edit: the files are there either way."""
        added = []
        for rec in records:
            if rec.path not in self._index:
                self._add_record(rec)
                added.append(rec.path)
        if added:
            self._changed(frozenset())
        return added

    def set_image_size(self, path: str, width: int, height: int) -> None:
        """Record the size of an image once it is known (not an undoable edit)."""
        i = self._index_of(path)
        self._images[i] = replace(self._images[i], width=int(width), height=int(height))
        self._images_version += 1

    # -------------------------------------------------------- annotations
    def annotation(self, path: str) -> ImageAnnotation:
        self._index_of(path)
        return self._annotations.get(path, EMPTY_ANNOTATION)

    def annotations(self) -> dict[str, ImageAnnotation]:
        """Copy of all non-empty annotations by path."""
        return dict(self._annotations)

    def status(self, path: str) -> ImageStatus:
        return self.annotation(path).status

    def paths_with_status(self, *statuses: ImageStatus) -> list[str]:
        wanted = set(statuses)
        return [r.path for r in self._images if self.status(r.path) in wanted]

    def has_references(self) -> bool:
        """Whether :meth:`reference_paths` is not empty (stops at the first reference; only
        the annotated images are looked at)."""
        usable = (ImageStatus.REFERENCE, ImageStatus.REVIEWED)
        return any(a.status in usable and a.has_labels for a in self._annotations.values())

    def reference_paths(self) -> list[str]:
        """Images usable as references: marked reference or reviewed, with labels (in the
        image list's order; only the annotated images are looked at)."""
        usable = (ImageStatus.REFERENCE, ImageStatus.REVIEWED)
        found = [path for path, a in self._annotations.items()
                 if a.status in usable and a.has_labels]
        return sorted(found, key=self._index.__getitem__)

    def _check_annotation(self, path: str, ann: ImageAnnotation) -> None:
        k = len(self.schema)
        for i, inst in enumerate(ann.instances):
            if len(inst.keypoints) != k:
                raise ValueError(
                    f"image {path!r} instance {i}: {len(inst.keypoints)} keypoints, schema has {k}"
                )

    def _store(self, changes: Mapping[str, ImageAnnotation]) -> None:
        for path, ann in changes.items():
            if ann == EMPTY_ANNOTATION:
                self._annotations.pop(path, None)
            else:
                self._annotations[path] = ann
        self._changed(frozenset(changes))

    def set_annotations(
        self,
        changes: Mapping[str, ImageAnnotation],
        description: str,
        merge_key: object | None = None,
        keep_redo: bool = False,
    ) -> None:
        """Replace the annotations of several images as one undoable step.

        While the newest step has the same ``merge_key`` (a drag, the batches of one
        propagation), the change folds into it: undo then restores every image it touched
        to its state before the first change. ``keep_redo`` keeps the redo history."""
        for path, ann in changes.items():
            self._index_of(path)
            self._check_annotation(path, ann)
        old = {p: self.annotation(p) for p in changes}
        new = dict(changes)
        top = self.history.top
        if merge_key is not None and top is not None and top.merge_key == merge_key:
            top_old, top_new = top.payload  # type: ignore[misc]
            old = {**old, **top_old}  # the state before the first change wins
            new = {**top_new, **new}  # the latest change wins
            # the history first, so listeners notified by the store see the folded step
            self.history.replace_top(self._annotation_command(description, old, new, merge_key))
            try:
                self._store(changes)
            except BaseException:
                self.history.replace_top(top)
                raise
            return
        self.history.push(self._annotation_command(description, old, new, merge_key), keep_redo)

    def _annotation_command(
        self,
        description: str,
        old: dict[str, ImageAnnotation],
        new: dict[str, ImageAnnotation],
        merge_key: object | None,
    ) -> Command:
        return Command(
            description, lambda: self._store(new), lambda: self._store(old), merge_key,
            payload=(old, new),
        )

    def set_annotation(
        self, path: str, ann: ImageAnnotation, description: str, merge_key: object | None = None
    ) -> None:
        self.set_annotations({path: ann}, description, merge_key)

    def set_keypoint(
        self,
        path: str,
        index: int,
        keypoint: Keypoint,
        instance: int = 0,
        description: str | None = None,
        merge_key: object | None = None,
        make_reference: bool = True,
    ) -> None:
        """Set keypoint ``index`` of ``instance`` (created if it is the next one).

        ``make_reference``: a labelled keypoint on an unlabelled image makes it a reference
        (scripts labelling references); the GUI passes False and marks references
        explicitly (:meth:`set_status`)."""
        if not 0 <= index < len(self.schema):
            raise IndexError(f"keypoint index {index} outside 0..{len(self.schema) - 1}")
        ann = self.annotation(path)
        if instance < len(ann.instances):
            inst = ann.instances[instance]
        elif instance == len(ann.instances):
            inst = Instance.empty(len(self.schema))
        else:
            raise IndexError(f"image {path!r} has no instance {instance}")
        new = ann.with_instance(instance, inst.with_keypoint(index, keypoint))
        if make_reference and new.status == ImageStatus.UNLABELLED and keypoint.labelled:
            new = replace(new, status=ImageStatus.REFERENCE)
        name = self.schema.keypoints[index]
        self.set_annotation(path, new, description or f"Edit {name}", merge_key)

    def move_keypoint(
        self,
        path: str,
        index: int,
        x: float,
        y: float,
        instance: int = 0,
        drag_id: object = None,
        make_reference: bool = True,
    ) -> None:
        """Place keypoint ``index`` at (x, y); a prediction becomes reviewed.
        ``make_reference`` as in :meth:`set_keypoint`."""
        ann = self.annotation(path)
        kp = (
            ann.instances[instance].keypoints[index]
            if instance < len(ann.instances)
            else Keypoint()
        )
        key = ("move", path, instance, index, drag_id) if drag_id is not None else None
        self.set_keypoint(
            path, index, kp.moved(x, y), instance,
            f"{'Move' if kp.labelled else 'Place'} {self.schema.keypoints[index]}",
            merge_key=key, make_reference=make_reference,
        )

    def set_visibility(self, path: str, index: int, v: Visibility, instance: int = 0) -> None:
        """Set COCO visibility; v=0 clears the keypoint."""
        ann = self.annotation(path)
        if instance >= len(ann.instances):
            raise IndexError(f"image {path!r} has no instance {instance}")
        kp = ann.instances[instance].keypoints[index]
        v = Visibility(v)
        if v == Visibility.UNLABELLED:
            # a prediction the user deleted stays "reviewed", so propagation keeps it deleted
            reviewed = kp.origin in (Origin.PREDICTED, Origin.REVIEWED)
            new = Keypoint(origin=Origin.REVIEWED if reviewed else Origin.MANUAL)
        else:
            origin = Origin.REVIEWED if kp.origin == Origin.PREDICTED else kp.origin
            new = replace(kp, v=v, origin=origin)
        self.set_keypoint(
            path, index, new, instance, f"Set {self.schema.keypoints[index]} visibility {int(v)}"
        )

    # ---------------------------------------------------------- instances
    def next_annotation_id(self) -> int:
        """An annotation id no instance of the project uses yet (max + 1)."""
        ids = [
            inst.ann_id
            for ann in self._annotations.values()
            for inst in ann.instances
            if inst.ann_id is not None
        ]
        return max(ids, default=0) + 1

    def add_instance(self, path: str, bbox: Box | None = None) -> int:
        """Append an empty instance (with ``bbox`` if given) as one undoable step; returns
        its index."""
        ann = self.annotation(path)
        inst = replace(
            Instance.empty(len(self.schema)), bbox=bbox, ann_id=self.next_annotation_id()
        )
        index = len(ann.instances)
        new = ann.with_instance(index, inst)  # a box to fill: the image stays a target
        self.set_annotation(path, new, "Add instance" if bbox is None else "Draw box")
        return index

    def delete_instance(self, path: str, index: int) -> None:
        ann = self.annotation(path)
        if not 0 <= index < len(ann.instances):
            raise IndexError(f"image {path!r} has no instance {index}")
        new = ann.without_instance(index)
        if not new.instances and new.status != ImageStatus.REVIEWED:
            new = replace(new, status=ImageStatus.UNLABELLED)
        self.set_annotation(path, new, "Delete instance")

    def set_instance_box(
        self, path: str, index: int, bbox: Box | None, drag_id: object = None
    ) -> None:
        """Set (or with None remove) the box of ``instance``; consecutive calls with the same
        ``drag_id`` form one undo step. A detected box becomes the user's."""
        ann = self.annotation(path)
        if not 0 <= index < len(ann.instances):
            raise IndexError(f"image {path!r} has no instance {index}")
        key = ("box", path, index, drag_id) if drag_id is not None else None
        new = ann.with_instance(index, ann.instances[index].with_box(bbox))
        self.set_annotation(path, new, "Edit box" if bbox else "Remove box", merge_key=key)

    def set_status(self, path: str, status: ImageStatus) -> None:
        ann = self.annotation(path)
        if status == ImageStatus.REVIEWED:
            insts = tuple(
                replace(
                    inst,
                    keypoints=tuple(
                        replace(kp, origin=Origin.REVIEWED)  # accepted as is, found or not
                        if kp.origin == Origin.PREDICTED
                        else kp
                        for kp in inst.keypoints
                    ),
                )
                for inst in ann.instances
            )
            # accepting the image accepts its detected boxes too
            insts = tuple(replace(i, box_score=None) for i in insts)
            ann = replace(ann, instances=insts)
        self.set_annotation(path, replace(ann, status=status), f"Mark {status.value}")

    # ----------------------------------------------------------- schema
    def set_schema(self, schema: KeypointSchema, index_map: IndexMap | None = None) -> None:
        """Replace the schema; annotations are remapped with ``index_map`` (old -> new)."""
        if index_map is None:
            if len(schema) != len(self.schema):
                raise ValueError("a schema with a different keypoint count needs an index map")
            index_map = tuple(range(len(schema)))
        if len(index_map) != len(self.schema):
            raise ValueError(
                f"index map has {len(index_map)} entries, schema has {len(self.schema)}"
            )
        old_schema, old_ann = self.schema, dict(self._annotations)
        new_ann = {p: a.remapped(index_map, len(schema)) for p, a in old_ann.items()}

        def apply() -> None:
            self.schema = schema
            self._annotations = dict(new_ann)
            self._changed(frozenset())

        def revert() -> None:
            self.schema = old_schema
            self._annotations = dict(old_ann)
            self._changed(frozenset())

        self.history.push(Command("Edit schema", apply, revert))

    def set_settings(self, settings: ProjectSettings) -> None:
        """Replace engine settings (not part of the undo history)."""
        self.settings = settings
        self._changed(frozenset())

    # -------------------------------------------------------- undo/redo
    def undo(self) -> str | None:
        return self.history.undo()

    def redo(self) -> str | None:
        return self.history.redo()

    # -------------------------------------------------------- listeners
    def subscribe(self, listener: Callable[[frozenset[str]], None]) -> Callable[[], None]:
        """Call ``listener(changed_paths)`` after every change; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self, paths: frozenset[str]) -> None:
        self.revision += 1
        for listener in list(self._listeners):
            listener(paths)
