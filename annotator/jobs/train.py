"""Training job: a per-project keypoint head (``annotator.matching.head``) on the frozen
features of the reviewed and reference instances.

Plain Python (no Qt): the GUI worker and the CLI call :func:`run_training` with a frozen
:class:`TrainRequest` and a :class:`~annotator.jobs.progress.TaskState` (cancel between images).
Each labelled instance is cropped as a propagation reference is (``jobs.propagate.
reference_crop``: its box, else its labelled keypoints' box, enlarged by the crop margin),
featurized through the engine (and its feature cache, so retraining on a grown set only
extracts the new images) and described per image (pair-independent fusions only: dino, concat,
sd). With ``HeadParams.flip`` and the schema's flip pairs, each crop is also featurized mirrored
(partners swapped) as a second training sample (off by default: it cost accuracy on the
fixtures). Labelled crop pixels map to descriptor cells through the maps'
letterbox (``head.pixels_to_cells``).

The head is used only once it was trained on at least :data:`MIN_TRAINING_IMAGES` images
(:func:`head_usable`); heads are saved beside the feature cache folder (:func:`head_path`),
versioned by the feature settings (:func:`head_fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from annotator.domain.project import Project, ProjectSettings
from annotator.features.crop import ImageCrop
from annotator.io.images import ImageLoadError, load_image, resolve_image_path
from annotator.jobs.engine_factory import propagation_flip
from annotator.jobs.head_predict import (  # noqa: F401  (public here too)
    MIN_TRAINING_IMAGES,
    TrainingError,
    check_engine,
    predict_in_box,
    predict_with_head,
)
from annotator.jobs.images import ImageLoader
from annotator.jobs.progress import TaskState
from annotator.jobs.propagate import ReferenceSpec, reference_crop

if TYPE_CHECKING:
    import torch

    from annotator.engine import Engine
    from annotator.matching.head import HeadParams, KeypointHead

log = logging.getLogger(__name__)




@dataclass(frozen=True)
class TrainRequest:
    """Everything the job needs, copied out of the project (the worker never reads it)."""

    image_root: str
    samples: tuple[ReferenceSpec, ...]
    keypoints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    settings: ProjectSettings = field(default_factory=ProjectSettings)
    params: HeadParams | None = None  # None: the defaults of ``matching.head.HeadParams``

    @classmethod
    def from_project(cls, project: Project, params: HeadParams | None = None) -> TrainRequest:
        """Samples: every labelled instance of the reviewed and reference images."""
        samples = []
        for path in project.reference_paths():
            for inst in project.annotation(path).instances:
                if inst.num_labelled:
                    samples.append(ReferenceSpec(
                        path, tuple((kp.x, kp.y) for kp in inst.keypoints),
                        tuple(kp.labelled for kp in inst.keypoints), inst.bbox))
        return cls(project.image_root, tuple(samples), tuple(project.schema.keypoints),
                   tuple(project.schema.flip_pairs), project.settings, params)

    @property
    def images(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.path for s in self.samples))


@dataclass(frozen=True, eq=False)
class TrainingSet:
    """descriptors (N, C, G, G), cells (N, K, 2), valid (N, K); ``images`` the paths used."""

    descriptors: torch.Tensor
    cells: torch.Tensor
    valid: torch.Tensor
    images: tuple[str, ...]
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class TrainResult:
    head: KeypointHead
    images: tuple[str, ...]
    instances: int
    feature_seconds: float
    train_seconds: float
    skipped: tuple[str, ...] = ()


def _default_params() -> HeadParams:
    from annotator.matching.head import HeadParams

    return HeadParams()


def _mirrored(view: ImageCrop | np.ndarray, points: np.ndarray
              ) -> tuple[ImageCrop | np.ndarray, np.ndarray]:
    """The view mirrored left-right and its points (x -> width - 1 - x)."""
    pts = points.copy()
    if isinstance(view, ImageCrop):
        pts[:, 0] = view.rect.width - 1 - pts[:, 0]
        return view.flipped(), pts
    pts[:, 0] = view.shape[1] - 1 - pts[:, 0]
    return np.ascontiguousarray(view[:, ::-1]), pts


def training_set(request: TrainRequest, engine: Engine, state: TaskState,
                 loader: ImageLoader = load_image) -> TrainingSet:
    """Crop, featurize (cached) and describe every sample; raises ``Cancelled`` between
    images and TrainingError when nothing usable remains."""
    import torch

    from annotator.matching.head import pixels_to_cells

    if not request.samples:
        raise TrainingError("no reviewed or reference image with labelled keypoints to train on")
    check_engine(engine)
    k = len(request.keypoints)
    perm = np.arange(k)
    for a, b in request.flip_pairs:
        perm[a], perm[b] = b, a
    params = request.params or _default_params()
    flip = params.flip and bool(request.flip_pairs) and propagation_flip(request.settings)
    describe = engine.extractor.describe
    descs, cells, valids, used, skipped = [], [], [], [], []
    by_path: dict[str, list[ReferenceSpec]] = {}
    for spec in request.samples:
        by_path.setdefault(spec.path, []).append(spec)
    total = len(by_path)
    for done, (path, specs) in enumerate(by_path.items(), start=1):
        state.check()
        state.set_progress(done - 1, total, f"features: {path}")
        try:
            image = loader(resolve_image_path(request.image_root, path))
        except (ImageLoadError, ValueError) as exc:
            log.warning("training image %s skipped: %s", path, exc)
            skipped.append(f"{path}: {exc}")
            continue
        for spec in specs:
            if len(spec.points) != k:
                raise TrainingError(f"{path}: {len(spec.points)} keypoints, schema has {k}")
            if request.settings.crop == "bbox":
                crop = reference_crop(image, spec, request.settings.crop_margin)
            else:  # the whole image (its features are shared with whole-image propagation)
                crop = (image, np.asarray(spec.points, float), np.asarray(spec.valid, bool))
            if crop is None:
                continue
            views = [(crop[0], crop[1], crop[2])]
            if flip:
                m_crop, m_pts = _mirrored(crop[0], crop[1])
                views.append((m_crop, m_pts[perm], crop[2][perm]))
            for view, pts, valid in views:
                maps = engine.features(view)
                d = describe(maps)
                descs.append(d.float())
                safe = np.where(valid[:, None], pts, 0.0)
                cells.append(pixels_to_cells(safe, maps.letterbox, int(d.shape[-1])))
                valids.append(valid)
        used.append(path)
    state.set_progress(total, total, "features done")
    if not descs:
        raise TrainingError("no labelled keypoint of the reviewed images lies in its crop")
    shapes = {tuple(d.shape) for d in descs}
    if len(shapes) != 1:
        raise TrainingError(f"descriptors of different shapes {sorted(shapes)}")
    return TrainingSet(torch.stack(descs), torch.as_tensor(np.stack(cells)),
                       torch.as_tensor(np.stack(valids)), tuple(used), tuple(skipped))


def run_training(request: TrainRequest, engine: Engine, state: TaskState,
                 loader: ImageLoader = load_image) -> TrainResult:
    """Train a head on the request's samples (features through the engine's cache)."""
    from annotator.matching.head import HeadParams, train_head

    t0 = time.perf_counter()
    data = training_set(request, engine, state, loader)
    t1 = time.perf_counter()
    state.check()
    n = len(data.images)
    state.set_progress(n, n, f"training on {n} image(s)")
    # mirrored views are real features of mirrored crops: no grid mirroring in train_head
    params = replace(request.params or HeadParams(), flip=False)
    k = len(request.keypoints)
    head = train_head(data.descriptors, data.cells, data.valid, np.arange(k), params)
    t2 = time.perf_counter()
    state.set_progress(n, n, "trained")
    head = head.with_meta(images=list(data.images), num_images=len(data.images))
    return TrainResult(head, data.images, len(data.descriptors), t1 - t0, t2 - t1, data.skipped)


# ---- storage ---------------------------------------------------------------------------------
def head_fingerprint(engine: Engine, settings: ProjectSettings) -> str:
    """What the head's inputs depend on: the features (engine fingerprint), the fusion and
    the crop rule."""
    cfg = engine.config
    blob = json.dumps({"features": engine.fingerprint, "fusion": getattr(cfg, "fusion", ""),
                       "pca_dim": getattr(cfg, "pca_dim", 0), "crop": settings.crop,
                       "margin": settings.crop_margin}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def heads_folder(settings: ProjectSettings) -> Path:
    """Where heads are saved: beside the feature cache folder (which the cache owns alone):
    ``<cache folder>-heads``, or the user cache folder's ``heads``."""
    if settings.cache_dir:
        folder = Path(settings.cache_dir).expanduser()
        return folder.with_name(folder.name + "-heads")
    import platformdirs

    from annotator.features.cache import APP_NAME

    return Path(platformdirs.user_cache_dir(APP_NAME)) / "heads"


