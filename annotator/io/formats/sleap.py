"""SLEAP ``.slp`` files through sleap-io (``load_slp`` / ``save_slp``).

Mapping: the schema becomes a skeleton (node names in order, edges, left/right pairs as
symmetries); each image becomes a one-frame video referring to the image file by its
absolute path (nothing is embedded); each instance a SLEAP instance. Visibility: v = 2 is
a visible point, v = 1 a point with coordinates marked not visible (SLEAP keeps them),
v = 0 a NaN point. An instance whose labelled points are all unreviewed visible predictions is
written as a ``PredictedInstance`` with the points' confidences as scores, and read back
as predictions. Boxes are not kept.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotator.domain.annotation import ImageAnnotation, Instance, Keypoint, Origin, Visibility
from annotator.domain.paths import _DRIVE
from annotator.domain.project import Project
from annotator.domain.schema import KeypointSchema, SchemaError
from annotator.io.formats._common import (
    DEFAULT_EXPORT,
    MAX_NAME,
    ExportOptions,
    ExportReport,
    FormatError,
    ProgressFn,
    dataset_file,
    export_frames,
    imported_status,
    is_inside,
    project_from_frames,
    require_sleap_io,
    staged_file,
    write_phase,
)
from annotator.io.freeing import take_apart
from annotator.io.jsonio import check_coordinate

log = logging.getLogger(__name__)


def skeleton(sio: Any, schema: KeypointSchema) -> Any:
    """The SLEAP skeleton of ``schema`` (edges and left/right pairs as symmetries)."""
    names = list(schema.keypoints)
    return sio.Skeleton(
        nodes=names,
        edges=[(names[a], names[b]) for a, b in schema.skeleton],
        symmetries=[(names[a], names[b]) for a, b in schema.flip_pairs],
        name=schema.name,
    )


def _is_prediction(inst: Instance) -> bool:
    labelled = [kp for kp in inst.keypoints if kp.labelled]
    return bool(labelled) and all(
        kp.origin == Origin.PREDICTED and kp.v == Visibility.VISIBLE for kp in labelled
    )


def _instance_arrays(np: Any, inst: Instance) -> tuple[Any, Any, bool, float]:
    """(points (K, 3): x, y, 1 visible / 0 occluded, NaN rows where missing; point scores
    (K,), 0 where none; whether it is a prediction; its score: the labelled points' mean)."""
    pts = np.full((len(inst.keypoints), 3), np.nan)
    for j, kp in enumerate(inst.keypoints):
        if kp.labelled:
            pts[j] = (kp.x, kp.y, 1.0 if kp.v == Visibility.VISIBLE else 0.0)
    scores = np.array([kp.confidence or 0.0 for kp in inst.keypoints], dtype=float)
    predicted = _is_prediction(inst)
    score = 0.0
    if predicted:
        labelled = [s for s, kp in zip(scores, inst.keypoints) if kp.labelled]
        score = float(np.mean(labelled))
    return pts, scores, predicted, score


def _sleap_instance(sio: Any, np: Any, pts: Any, scores: Any, predicted: bool, score: float,
                    skeleton: Any) -> Any:
    if predicted:
        return sio.PredictedInstance.from_numpy(
            pts[:, :2], point_scores=scores, score=score, skeleton=skeleton)
    pts = pts.copy()
    pts[:, 2] = np.where(np.isnan(pts[:, 2]), 0.0, pts[:, 2])
    return sio.Instance.from_numpy(pts, skeleton=skeleton)


def to_sleap(sio: Any, np: Any, inst: Instance, skeleton: Any) -> Any:
    """A SLEAP instance (a ``PredictedInstance`` when all its points are predictions)."""
    return _sleap_instance(sio, np, *_instance_arrays(np, inst), skeleton)


@dataclass(frozen=True)
class SleapPlan:
    """What :func:`write_sleap` writes, as a few flat arrays: cheap to hand to another
    process (:mod:`annotator.jobs.export_child`), which then builds sleap-io's objects and
    writes the file without holding this process's GIL. N instances, K keypoints."""

    schema: KeypointSchema
    sources: tuple[str, ...]  # per image: its file (absolute)
    sizes: Any  # (images, 2) int64: width, height
    frame_of: Any  # (N,) int64: the image of each instance
    points: Any  # (N, K, 3) float64, see _instance_arrays
    scores: Any  # (N, K) float64
    predicted: Any  # (N,) bool
    score: Any  # (N,) float64
    boxes: int  # instance boxes left out (SLEAP has none)

    ARRAYS = ("sizes", "frame_of", "points", "scores", "predicted", "score")


def plan_sleap(project: Project, options: ExportOptions = DEFAULT_EXPORT,
               progress: ProgressFn | None = None) -> SleapPlan:
    """The :class:`SleapPlan` of ``project`` (the scan and the arrays: all of the export's
    work on our own objects; ``progress`` as for :func:`write_sleap`)."""
    import numpy as np

    frames = export_frames(project, options, progress)
    written = write_phase(progress, project, len(frames))
    k = len(project.schema)
    n = sum(1 for f in frames for inst in f.instances if inst.num_labelled)
    # filled row by row: np.stack of 300,000 small arrays holds the GIL for 0.2-0.4 s
    frame_of = np.zeros(n, dtype=np.int64)
    points, scores = np.zeros((n, k, 3)), np.zeros((n, k))
    predicted, score = np.zeros(n, dtype=bool), np.zeros(n, dtype=np.float64)
    sizes = np.zeros((len(frames), 2), dtype=np.int64)
    boxes = j = 0
    try:
        for i, frame in enumerate(frames):
            written(i)
            sizes[i] = frame.width, frame.height
            for inst in frame.instances:
                boxes += inst.bbox is not None
                if not inst.num_labelled:
                    continue
                frame_of[j] = i
                points[j], scores[j], predicted[j], score[j] = _instance_arrays(np, inst)
                j += 1
        written(len(frames))  # the last chance to cancel before the file is written
        sources = tuple(str(f.source) for f in frames)
    finally:  # not in one free at the return (see annotator.io.freeing)
        take_apart(frames)
    return SleapPlan(project.schema, sources, sizes, frame_of, points, scores, predicted,
                     score, boxes)


def write_plan(plan: SleapPlan, out: str | Path) -> ExportReport:
    """Write a :class:`SleapPlan` as the SLEAP labels file ``out`` (sleap-io's objects are
    built here: in a child process when the GUI exports, see annotator.jobs.export_child)."""
    sio = require_sleap_io()
    import numpy as np

    out = Path(out)
    sk = skeleton(sio, plan.schema)
    per_frame: list[list[Any]] = [[] for _ in plan.sources]
    for j in range(len(plan.frame_of)):
        per_frame[int(plan.frame_of[j])].append(_sleap_instance(
            sio, np, plan.points[j], plan.scores[j], bool(plan.predicted[j]),
            float(plan.score[j]), sk))
    labelled_frames = []
    for source, (width, height), insts in zip(plan.sources, plan.sizes, per_frame):
        video = sio.Video(
            filename=source, open_backend=False,
            backend_metadata={"shape": (1, int(height), int(width), 3)},
        )
        labelled_frames.append(sio.LabeledFrame(video=video, frame_idx=0, instances=insts))
    labels = sio.Labels(labeled_frames=labelled_frames, skeletons=[sk])
    try:
        with staged_file(out) as stage:
            sio.save_slp(labels, str(stage), embed=False, verbose=False)
    except (OSError, ValueError) as exc:
        raise FormatError(f"{out}: cannot be written ({exc})") from None
    notes = []
    if plan.boxes:
        notes.append(f"{plan.boxes} instance box(es) not kept (SLEAP instances have no box)")
    return ExportReport(out, len(plan.sources), len(plan.frame_of), tuple(notes))


def check_sleap_target(out: str | Path) -> Path:
    """``out`` as a Path, or a FormatError when it cannot name a SLEAP labels file (sleap-io
    missing, not ``.slp``)."""
    require_sleap_io()
    out = Path(out)
    if out.suffix != ".slp":
        raise FormatError(f"{out}: a SLEAP labels file must end in .slp")
    return out


def write_sleap(
    project: Project, out: str | Path, options: ExportOptions = DEFAULT_EXPORT,
    progress: ProgressFn | None = None,
) -> ExportReport:
    """Write ``project`` as a SLEAP labels file ``out`` (``.slp``)."""
    out = check_sleap_target(out)
    return write_plan(plan_sleap(project, options, progress), out)


def from_sleap(inst: Any, k: int, where: str) -> Instance:
    """Our instance of a SLEAP one with ``k`` nodes (NaN points missing, scores clipped)."""
    predicted = type(inst).__name__ == "PredictedInstance"
    pts = inst.points
    kps = []
    for j in range(k):
        x, y = (float(v) for v in pts["xy"][j])
        if math.isnan(x) or math.isnan(y):
            kps.append(Keypoint())
            continue
        x = check_coordinate(x, f"{where}, node {j} x", FormatError)
        y = check_coordinate(y, f"{where}, node {j} y", FormatError)
        if predicted:
            score = float(pts["score"][j])
            conf = min(max(score, 0.0), 1.0) if math.isfinite(score) else None
            kps.append(Keypoint(x, y, Visibility.VISIBLE, Origin.PREDICTED, conf))
        else:
            v = Visibility.VISIBLE if bool(pts["visible"][j]) else Visibility.OCCLUDED
            kps.append(Keypoint(x, y, v))
    return Instance(tuple(kps))


def _locate(filename: str, root: Path, slp: Path) -> Path:
    """The image a SLEAP video names, found inside ``root``: a relative path against the
    file's folder, an absolute one as it is when it lies inside ``root``, else (a file
    made on another machine, ``D:/data\\robot0.jpg``) by its trailing path components,
    longest first. Nothing outside ``root`` is looked at."""
    if not isinstance(filename, str) or "\x00" in filename or len(filename) > MAX_NAME:
        raise FormatError(f"{slp}: image name {str(filename)[:80]!r} is not a file name")
    norm = filename.replace("\\", "/")
    absolute = norm.startswith("/") or bool(_DRIVE.match(norm))
    candidates = []
    if not absolute:
        candidates.append(Path(os.path.normpath(slp.parent.absolute() / norm)))
    elif norm.startswith("/"):
        candidates.append(Path(os.path.normpath(norm)))
    parts = [p for p in _DRIVE.sub("", norm).split("/") if p not in ("", ".", "..")]
    candidates += [root.joinpath(*parts[-n:]) for n in range(len(parts), 0, -1)]
    for cand in candidates:
        if is_inside(cand, root) and os.path.lexists(cand):
            return dataset_file(cand, root, "image")
    raise FormatError(f"{slp}: image {filename!r} is not found in the dataset folder {root} "
                      "(looked up by its path and file name); pass --images FOLDER holding it")


def _size(meta: dict, where: str) -> tuple[int, int] | None:
    shape = meta.get("shape")
    if shape is None:
        return None
    if (not isinstance(shape, (list, tuple)) or len(shape) < 3
            or not all(isinstance(v, numbers.Integral) for v in shape[1:3])):
        raise FormatError(f"{where}: video shape {shape!r} is not (frames, height, width, ...)")
    h, w = int(shape[1]), int(shape[2])
    if h <= 0 or w <= 0:
        raise FormatError(f"{where}: image size {w} x {h} is not positive")
    return w, h


def _embedded_frames(labels: Any, path: Path, root: Path) -> dict[tuple[int, int], Path]:
    """Extract the images a ``.pkg.slp`` embeds into ``<root>/<name>.frames/`` (PNG, named
    after their source images where the file records them); (video, frame) -> image. Only
    the file's own embedded videos are opened (never a video it names elsewhere)."""
    import numpy as np
    from PIL import Image

    folder = root / (path.name.removesuffix(".slp") + ".frames")
    out: dict[tuple[int, int], Path] = {}
    used: set[Path] = set()
    for lf in labels.labeled_frames:
        video = lf.video
        if not (video.backend_metadata or {}).get("has_embedded_images"):
            continue
        vi = labels.videos.index(video)
        if (vi, lf.frame_idx) in out:
            continue
        if os.path.realpath(str(video.filename)) != os.path.realpath(path):
            raise FormatError(f"{path}: embedded video {vi} names another file "
                              f"({str(video.filename)[:200]!r}); not read")
        if video.backend is None:
            video.open()
        source = getattr(video, "source_video", None)
        names = getattr(source, "filename", None)
        name = None
        if isinstance(names, list) and 0 <= lf.frame_idx < len(names):
            name = str(names[lf.frame_idx])
        elif isinstance(names, str):
            name = f"{Path(names.replace(chr(92), '/')).stem}_{lf.frame_idx:06d}"
        stem = Path(name.replace("\\", "/")).stem if name else f"frame{lf.frame_idx:06d}"
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:100] or "frame"
        target = folder / f"video{vi}" / f"{stem}.png"
        if target in used:  # two frames named alike: keep both
            target = target.with_name(f"{stem}_{lf.frame_idx:06d}.png")
        used.add(target)
        array = np.asarray(video[lf.frame_idx])
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if not is_inside(Path(os.path.realpath(target.parent)), root):  # before mkdir
            raise FormatError(f"{path}: {target.parent} links outside the dataset folder "
                              f"{root}; frames not extracted")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        Image.fromarray(array.astype(np.uint8)).save(tmp, format="PNG")
        os.replace(tmp, target)
        out[(vi, lf.frame_idx)] = target
    return out


