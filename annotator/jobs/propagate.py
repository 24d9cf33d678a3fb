"""Propagation job: transfer the references' keypoints to every other image.

Plain Python (no Qt): the GUI worker and the CLI call :func:`run_propagation` with a frozen
:class:`PropagateRequest` and a :class:`~annotator.jobs.progress.TaskState`. Predictions are
applied to the project on the caller's thread with :func:`apply_predictions`.

Rule for several references: every labelled instance of every reference image is matched to
each target (or target box) and, per keypoint, the most confident found match wins
(``annotator.matching.transfer.combine``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from annotator.domain.annotation import (
    Box,
    ImageAnnotation,
    ImageStatus,
    Instance,
    Keypoint,
    Origin,
    Visibility,
)
from annotator.domain.project import Project, ProjectSettings
from annotator.features.crop import CropRect, ImageCrop, keypoint_box
from annotator.io.images import ImageLoadError, load_image, resolve_image_path
from annotator.jobs.engine_factory import propagation_flip
from annotator.jobs.images import ImageLoader, load_targets
from annotator.jobs.progress import TaskState

if TYPE_CHECKING:
    from annotator.engine import Engine
    from annotator.matching.head import KeypointHead
    from annotator.matching.transfer import TransferResult

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ReferenceSpec:
    """A labelled instance: ``points`` (K, 2) original pixels, ``valid`` (K,) labelled flags,
    ``box`` its box (x, y, w, h), or None to use its labelled keypoints' box."""

    path: str
    points: tuple[tuple[float, float], ...]
    valid: tuple[bool, ...]
    box: Box | None = None


@dataclass(frozen=True)
class PropagateRequest:
    """Everything the job needs, copied out of the project (the worker never reads it).

    ``target_boxes`` lists, per target path that has boxes, the boxes to fill (one predicted
    instance each); a target without an entry is predicted as a whole image."""

    image_root: str
    references: tuple[ReferenceSpec, ...]
    targets: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    settings: ProjectSettings = field(default_factory=ProjectSettings)
    request_id: int = 0
    target_boxes: tuple[tuple[str, tuple[Box, ...]], ...] = ()

    @classmethod
    def from_project(
        cls, project: Project, targets: Sequence[str] | None = None, request_id: int = 0
    ) -> PropagateRequest:
        """References: every labelled instance of the reference and reviewed images.
        Targets (default): every image that is neither reviewed nor a reference; their
        instances' boxes are the boxes to fill."""
        refs = []
        for path in project.reference_paths():
            for inst in project.annotation(path).instances:
                if not inst.num_labelled:
                    continue
                refs.append(
                    ReferenceSpec(
                        path,
                        tuple((kp.x, kp.y) for kp in inst.keypoints),
                        tuple(kp.labelled for kp in inst.keypoints),
                        inst.bbox,
                    )
                )
        if targets is None:
            targets = project.paths_with_status(ImageStatus.UNLABELLED, ImageStatus.PREDICTED)
        boxes = []
        for path in targets:
            found = tuple(i.bbox for i in project.annotation(path).instances if i.bbox)
            if found:
                boxes.append((path, found))
        flip = project.schema.flip_pairs if propagation_flip(project.settings) else ()
        return cls(
            project.image_root, tuple(refs), tuple(targets), tuple(flip), project.settings,
            request_id, tuple(boxes),
        )


@dataclass(frozen=True)
class InstancePrediction:
    """One predicted instance: arrays of length K; ``box`` the target box it fills (x, y, w,
    h), None for a whole-image prediction."""

    points: np.ndarray
    confidence: np.ndarray
    found: np.ndarray
    needs_review: np.ndarray
    box: Box | None = None
    #: (K,) which produced each point (annotator.matching.combine.SOURCE_NAMES codes: 0 none,
    #: 1 zero-shot transfer, 2 the project's learned head); None: transfer only
    source: np.ndarray | None = None


