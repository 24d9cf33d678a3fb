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
from pathlib import Path
from typing import Any

from annotator.domain.annotation import (
    ImageAnnotation,
    Instance,
    Keypoint,
    Origin,
    Visibility,
)
from annotator.domain.project import Project
from annotator.domain.schema import KeypointSchema, SchemaError
from annotator.io.formats._common import (
    DEFAULT_EXPORT,
    ExportOptions,
    ExportReport,
    FormatError,
    common_root,
    export_frames,
    imported_status,
    project_from_frames,
    require_sleap_io,
    staged_file,
)

log = logging.getLogger(__name__)


def _skeleton(sio: Any, schema: KeypointSchema) -> Any:
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


def _to_sleap(sio: Any, np: Any, inst: Instance, skeleton: Any) -> Any:
    pts = np.full((len(inst.keypoints), 3), np.nan)
    for j, kp in enumerate(inst.keypoints):
        if kp.labelled:
            pts[j] = (kp.x, kp.y, 1.0 if kp.v == Visibility.VISIBLE else 0.0)
    if _is_prediction(inst):
        scores = np.array([kp.confidence or 0.0 for kp in inst.keypoints], dtype=float)
        labelled = [s for s, kp in zip(scores, inst.keypoints) if kp.labelled]
        return sio.PredictedInstance.from_numpy(
            pts[:, :2], point_scores=scores, score=float(np.mean(labelled)),
            skeleton=skeleton,
        )
    pts[:, 2] = np.where(np.isnan(pts[:, 2]), 0.0, pts[:, 2])
    return sio.Instance.from_numpy(pts, skeleton=skeleton)


def write_sleap(
    project: Project, out: str | Path, options: ExportOptions = DEFAULT_EXPORT
) -> ExportReport:
    """Write ``project`` as a SLEAP labels file ``out`` (``.slp``)."""
    sio = require_sleap_io()
    import numpy as np

    out = Path(out)
    if out.suffix != ".slp":
        raise FormatError(f"{out}: a SLEAP labels file must end in .slp")
    frames = export_frames(project, options)
    skeleton = _skeleton(sio, project.schema)
    labelled_frames = []
    n_inst = 0
    for frame in frames:
        video = sio.Video(
            filename=str(frame.source), open_backend=False,
            backend_metadata={"shape": (1, frame.height, frame.width, 3)},
        )
        insts = [_to_sleap(sio, np, inst, skeleton) for inst in frame.instances
                 if inst.num_labelled]
        n_inst += len(insts)
        labelled_frames.append(sio.LabeledFrame(video=video, frame_idx=0, instances=insts))
    labels = sio.Labels(labeled_frames=labelled_frames, skeletons=[skeleton])
    try:
        with staged_file(out) as stage:
            sio.save_slp(labels, str(stage), embed=False, verbose=False)
    except (OSError, ValueError) as exc:
        raise FormatError(f"{out}: cannot be written ({exc})") from None
    notes = []
    boxes = sum(1 for f in frames for i in f.instances if i.bbox is not None)
    if boxes:
        notes.append(f"{boxes} instance box(es) not kept (SLEAP instances have no box)")
    return ExportReport(out, len(frames), n_inst, tuple(notes))


def _from_sleap(inst: Any, k: int) -> Instance:
    predicted = type(inst).__name__ == "PredictedInstance"
    pts = inst.points
    kps = []
    for j in range(k):
        x, y = (float(v) for v in pts["xy"][j])
        if math.isnan(x) or math.isnan(y):
            kps.append(Keypoint())
        elif predicted:
            score = float(pts["score"][j])
            conf = min(max(score, 0.0), 1.0) if math.isfinite(score) else None
            kps.append(Keypoint(x, y, Visibility.VISIBLE, Origin.PREDICTED, conf))
        else:
            v = Visibility.VISIBLE if bool(pts["visible"][j]) else Visibility.OCCLUDED
            kps.append(Keypoint(x, y, v))
    return Instance(tuple(kps))


def read_sleap(path: str | Path) -> Project:
    """A project from a SLEAP labels file: one image per (video, frame) whose video is an
    image file or a list of image files; the image root is their common folder."""
    sio = require_sleap_io()
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: file not found")
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
        schema = KeypointSchema(sk.name or "instance", tuple(names), tuple(edges), tuple(pairs))
    except SchemaError as exc:
        raise FormatError(f"{path}: {exc}") from None
    entries: list[tuple[Path, tuple[int, int] | None, ImageAnnotation]] = []
    for lf in labels.labeled_frames:
        filename = lf.video.filename
        if isinstance(filename, list):
            filename = filename[lf.frame_idx]
        elif lf.frame_idx != 0:
            raise FormatError(f"{path}: frame {lf.frame_idx} of video {filename} -- video "
                              "frames are not supported, only images")
        image = Path(filename)
        if not image.is_absolute():
            image = path.parent / image
        shape = lf.video.backend_metadata.get("shape")
        size = (int(shape[2]), int(shape[1])) if shape and len(shape) >= 3 else None
        insts = tuple(_from_sleap(i, len(names)) for i in lf.instances)
        insts = tuple(i for i in insts if i.num_labelled)
        entries.append((image.resolve(), size, ImageAnnotation(insts, imported_status(insts))))
    root, rels = common_root([e[0] for e in entries], path.parent)
    frames = [(rel, *(size or (None, None)), ann)
              for rel, (_, size, ann) in zip(rels, entries)]
    return project_from_frames(root, schema, frames, str(path))