def head_path(project: Project, fingerprint: str) -> Path:
    """The head file of ``project`` (its image root and schema) for features ``fingerprint``."""
    key = json.dumps([str(Path(project.image_root).expanduser().resolve()), project.schema.name,
                      list(project.schema.keypoints)])
    name = hashlib.sha256(key.encode()).hexdigest()[:16]
    return heads_folder(project.settings) / f"{name}-{fingerprint[:16]}.safetensors"


def save_project_head(project: Project, engine: Engine, result: TrainResult) -> Path:
    from annotator.matching.head import save_head

    fp = head_fingerprint(engine, project.settings)
    return save_head(result.head, head_path(project, fp), fingerprint=fp,
                     keypoints=project.schema.keypoints, images=result.images)


def load_project_head(project: Project, engine: Engine) -> KeypointHead | None:
    """The project's saved head for the engine's features, or None (none saved, or saved for
    other features or another schema: logged)."""
    from annotator.matching.head import HeadFileError, load_head

    fp = head_fingerprint(engine, project.settings)
    path = head_path(project, fp)
    if not path.exists():
        return None
    try:
        return load_head(path, fingerprint=fp, keypoints=project.schema.keypoints)
    except HeadFileError as exc:
        log.warning("saved head not used: %s", exc)
        return None