@dataclass(frozen=True)
class Prediction:
    """Result for one target: arrays of length K for its first instance (``box`` the target
    box it fills, None for the whole image), ``others`` the instances of further boxes, or
    ``error`` when the image is unreadable."""

    path: str
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(0))
    found: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    needs_review: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    size: tuple[int, int] | None = None
    error: str | None = None
    box: Box | None = None
    others: tuple[InstancePrediction, ...] = ()
    source: np.ndarray | None = None

    def instances(self) -> list[InstancePrediction]:
        """Every predicted instance, the first one included (empty for a failed image)."""
        if self.error is not None:
            return []
        first = InstancePrediction(self.points, self.confidence, self.found,
                                   self.needs_review, self.box, self.source)
        return [first, *self.others]

    @classmethod
    def of_instances(cls, path: str, instances: Sequence[InstancePrediction],
                     size: tuple[int, int] | None) -> Prediction:
        first, *rest = instances
        return cls(path, first.points, first.confidence, first.found, first.needs_review,
                   size, None, first.box, tuple(rest), first.source)


class _Feed:
    """An iterator the caller fills one item at a time: it drives an engine generator that
    keeps its references' descriptors across targets of different kinds."""

    def __init__(self) -> None:
        self.items: deque[object] = deque()

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> object:
        if not self.items:
            raise StopIteration
        return self.items.popleft()


class _Transfer:
    """Lazily started ``engine.iter_transfer`` over a :class:`_Feed`; one result per call."""

    def __init__(self, engine: Engine, refs: list, flip_pairs: tuple, flip: bool) -> None:
        self.feed = _Feed()
        self.refs = refs
        self.gen: Iterator | None = None
        self.args = (engine, flip_pairs, flip)

    def __call__(self, target: object) -> TransferResult:
        if not self.refs:
            raise ValueError("no reference keypoint lies inside its reference crop")
        if self.gen is None:
            engine, pairs, flip = self.args
            self.gen = engine.iter_transfer(self.refs, self.feed, pairs, flip=flip)
        self.feed.items.append(target)
        return next(self.gen)


def reference_crop(image: np.ndarray, spec: ReferenceSpec, margin: float
                   ) -> tuple[ImageCrop, np.ndarray, np.ndarray] | None:
    """The reference instance as (crop, points in crop pixels (K, 2), valid (K,)): its box,
    else the box of its labelled keypoints (at least a tenth of the image's longest side),
    enlarged by ``margin``. None when no labelled point lies in the crop."""
    h, w = image.shape[:2]
    points = np.asarray(spec.points, float).reshape(-1, 2)
    valid = np.asarray(spec.valid, bool)
    box = spec.box  # the crop's object box only when drawn: a keypoint box frames differently
    if box is not None:
        rect = CropRect.around(box, w, h, margin)
    else:
        kbox = keypoint_box(points[valid])
        if kbox is None:
            return None
        rect = CropRect.around(kbox, w, h, margin, min_side=max(16, round(0.1 * max(w, h))))
    valid = valid & rect.contains(points)
    if not valid.any():
        return None
    return ImageCrop.of(image, rect, box), rect.to_crop(points), valid


def _instance(result: TransferResult, rect: CropRect | None, box: Box | None
              ) -> InstancePrediction:
    points = np.asarray(result.points, float).reshape(-1, 2)
    found = np.asarray(result.found, bool).copy()
    if rect is not None:  # crop pixels -> image pixels
        points = rect.to_image(points)
    return InstancePrediction(points, np.asarray(result.confidence, float), found,
                              np.asarray(result.needs_review, bool), box)


