"""Propagation job: transfer the references' keypoints to every other image.

Plain Python (no Qt): the GUI worker and the CLI call :func:`run_propagation` with a frozen
:class:`PropagateRequest` and a :class:`~annotator.jobs.progress.TaskState`. Predictions are
applied to the project on the caller's thread with :func:`apply_predictions`.

Rule for several references: every reference is matched to each target and, per keypoint,
the most confident found match wins (``annotator.matching.transfer.combine``). Only the first
instance of a reference image is used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from annotator.domain.annotation import (
    ImageAnnotation,
    ImageStatus,
    Instance,
    Keypoint,
    Origin,
    Visibility,
)
from annotator.domain.project import Project, ProjectSettings
from annotator.io.images import ImageLoadError, load_image, resolve_image_path
from annotator.jobs.progress import TaskState

if TYPE_CHECKING:
    from annotator.engine import Engine

log = logging.getLogger(__name__)

ImageLoader = Callable[[Path], np.ndarray]


@dataclass(frozen=True)
class ReferenceSpec:
    """A labelled image: ``points`` (K, 2) original pixels, ``valid`` (K,) labelled flags."""

    path: str
    points: tuple[tuple[float, float], ...]
    valid: tuple[bool, ...]


@dataclass(frozen=True)
class PropagateRequest:
    """Everything the job needs, copied out of the project (the worker never reads it)."""

    image_root: str
    references: tuple[ReferenceSpec, ...]
    targets: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    settings: ProjectSettings = field(default_factory=ProjectSettings)
    request_id: int = 0

    @classmethod
    def from_project(
        cls, project: Project, targets: Sequence[str] | None = None, request_id: int = 0
    ) -> PropagateRequest:
        """References: reference and reviewed images with labels. Targets (default): every
        image that is neither reviewed nor a reference."""
        refs = []
        for path in project.reference_paths():
            inst = project.annotation(path).instances[0]
            refs.append(
                ReferenceSpec(
                    path,
                    tuple((kp.x, kp.y) for kp in inst.keypoints),
                    tuple(kp.labelled for kp in inst.keypoints),
                )
            )
        if targets is None:
            targets = project.paths_with_status(ImageStatus.UNLABELLED, ImageStatus.PREDICTED)
        flip = project.schema.flip_pairs if project.settings.flip else ()
        return cls(
            project.image_root, tuple(refs), tuple(targets), tuple(flip), project.settings,
            request_id,
        )


@dataclass(frozen=True)
class Prediction:
    """Result for one target: arrays of length K, or ``error`` when the image is unreadable."""

    path: str
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(0))
    found: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    needs_review: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    size: tuple[int, int] | None = None
    error: str | None = None


def run_propagation(
    request: PropagateRequest,
    engine: Engine,
    state: TaskState,
    loader: ImageLoader = load_image,
) -> Iterator[Prediction]:
    """Yield one :class:`Prediction` per target, in order; raises ``Cancelled`` on cancel
    (between images) and ``ValueError`` when no reference is usable."""
    if not request.references:
        raise ValueError("no reference image: label at least one image first")
    total = len(request.targets)
    state.set_progress(0, total, "loading references")
    refs = []
    unreadable = []
    for spec in request.references:
        try:
            image = loader(resolve_image_path(request.image_root, spec.path))
        except (ImageLoadError, ValueError) as exc:
            log.warning("reference %s skipped: %s", spec.path, exc)
            unreadable.append(f"{spec.path}: {exc}")
            continue
        refs.append((image, np.asarray(spec.points, float), np.asarray(spec.valid, bool)))
    if not refs:
        shown = "; ".join(unreadable[:5]) + ("; ..." if len(unreadable) > 5 else "")
        raise ValueError(f"none of the reference images can be read ({shown})")

    pending: list[Prediction] = []  # unreadable targets, reported in order
    loaded: list[tuple[str, tuple[int, int]]] = []

    def targets() -> Iterator[np.ndarray]:
        for path in request.targets:
            state.check()
            try:
                image = loader(resolve_image_path(request.image_root, path))
            except (ImageLoadError, ValueError) as exc:
                pending.append(Prediction(path, error=str(exc)))
                continue
            loaded.append((path, (image.shape[1], image.shape[0])))
            yield image

    done = 0
    results = engine.iter_transfer(refs, targets(), request.flip_pairs, flip=request.settings.flip)
    for result in results:
        for failed in pending:
            done += 1
            state.set_progress(done, total, failed.path)
            yield failed
        pending.clear()
        path, size = loaded[-1]
        done += 1
        state.set_progress(done, total, path)
        yield Prediction(
            path,
            np.asarray(result.points, float),
            np.asarray(result.confidence, float),
            np.asarray(result.found, bool),
            np.asarray(result.needs_review, bool),
            size,
        )
    for failed in pending:
        done += 1
        state.set_progress(done, total, failed.path)
        yield failed


def prediction_annotation(
    prediction: Prediction, num_keypoints: int
) -> ImageAnnotation | None:
    """The annotation a prediction stands for, or None for a failed one."""
    if prediction.error is not None:
        return None
    if len(prediction.points) != num_keypoints:
        raise ValueError(
            f"prediction for {prediction.path!r} has {len(prediction.points)} keypoints, "
            f"schema has {num_keypoints}"
        )
    kps = []
    for (x, y), conf, found in zip(prediction.points, prediction.confidence, prediction.found):
        if found and np.isfinite(x) and np.isfinite(y):
            c = float(np.clip(conf, 0.0, 1.0))
            kps.append(Keypoint(float(x), float(y), Visibility.VISIBLE, Origin.PREDICTED, c))
        else:  # not found: unlabelled (v = 0) for the user, with its (low) confidence
            kps.append(Keypoint(origin=Origin.PREDICTED, confidence=float(np.clip(conf, 0, 1))))
    return ImageAnnotation((Instance(tuple(kps)),), ImageStatus.PREDICTED)


def merge_prediction(old: ImageAnnotation, new: ImageAnnotation) -> ImageAnnotation:
    """``new`` predictions merged into ``old``: keypoints the user placed, moved or deleted
    keep their state; the user's box and further instances are kept."""
    if not old.instances:
        return new
    first = old.instances[0]
    kps = tuple(
        mine if mine.user_set else predicted
        for mine, predicted in zip(first.keypoints, new.instances[0].keypoints)
    )
    return ImageAnnotation(
        (replace(first, keypoints=kps), *old.instances[1:]), ImageStatus.PREDICTED
    )


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


def build_engine(settings: ProjectSettings, feature_cache_dir: str | None = None,
                 category: str = "") -> Engine:
    """The SD + DINOv2 engine for ``settings`` with a disk feature cache (models load lazily
    on first use); ``category`` (the schema's) fills a "{category}" prompt."""
    from annotator.engine import Engine
    from annotator.features.cache import FeatureCache

    cache_dir = feature_cache_dir or settings.cache_dir or None
    cache = FeatureCache(cache_dir, disk_bytes=int(settings.cache_cap_gb * (1 << 30)))
    return Engine.from_pretrained(
        sd_model=settings.sd_model,
        dino_model=settings.dino_model,
        preset=settings.preset,
        device=settings.device,
        dtype=settings.dtype,
        feature_cache=cache,
        fusion=settings.fusion,
        flip=settings.flip,
        sd_unet=settings.sd_unet or None,
        adapter_checkpoint=settings.diy_checkpoint or None,
        category=category,
        **({} if settings.soft_argmax else {"softargmax_window": 0}),
    )