def load_labels(sio: Any, path: Path) -> tuple[Any, KeypointSchema]:
    """The labels of SLEAP file ``path`` (videos not opened) and the schema of its one
    skeleton (symmetries as left/right pairs)."""
    try:
        labels = sio.load_slp(str(path), open_videos=False)
    except Exception as exc:  # h5py and sleap-io raise many kinds for a bad file
        raise FormatError(f"{path}: not a readable SLEAP file ({exc})") from None
    if len(labels.skeletons) != 1:
        raise FormatError(f"{path}: {len(labels.skeletons)} skeletons; one is supported")
    sk = labels.skeletons[0]
    names = [n.name for n in sk.nodes]
    index = {n: i for i, n in enumerate(names)}
    edges = [(index[e.source.name], index[e.destination.name]) for e in sk.edges]
    pairs = []
    for sym in sk.symmetries:
        a, b = sorted(index[n.name] for n in sym.nodes)
        pairs.append((a, b))
    try:
        return labels, KeypointSchema(sk.name or "instance", tuple(names), tuple(edges),
                                      tuple(pairs))
    except SchemaError as exc:
        raise FormatError(f"{path}: {exc}") from None


def read_sleap(path: str | Path, image_root: str | Path | None = None) -> Project:
    """A project from a SLEAP labels file: one image per (video, frame) whose video is an
    image file or a list of image files, found inside the dataset folder (``image_root``,
    default the file's folder; see :func:`_locate`). A ``.pkg.slp`` has its embedded images
    extracted into ``<dataset folder>/<name>.frames/``."""
    sio = require_sleap_io()
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: file not found")
    dataset_file(path, path.parent, "SLEAP file")
    labels, schema = load_labels(sio, path)
    root = Path(os.path.realpath(image_root if image_root is not None else path.parent))
    embedded: dict[tuple[int, int], Path] | None = None
    entries: list[tuple[Path, tuple[int, int] | None, ImageAnnotation]] = []
    for lf in labels.labeled_frames:
        where = f"{path}: frame {lf.frame_idx}"
        meta = lf.video.backend_metadata or {}
        if meta.get("has_embedded_images"):
            if embedded is None:
                try:
                    embedded = _embedded_frames(labels, path, root)
                except FormatError:
                    raise
                except Exception as exc:  # h5py, the codecs, PIL
                    raise FormatError(f"{path}: its embedded images cannot be extracted "
                                      f"({type(exc).__name__}: {exc})") from None
            image = embedded[(labels.videos.index(lf.video), lf.frame_idx)]
        else:
            filename = lf.video.filename
            if isinstance(filename, list):
                if not 0 <= lf.frame_idx < len(filename):
                    raise FormatError(f"{where}: frame {lf.frame_idx} of a video of "
                                      f"{len(filename)} images")
                filename = filename[lf.frame_idx]
            elif lf.frame_idx != 0:
                raise FormatError(f"{path}: frame {lf.frame_idx} of video {filename} -- "
                                  "video frames are not supported, only images")
            image = _locate(filename, root, path)
        size = _size(meta, where)
        insts = tuple(from_sleap(i, len(schema), where) for i in lf.instances)
        insts = tuple(i for i in insts if i.num_labelled)
        entries.append((image, size, ImageAnnotation(insts, imported_status(insts))))
    rels = [e[0].relative_to(root).as_posix() for e in entries]
    frames = [(rel, *(size or (None, None)), ann)
              for rel, (_, size, ann) in zip(rels, entries)]
    return project_from_frames(root, schema, frames, str(path))