def run_propagation(
    request: PropagateRequest,
    engine: Engine,
    state: TaskState,
    loader: ImageLoader = load_image,
    head: KeypointHead | None = None,
) -> Iterator[Prediction]:
    """Yield one :class:`Prediction` per target, in order; raises ``Cancelled`` on cancel
    (between images and between the boxes of one image) and ``ValueError`` when no reference
    is usable. With the project's learned ``head`` (annotator.jobs.train.project_head), each
    instance's points combine head and transfer per keypoint (annotator.matching.combine);
    the prediction's ``source`` says which produced each point.

    Per-instance rule (DESIGN.md section 10): a target with boxes gets one instance per box;
    with ``settings.crop == "bbox"`` each box, enlarged by ``settings.crop_margin`` and
    clipped, is cropped and matched against every reference instance's crop (the keypoints of
    all reference instances compete per keypoint, as several references do); a point outside
    its target crop is not found. A target without boxes is matched as a whole image against
    the whole reference images (today's rule, one instance)."""
    if not request.references:
        raise ValueError("no reference image: label at least one image first")
    settings = request.settings
    total = len(request.targets)
    state.set_progress(0, total, "loading references")
    images: dict[str, np.ndarray | None] = {}
    unreadable: list[str] = []
    whole_refs, crop_refs = [], []
    for spec in request.references:
        if spec.path not in images:
            try:
                images[spec.path] = loader(resolve_image_path(request.image_root, spec.path))
            except (ImageLoadError, ValueError) as exc:
                log.warning("reference %s skipped: %s", spec.path, exc)
                unreadable.append(f"{spec.path}: {exc}")
                images[spec.path] = None
        image = images[spec.path]
        if image is None:
            continue
        whole_refs.append((image, np.asarray(spec.points, float), np.asarray(spec.valid, bool)))
        crop = reference_crop(image, spec, settings.crop_margin)
        if crop is not None:
            crop_refs.append(crop)
    if not whole_refs:
        shown = "; ".join(unreadable[:5]) + ("; ..." if len(unreadable) > 5 else "")
        raise ValueError(f"none of the reference images can be read ({shown})")
    boxes_of = dict(request.target_boxes)
    flip = propagation_flip(settings) and bool(request.flip_pairs)
    whole = _Transfer(engine, whole_refs, request.flip_pairs, flip)
    matcher = engine  # the engine of crop transfer: the preset's canvas, or a coarser one
    if settings.crop == "bbox" and settings.crop_canvas == "auto":
        from annotator.references import crop_engine

        matcher = crop_engine(engine, [crop for crop, _, _ in crop_refs])
        if matcher is not engine:
            log.info("large reference crops: crops matched at %d px",
                     matcher.config.canvas_size)
    cropped = _Transfer(matcher, crop_refs, request.flip_pairs, flip)
    rules = _Rules(matcher, settings, request, images, whole_refs, crop_refs)

    for done, path, image in load_targets(request.targets, request.image_root, loader, state):
        if isinstance(image, str):
            yield Prediction(path, error=image)
            continue
        h, w = image.shape[:2]
        boxes = boxes_of.get(path, ())
        found_boxes: list[Box] = []
        if not boxes and settings.boxes == "auto" and settings.crop == "bbox":
            found_boxes = rules.find_boxes(image)
        crop_boxes: list[Box | None]  # the box whose crop each instance was matched in
        if not boxes and not found_boxes:
            preds = [_instance(rules.whole(image) or whole(image), None, None)]
            crop_boxes = [None]
        elif settings.crop == "bbox":
            preds = []
            recorded = boxes or (found_boxes if len(found_boxes) > 1 else [None])
            crop_boxes = list(boxes or found_boxes)
            for box, rbox in zip(crop_boxes, recorded):
                state.check()
                rect = CropRect.around(box, w, h, settings.crop_margin)
                crop = ImageCrop.of(image, rect, box)
                result = (rules.crop(crop) if boxes else rules.found_crop(crop)) \
                    or cropped(crop)
                preds.append(_inside(_instance(result, rect, rbox), rect))
        else:  # whole-image transfer; each box keeps what falls in its crop
            result = rules.whole(image) or whole(image)
            preds = [_inside(_instance(result, None, box),
                             CropRect.around(box, w, h, settings.crop_margin)) for box in boxes]
            crop_boxes = [None] * len(preds)
        if head is not None:
            preds = [_with_head(pred, head, engine, image, box, settings)
                     for pred, box in zip(preds, crop_boxes)]
        state.set_progress(done, total, path)
        yield Prediction.of_instances(path, preds, (w, h))


