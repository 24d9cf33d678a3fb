"""Which frames of a video are worth labelling: uniform, k-means on a global descriptor of a
subsample (grey thumbnails by default, as DeepLabCut's k-means extraction; any descriptor
matrix, such as a backbone's pooled features, through :func:`kmeans_pick`), and the frames
the current predictions are least sure about."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from annotator.domain.annotation import ImageStatus
from annotator.domain.project import Project
from annotator.io.video import VideoInfo, probe, sample_thumbnails
from annotator.jobs.progress import TaskState

log = logging.getLogger(__name__)

PICK_METHODS = ("kmeans", "uniform")


def pick_uniform(n_frames: int, n: int, start: int = 0, stop: int | None = None) -> list[int]:
    """``n`` frame indices evenly spread over [start, stop) (fewer when the range is
    shorter), first and last included."""
    stop = n_frames if stop is None else min(stop, n_frames)
    if n < 1 or stop <= start:
        return []
    if n == 1:
        return [start]
    return sorted(set(np.rint(np.linspace(start, stop - 1, n)).astype(int).tolist()))


def kmeans_pick(descriptors: np.ndarray, n: int, seed: int = 0,
                iterations: int = 50) -> list[int]:
    """Rows of ``descriptors`` (samples x features) that represent ``n`` k-means clusters:
    per cluster, the row nearest its centre (sorted row indices). Rows are centred and
    scaled to unit mean norm first; fewer than ``n`` distinct rows give fewer picks."""
    import cv2

    x = np.asarray(descriptors, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError("descriptors must be a non-empty (samples, features) matrix")
    n = min(int(n), len(x))
    if n < 1:
        return []
    x = x - x.mean(axis=0, keepdims=True)
    scale = float(np.linalg.norm(x, axis=1).mean())
    if scale > 0:
        x = x / scale
    if n == len(x):
        return list(range(len(x)))
    cv2.setRNGSeed(int(seed))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, iterations, 1e-4)
    _, labels, centres = cv2.kmeans(x, n, None, criteria, 1, cv2.KMEANS_PP_CENTERS)
    labels = labels.ravel()
    picks = set()
    for c in range(n):
        members = np.flatnonzero(labels == c)
        if len(members):
            d = np.linalg.norm(x[members] - centres[c], axis=1)
            picks.add(int(members[int(np.argmin(d))]))
    return sorted(picks)


def pick_frames(video: str | os.PathLike[str], n: int, method: str = "kmeans",
                max_samples: int = 1000, seed: int = 0, start: int = 0,
                stop: int | None = None, task: TaskState | None = None,
                info: VideoInfo | None = None) -> list[int]:
    """``n`` frame indices of ``video`` picked by ``method`` (see :data:`PICK_METHODS`)."""
    if method not in PICK_METHODS:
        raise ValueError(f"unknown frame picking method {method!r}; choose from {PICK_METHODS}")
    if n < 1:
        raise ValueError(f"number of frames {n} must be >= 1")
    info = info or probe(video)
    if method == "uniform":
        return pick_uniform(info.n_frames, n, start, stop)

    def on_frame(done: int, total: int) -> None:
        if task is not None:
            task.check()
            if done % 50 == 0 or done == total:
                task.set_progress(done, total, "reading frames")

    samples = max(max_samples, n)
    indices, thumbs = sample_thumbnails(video, samples, start=start, stop=stop,
                                        on_frame=on_frame)
    rows = kmeans_pick(thumbs, n, seed)
    log.info("k-means picked %d of %d sampled frames of %s", len(rows), len(indices), video)
    return [int(indices[r]) for r in rows]


def least_confident(project: Project, n: int,
                    paths: Sequence[str] | None = None) -> list[str]:
    """The ``n`` predicted images (among ``paths``, default all) whose worst keypoint
    confidence is lowest: the frames the current model is least sure about."""
    candidates = project.paths_with_status(ImageStatus.PREDICTED)
    if paths is not None:
        wanted = set(paths)
        candidates = [p for p in candidates if p in wanted]
    scored = []
    for p in candidates:
        worst = project.annotation(p).worst_confidence()
        scored.append((1.0 if worst is None else float(worst), project.index_of(p), p))
    scored.sort()
    return [p for _, _, p in scored[: max(0, n)]]
