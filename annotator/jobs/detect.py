"""Zero-shot box detection job: find the objects of every target image with a text-prompted
detector (annotator.features.detect), as boxes to fill by propagation.

Plain Python (no Qt), like annotator.jobs.propagate: :func:`run_detection` yields one
:class:`BoxResult` per image; :func:`apply_detections` stores them on the caller's thread as
one undoable step. Detected boxes are predictions: each new instance carries its box score
(``Instance.box_score``) until the user moves, resizes or accepts it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from annotator.domain.annotation import Box, ImageAnnotation, ImageStatus, Instance
from annotator.domain.project import Project, ProjectSettings
from annotator.io.images import load_image
from annotator.jobs.images import ImageLoader, load_targets
from annotator.jobs.progress import TaskState

if TYPE_CHECKING:
    from annotator.features.detect import BoxDetector

log = logging.getLogger(__name__)

DUPLICATE_IOU = 0.7  # a detection overlapping a kept box this much is the same object


@dataclass(frozen=True)
class DetectRequest:
    """Images to search, the text prompt and the settings (threshold, max boxes, model)."""

    image_root: str
    targets: tuple[str, ...]
    prompt: str
    settings: ProjectSettings = field(default_factory=ProjectSettings)
    request_id: int = 0

    @classmethod
    def from_project(cls, project: Project, targets: Sequence[str] | None = None,
                     request_id: int = 0) -> DetectRequest:
        """Targets (default): every image that is neither reviewed nor a reference. Prompt:
        the detection prompt setting, else the schema's category name."""
        if targets is None:
            targets = project.paths_with_status(ImageStatus.UNLABELLED, ImageStatus.PREDICTED)
        prompt = project.settings.detect_prompt.strip() or project.schema.name
        return cls(project.image_root, tuple(targets), prompt, project.settings, request_id)


@dataclass(frozen=True)
class BoxResult:
    """Detections of one image: ``boxes`` (x, y, w, h) and ``scores``, best first; or
    ``error`` when the image cannot be read."""

    path: str
    boxes: tuple[Box, ...] = ()
    scores: tuple[float, ...] = ()
    size: tuple[int, int] | None = None
    error: str | None = None


def run_detection(request: DetectRequest, detector: BoxDetector, state: TaskState,
                  loader: ImageLoader = load_image) -> Iterator[BoxResult]:
    """Yield one :class:`BoxResult` per target in order; ``Cancelled`` between images."""
    from annotator.features.detect import DetectParams

    s = request.settings
    params = DetectParams(threshold=s.detect_threshold, max_boxes=s.detect_max_boxes)
    if not request.prompt.strip():
        raise ValueError("the detection prompt is empty: set one or name the schema")
    total = len(request.targets)
    state.set_progress(0, total, f"detecting '{request.prompt}'")
    for done, path, image in load_targets(request.targets, request.image_root, loader, state):
        if isinstance(image, str):
            yield BoxResult(path, error=image)
            continue
        det = detector.detect(image, request.prompt, params)
        state.set_progress(done, total, path)
        yield BoxResult(path, tuple(tuple(float(v) for v in b) for b in det.boxes),  # type: ignore[misc]
                        tuple(float(v) for v in det.scores), (image.shape[1], image.shape[0]))


def _iou(a: Box, b: Box) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def detections_annotation(old: ImageAnnotation, result: BoxResult, num_keypoints: int,
                          first_id: int) -> ImageAnnotation:
    """``old`` with the detections as new instances (ids from ``first_id``). Instances the
    user made or edited are kept; earlier unreviewed detections and instances without a box
    or user work (whole-image predictions) are replaced; a detection overlapping a kept box
    (IoU > 0.7) is left out."""
    kept = [inst for inst in old.instances if inst.user_set]
    boxes = [inst.bbox for inst in kept if inst.bbox is not None]
    added = []
    for box, score in zip(result.boxes, result.scores):
        if any(_iou(box, b) > DUPLICATE_IOU for b in boxes):
            continue
        boxes.append(box)
        added.append(Instance(Instance.empty(num_keypoints).keypoints, box,
                              float(np.clip(score, 0.0, 1.0)), first_id + len(added)))
    status = old.status
    if added and status == ImageStatus.UNLABELLED:
        status = ImageStatus.PREDICTED
    return replace(old, instances=(*kept, *added), status=status)


def apply_detections(project: Project, results: Sequence[BoxResult],
                     description: str = "Detect boxes", merge_key: object | None = None
                     ) -> list[str]:
    """Store detections as one undoable step (batches with the same ``merge_key`` fold into
    it). Reviewed and reference images are left alone. Returns the paths updated."""
    changes = {}
    next_id = project.next_annotation_id()
    for res in results:
        if res.error is not None:
            continue
        if project.status(res.path) in (ImageStatus.REVIEWED, ImageStatus.REFERENCE):
            continue
        old = project.annotation(res.path)
        new = detections_annotation(old, res, len(project.schema), next_id)
        next_id = max([next_id - 1, *(i.ann_id or 0 for i in new.instances)]) + 1
        if res.size is not None and project.image(res.path).width is None:
            project.set_image_size(res.path, *res.size)
        if new != old:
            changes[res.path] = new
    if changes:
        project.set_annotations(changes, description, merge_key=merge_key, keep_redo=True)
    return list(changes)


def build_detector(settings: ProjectSettings) -> BoxDetector:
    """The detector of ``settings`` on the settings' device (loads the weights now)."""
    from annotator.features.config import resolve_device, resolve_dtype
    from annotator.features.detect import load_detector

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device.split(":")[0])
    return load_detector(settings.detector_model, device, dtype)