class _Rules:
    """The reference rules chosen by the settings, built lazily on first use: keypoint
    prototypes (``settings.combine == "prototype"``; None from ``whole``/``crop`` means "use
    the per-reference transfer") and detector-free boxes (``settings.boxes == "auto"``)."""

    def __init__(self, engine: Engine, settings: ProjectSettings, request: PropagateRequest,
                 images: dict[str, np.ndarray | None], whole_refs: list, crop_refs: list
                 ) -> None:
        self.engine, self.settings = engine, settings
        self.request, self.images = request, images
        self.whole_refs, self.crop_refs = whole_refs, crop_refs
        self._protos: dict[str, object] = {}
        self._search: object | None = None
        self._found_refs: list | None = None  # reference crops framed by the found boxes

    def _transfer(self, kind: str, refs: list, target: object) -> TransferResult | None:
        if self.settings.combine != "prototype" or not refs:
            return None
        from annotator import references as rules

        if kind not in self._protos:
            params = rules.PrototypeParams(review_threshold=self.settings.review_threshold)
            weight = self.settings.prior_weight
            if weight is not None:
                params = replace(params, prior_weight=weight)
            # one reference: a prior only between drawn boxes (a found box is framed by
            # features, too loosely to place a keypoint by its position alone)
            one = rules.ONE_REFERENCE if kind == "crop" else (0.0, None)
            protos, params = rules.prototype_rule(self.engine, refs, params, weight is None,
                                                  one)
            if weight is None:
                log.info("%s prototypes: spatial prior weight %g, layout margin %s "
                         "(leave-one-out over %d references)", kind, params.prior_weight,
                         params.layout_margin, len(refs))
            self._protos[kind] = (protos, params)
        protos, params = self._protos[kind]
        return rules.prototype_transfer(self.engine, protos, target, params)

    def whole(self, image: np.ndarray) -> TransferResult | None:
        return self._transfer("whole", self.whole_refs, image)

    def crop(self, crop: ImageCrop) -> TransferResult | None:
        return self._transfer("crop", self.crop_refs, crop)

    def found_crop(self, crop: ImageCrop) -> TransferResult | None:
        """Transfer to the crop of a found box, from reference crops framed the same way: the
        box found in each reference image around its instance (the references' own keypoint
        boxes frame the object differently from a box found by features)."""
        if self._found_refs is None and self.settings.combine == "prototype":
            self._found_refs = self._framed_refs()
        return self._transfer("found", self._found_refs or [], crop)

    def _framed_refs(self) -> list:
        margin = self.settings.crop_margin
        refs = []
        for spec in self.request.references:
            image = self.images.get(spec.path)
            if image is None:
                continue
            h, w = image.shape[:2]
            pts = np.asarray(spec.points, float).reshape(-1, 2)
            valid = np.asarray(spec.valid, bool)
            best, best_box, inside = None, None, 0
            for box in self.find_boxes(image):
                rect = CropRect.around(box, w, h, margin)
                n = int((rect.contains(pts) & valid).sum())
                if n > inside:
                    best, best_box, inside = rect, box, n
            if best is None or inside < valid.sum():  # the box misses a labelled point
                crop = reference_crop(image, spec, margin)
                if crop is not None:
                    refs.append(crop)
                continue
            refs.append((ImageCrop.of(image, best, best_box), best.to_crop(pts),
                         valid & best.contains(pts)))
        return refs

    def find_boxes(self, image: np.ndarray) -> list[Box]:
        from annotator import references as rules

        if self._search is None:
            by_image: dict[str, list[Box]] = {}
            for spec in self.request.references:
                if self.images.get(spec.path) is None:
                    continue
                pts = np.asarray(spec.points, float).reshape(-1, 2)
                box = spec.box or keypoint_box(pts[np.asarray(spec.valid, bool)])
                if box is not None:
                    by_image.setdefault(spec.path, []).append(box)
            refs = [(self.images[p], b) for p, b in by_image.items()]
            try:
                self._search = rules.object_search(self.engine, refs)
            except ValueError as exc:
                log.warning("no automatic boxes: %s", exc)
                self._search = False
        if self._search is False:
            return []
        return rules.find_boxes(self.engine, self._search, image)


def _with_head(pred: InstancePrediction, head: KeypointHead, engine: Engine, image: np.ndarray,
               box: Box | None, settings: ProjectSettings) -> InstancePrediction:
    """``pred`` combined with the head's prediction in the same crop (or whole image)."""
    from annotator.jobs.head_predict import predict_in_box
    from annotator.matching.combine import combine_head_and_transfer

    points, confidence, found = predict_in_box(head, engine, image, box, settings.crop_margin)
    points = np.where(found[:, None], points, np.nan)
    both = combine_head_and_transfer(pred.points, pred.confidence, pred.found, points,
                                     np.where(found, confidence, np.nan),
                                     num_images=head.meta.get("num_images"))
    return replace(pred, points=both.points, confidence=both.confidence, found=both.found,
                   needs_review=both.confidence < settings.review_threshold,
                   source=both.source)