def head_usable(head: KeypointHead | None, min_images: int = MIN_TRAINING_IMAGES) -> bool:
    """Whether ``head`` was trained on enough images to be used for predictions."""
    if head is None:
        return False
    return int(head.meta.get("num_images", 0)) >= min_images


def trained_on(head: KeypointHead) -> dict[str, Any]:
    """Facts for a status line: images, count, seconds, saved time (when loaded)."""
    return {k: head.meta.get(k) for k in ("num_images", "images", "train_seconds", "saved")}


def reviewed_image_count(project: Project) -> int:
    """Images the head may learn from: reviewed or reference images with labels."""
    return len(project.reference_paths())


def project_head(project: Project, engine: Engine,
                 min_images: int = MIN_TRAINING_IMAGES) -> KeypointHead | None:
    """The head predictions may use now, or None: none saved for these features and schema,
    trained on fewer than ``min_images`` images, or the project has fewer than ``min_images``
    reviewed images today (reviews were undone)."""
    if reviewed_image_count(project) < min_images:
        return None
    head = load_project_head(project, engine)
    return head if head_usable(head, min_images) else None


def head_for_propagation(project: Project, engine: Engine) -> KeypointHead | None:
    """The head propagation uses for ``project``: None when the settings turn learning off,
    too few images are reviewed, none was trained for these features, or it cannot be read
    (logged; propagation then uses zero-shot transfer alone)."""
    if not project.settings.use_head:
        return None
    try:
        return project_head(project, engine)
    except Exception as exc:  # the head is an extra: transfer alone goes on
        log.warning("the project's learned head is not used: %s", exc)
        return None
