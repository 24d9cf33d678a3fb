"""Propagation along time: references nearest in time to a frame, and predicting every
frame of a video in chunks (streaming, resumable: frames already predicted are skipped).

The references of a video frame are ranked by distance in time to it: frames of the same
video first (by |time| difference, frame index when no timestamp), then the other
references in project order. :func:`nearest_in_time` returns the first k; the lead's
propagation request can take that subset as its references (see
:func:`temporal_requests`, which groups targets that share the same nearest references).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from annotator.domain.annotation import ImageStatus
from annotator.domain.project import ImageRecord, Project
from annotator.jobs.progress import TaskState

if TYPE_CHECKING:
    from annotator.engine import Engine
    from annotator.jobs.propagate import Prediction, PropagateRequest

log = logging.getLogger(__name__)


def _when(r: ImageRecord) -> float:
    if r.time_s is not None:
        return float(r.time_s)
    return float(r.frame or 0)


def nearest_in_time(project: Project, target: str, k: int,
                    references: Sequence[str] | None = None) -> list[str]:
    """The ``k`` references (default: the project's reference paths, ``target`` itself
    left out) nearest in time to ``target``: same-video frames by time distance (ties: the
    earlier frame), then the others in project order. A target that is not a video frame
    gets the first ``k`` references in project order."""
    refs = [p for p in (project.reference_paths() if references is None else references)
            if p != target]
    if k < 1:
        return []
    rec = project.image(target)
    if rec.video is None:
        return refs[:k]
    t = _when(rec)
    same, other = [], []
    for p in refs:
        r = project.image(p)
        if r.video == rec.video:
            same.append((abs(_when(r) - t), _when(r), p))
        else:
            other.append(p)
    same.sort()
    return ([p for _, _, p in same] + other)[:k]


def temporal_requests(project: Project, targets: Sequence[str], k: int,
                      request_id: int = 0) -> list[PropagateRequest]:
    """Propagation requests over ``targets`` in which each target uses only its ``k``
    references nearest in time (one request per run of targets sharing them)."""
    from annotator.jobs.propagate import PropagateRequest

    full = PropagateRequest.from_project(project, list(targets), request_id)
    groups: dict[tuple[str, ...], list[str]] = {}
    for t in targets:
        groups.setdefault(tuple(nearest_in_time(project, t, k)), []).append(t)
    out = []
    for refs, group in groups.items():
        wanted = set(refs)
        boxes = tuple((p, b) for p, b in full.target_boxes if p in set(group))
        out.append(replace(full, references=tuple(s for s in full.references
                                                   if s.path in wanted),
                           targets=tuple(group), target_boxes=boxes))
    return out


def pending_frames(project: Project, video: str | None = None) -> list[str]:
    """Video frames (of ``video`` when given) still to predict: unlabelled ones, in
    time order."""
    recs = [r for r in project.images if r.video is not None
            and (video is None or r.video == video)
            and project.status(r.path) == ImageStatus.UNLABELLED]
    recs.sort(key=lambda r: (r.video or "", int(r.frame or 0)))
    return [r.path for r in recs]


class TrackSmoother:
    """Temporal median filter of predicted tracks, streaming: :meth:`push` the predictions
    of consecutive frames in time order and get them back, each first-instance keypoint
    found replaced by the median of that keypoint over the ``window`` frames centred on it
    (the found ones among them; fewer at the ends of a video), ``window // 2`` frames late;
    :meth:`flush` returns the rest. ``video_of(path)`` names a prediction's video: a new
    video starts a new track. Failed images pass through at once. Confidences, flags and
    further instances (no identity across frames) are kept."""

    def __init__(self, window: int, video_of: Callable[[str], object]) -> None:
        if window < 3 or window % 2 == 0:
            raise ValueError(f"smoothing window {window} must be odd and >= 3")
        self.half = window // 2
        self._video_of = video_of
        self._buf: list[Prediction] = []  # raw predictions: half before _next, then pending
        self._next = 0

    def _smoothed(self, i: int) -> Prediction:
        import numpy as np

        pred = self._buf[i]
        around = self._buf[max(0, i - self.half):i + self.half + 1]
        k = len(pred.found)
        pts = np.full((len(around), k, 2), np.nan)
        for row, p in enumerate(around):
            if len(p.found) == k:
                found = np.asarray(p.found, bool)
                pts[row, found] = np.asarray(p.points, float).reshape(-1, 2)[found]
        points = np.asarray(pred.points, float).reshape(-1, 2).copy()
        found = np.asarray(pred.found, bool)
        if found.any():
            points[found] = np.nanmedian(pts[:, found], axis=0)
        return replace(pred, points=points)

    def push(self, pred: Prediction) -> list[Prediction]:
        """Predictions now ready (smoothed), in order."""
        if pred.error is not None:
            return [pred]
        out = []
        if self._buf and self._video_of(pred.path) != self._video_of(self._buf[-1].path):
            out = self.flush()
        self._buf.append(pred)
        while self._next + self.half < len(self._buf):
            out.append(self._smoothed(self._next))
            self._next += 1
        drop = max(0, self._next - self.half)
        del self._buf[:drop]
        self._next -= drop
        return out

    def flush(self) -> list[Prediction]:
        """The predictions still held back (smoothed over what there is); starts afresh."""
        out = [self._smoothed(i) for i in range(self._next, len(self._buf))]
        self._buf, self._next = [], 0
        return out


def propagate_frames(project: Project, engine: Engine, task: TaskState,
                     targets: Sequence[str], nearest: int | None = None, chunk: int = 64,
                     checkpoint: Callable[[int], None] | None = None,
                     smooth: int = 0) -> Iterator[Prediction]:
    """Predict ``targets`` chunk by chunk (in the order given), applying each chunk's
    predictions to ``project`` and then calling ``checkpoint(done)`` (say, a save), so an
    interrupted run loses at most one chunk and a rerun over :func:`pending_frames`
    continues. ``nearest``: each frame uses only its ``nearest`` references in time
    (None: every reference). ``smooth``: a :class:`TrackSmoother` window (odd frames;
    0: off), its held-back frames applied with the next chunk (an interrupted run predicts
    them again). Yields every prediction (errors included)."""
    from annotator.io.video import ImageSource
    from annotator.jobs.propagate import PropagateRequest, apply_predictions, run_propagation

    if chunk < 1:
        raise ValueError(f"chunk size {chunk} must be >= 1")
    done = 0
    total = len(targets)
    source = ImageSource.of(project)  # the frames' videos, from the project's records
    smoother = TrackSmoother(smooth, lambda p: project.image(p).video) if smooth else None
    for start in range(0, total, chunk):
        task.check()
        part = list(targets[start:start + chunk])
        if nearest is None:
            requests = [PropagateRequest.from_project(project, part)]
        else:
            requests = temporal_requests(project, part, nearest)
        if any(not r.references for r in requests):
            raise ValueError("no labelled frame to use as a reference")
        made: list[Prediction] = []
        raws: list[Prediction] = []  # smoothing: the chunk's frames, put back in time order
        try:
            for request in requests:
                for raw in run_propagation(request, engine, TaskState(), source):
                    if smoother is None:
                        made.append(raw)
                        yield raw
                    else:
                        raws.append(raw)
                    task.check()
            if smoother is not None:
                order = {p: i for i, p in enumerate(part)}
                raws.sort(key=lambda p: order[p.path])
                ready = [p for raw in raws for p in smoother.push(raw)]
                if start + chunk >= total:
                    ready += smoother.flush()
                for pred in ready:
                    made.append(pred)
                    yield pred
        finally:  # a cancelled chunk keeps what it made
            apply_predictions(project, [p for p in made if not p.error])
            done += len(made)
            task.set_progress(done, total, "propagate along the video")
            if checkpoint is not None:
                checkpoint(done)