def _inside(pred: InstancePrediction, rect: CropRect) -> InstancePrediction:
    """``pred`` with points outside ``rect`` marked not found (NaN)."""
    found = pred.found & rect.contains(pred.points)
    points = pred.points.copy()
    points[~found] = np.nan
    return replace(pred, points=points, found=found)


def _keypoints(pred: InstancePrediction) -> tuple[Keypoint, ...]:
    kps = []
    for (x, y), conf, found in zip(pred.points, pred.confidence, pred.found):
        c = float(np.clip(conf, 0.0, 1.0)) if np.isfinite(conf) else 0.0
        if found and np.isfinite(x) and np.isfinite(y):
            kps.append(Keypoint(float(x), float(y), Visibility.VISIBLE, Origin.PREDICTED, c))
        else:  # not found: unlabelled (v = 0) for the user, with its (low) confidence
            kps.append(Keypoint(origin=Origin.PREDICTED, confidence=c))
    return tuple(kps)


def prediction_annotation(
    prediction: Prediction, num_keypoints: int
) -> ImageAnnotation | None:
    """The annotation a prediction stands for (one instance per predicted instance, with its
    target box), or None for a failed one."""
    if prediction.error is not None:
        return None
    instances = []
    for pred in prediction.instances():
        if len(pred.points) != num_keypoints:
            raise ValueError(
                f"prediction for {prediction.path!r} has {len(pred.points)} keypoints, "
                f"schema has {num_keypoints}"
            )
        instances.append(Instance(_keypoints(pred), pred.box))
    return ImageAnnotation(tuple(instances), ImageStatus.PREDICTED)


def _merge_keypoints(mine: Instance, predicted: Instance) -> Instance:
    kps = tuple(
        m if m.user_set else p for m, p in zip(mine.keypoints, predicted.keypoints)
    )
    return replace(mine, keypoints=kps)


def merge_prediction(old: ImageAnnotation, new: ImageAnnotation) -> ImageAnnotation:
    """``new`` predictions merged into ``old``: keypoints the user placed, moved or deleted
    keep their state, and so do boxes and instances the user made.

    Per-box predictions go to the instance with the same box; instances without a box and
    without any user work (an earlier whole-image prediction) are dropped once boxes exist. A
    whole-image prediction fills the first instance, and is not applied when the image has
    boxes by now (they are predicted on the next run)."""
    if not old.instances:
        return new
    if not new.instances or new.instances[0].bbox is None:  # whole-image prediction
        if any(inst.bbox is not None for inst in old.instances) or not new.instances:
            return replace(old, status=ImageStatus.PREDICTED)
        first = _merge_keypoints(old.instances[0], new.instances[0])
        return ImageAnnotation((first, *old.instances[1:]), ImageStatus.PREDICTED)
    by_box = {inst.bbox: inst for inst in new.instances}
    had_boxes = any(inst.bbox is not None for inst in old.instances)
    out = []
    for inst in old.instances:
        if inst.bbox is not None:
            pred = by_box.pop(inst.bbox, None)
            out.append(inst if pred is None else _merge_keypoints(inst, pred))
        elif inst.user_set:
            out.append(inst)
    if not had_boxes:  # the boxes came with the request (a script): add their instances
        out.extend(by_box.values())
    return ImageAnnotation(tuple(out), ImageStatus.PREDICTED)


def apply_predictions(
    project: Project,
    predictions: Sequence[Prediction],
    description: str = "Propagate",
    merge_key: object | None = None,
) -> list[str]:
    """Store predictions as one undoable step (batches with the same ``merge_key`` grow one
    step while it is the newest; the redo history is kept). Images the user reviewed or made
    references are left alone; on other images only keypoints the user has not touched
    change. Returns the paths updated."""
    changes = {}
    for pred in predictions:
        ann = prediction_annotation(pred, len(project.schema))
        if ann is None:
            continue
        if project.status(pred.path) in (ImageStatus.REVIEWED, ImageStatus.REFERENCE):
            continue
        ann = merge_prediction(project.annotation(pred.path), ann)
        if pred.size is not None and project.image(pred.path).width is None:
            project.set_image_size(pred.path, *pred.size)
        changes[pred.path] = ann
    if changes:
        project.set_annotations(changes, description, merge_key=merge_key, keep_redo=True)
    return list(changes)
