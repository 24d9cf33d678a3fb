"""Accuracy on the user's own labelled data: how well will propagation work on my images?

Protocol (DESIGN.md section 12): k reference images spread evenly over the labelled images
(or named), every other labelled image predicted exactly as propagation predicts it (the same
:func:`annotator.jobs.propagate.run_propagation`, the project's settings), scored against its
labels. PCK@alpha = share of the keypoints labelled in both whose error is <= alpha x L, with L
the longest side of the target instance's keypoint box ("box") or of the image ("image"); a
keypoint not found counts as a miss. Two baselines in the same run: copying the references'
coordinates (their per-keypoint mean), and the box-normalised copy (the references' mean
position inside their keypoint box, placed in the target's labelled keypoint box).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from annotator.domain.annotation import Instance
from annotator.domain.project import Project, ProjectSettings
from annotator.features.crop import Box, keypoint_box
from annotator.io.video import ImageSource
from annotator.jobs.progress import TaskState
from annotator.jobs.propagate import PropagateRequest, ReferenceSpec, run_propagation

if TYPE_CHECKING:
    from annotator.engine import Engine

log = logging.getLogger(__name__)

BOX_MODES = ("labels", "auto", "none")
METHODS = ("engine", "box copy", "copy")


@dataclass(frozen=True)
class LabelledEvalConfig:
    """``references``: how many (spread evenly) or which image paths (or file names);
    ``boxes``: "labels" (targets get their labelled keypoint boxes), "auto" (found from the
    references), "none" (whole images); ``max_targets`` spread evenly over the rest."""

    references: int | tuple[str, ...] = 5
    boxes: str = "auto"
    alphas: tuple[float, ...] = (0.05, 0.1, 0.2)
    max_targets: int | None = None
    #: train the learned head on the references and let propagation use it (issue 20)
    learn: bool = False

    def __post_init__(self) -> None:
        if self.boxes not in BOX_MODES:
            raise ValueError(f"boxes must be one of {BOX_MODES}, got {self.boxes!r}")
        if isinstance(self.references, int) and self.references < 1:
            raise ValueError("at least one reference image is needed")
        if self.max_targets is not None and self.max_targets < 1:
            raise ValueError("max_targets must be >= 1")
        if not self.alphas or any(not 0 < a <= 1 for a in self.alphas):
            raise ValueError("alphas must be in (0, 1]")


@dataclass
class KeypointScores:
    """Per method: errors, box and image scale, keypoint index, confidence (engine only)."""

    errors: list[float] = field(default_factory=list)
    box_side: list[float] = field(default_factory=list)
    image_side: list[float] = field(default_factory=list)
    keypoint: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)

    def add(self, err: float, box: float, image: float, k: int, conf: float = np.nan) -> None:
        self.errors.append(err)
        self.box_side.append(box)
        self.image_side.append(image)
        self.keypoint.append(k)
        self.confidence.append(conf)

    def pck(self, alpha: float, scale: str = "box", keypoint: int | None = None) -> float:
        err = np.asarray(self.errors, float)
        side = np.asarray(self.box_side if scale == "box" else self.image_side, float)
        sel = np.ones(len(err), bool) if keypoint is None else \
            np.asarray(self.keypoint) == keypoint
        if not sel.any():
            return float("nan")
        return float(100.0 * np.mean(err[sel] <= alpha * side[sel]))

    def __len__(self) -> int:
        return len(self.errors)


@dataclass
class LabelledEvalResult:
    """Scores per method (``engine``, ``box copy``, ``copy``), the images used, timing."""

    keypoints: tuple[str, ...]
    references: tuple[str, ...]
    targets: tuple[str, ...]
    config: LabelledEvalConfig
    scores: dict[str, KeypointScores]
    seconds: float = 0.0
    failed: tuple[str, ...] = ()

    def hit_confidence(self, alpha: float = 0.1) -> tuple[float, float]:
        """Mean engine confidence of hits and of misses at PCK@alpha of the box."""
        s = self.scores["engine"]
        err, side = np.asarray(s.errors), np.asarray(s.box_side)
        conf = np.asarray(s.confidence)
        hit = err <= alpha * side

        def mean(a: np.ndarray) -> float:
            return float(np.nanmean(a)) if len(a) and np.isfinite(a).any() else float("nan")

        return mean(conf[hit]), mean(conf[~hit])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "keypoints": list(self.keypoints), "references": list(self.references),
            "targets": list(self.targets), "boxes": self.config.boxes,
            "alphas": list(self.config.alphas), "seconds": self.seconds,
            "seconds_per_target": self.seconds / max(len(self.targets), 1),
            "failed": list(self.failed), "rule": "error <= alpha * L",
        }
        for name, s in self.scores.items():
            out[name] = {
                scale: {str(a): s.pck(a, scale) for a in self.config.alphas}
                for scale in ("box", "image")
            }
            out[name]["per_keypoint_box"] = {
                kp: {str(a): s.pck(a, "box", i) for a in self.config.alphas}
                for i, kp in enumerate(self.keypoints)
            }
            out[name]["points"] = len(s)
        hit, miss = self.hit_confidence()
        out["engine"]["confidence_hits"], out["engine"]["confidence_misses"] = hit, miss
        return out


def labelled_instances(project: Project, path: str) -> list[Instance]:
    return [inst for inst in project.annotation(path).instances if inst.num_labelled]


def pick_references(labelled: Sequence[str], references: int | Sequence[str]) -> list[str]:
    """``references`` images spread evenly over ``labelled`` (the middle of k equal parts),
    or the named ones (full relative path or file name)."""
    if isinstance(references, int):
        n = len(labelled)
        if references >= n:
            raise ValueError(f"{references} references leave no labelled image to predict "
                             f"({n} labelled)")
        return [labelled[int((i + 0.5) * n / references)] for i in range(references)]
    by_name: dict[str, list[str]] = {}
    for p in labelled:
        by_name.setdefault(PurePosixPath(p).name, []).append(p)
    out = []
    for name in references:
        if name in labelled:
            out.append(name)
        elif len(by_name.get(name, ())) == 1:
            out.append(by_name[name][0])
        elif name in by_name:
            raise ValueError(f"reference {name!r} names several labelled images; give its path")
        else:
            raise ValueError(f"reference {name!r} is not a labelled image of the project")
    return out


def _points(inst: Instance) -> tuple[np.ndarray, np.ndarray]:
    pts = np.array([(kp.x, kp.y) for kp in inst.keypoints], float).reshape(-1, 2)
    valid = np.array([kp.labelled for kp in inst.keypoints], bool)
    return pts, valid


def _box_of(inst: Instance) -> Box | None:
    pts, valid = _points(inst)
    return keypoint_box(pts[valid])


def _spread(items: Sequence[str], n: int | None) -> list[str]:
    if n is None or n >= len(items):
        return list(items)
    return [items[int((i + 0.5) * len(items) / n)] for i in range(n)]


def evaluate_labelled(project: Project, engine: Engine, config: LabelledEvalConfig,
                      state: TaskState | None = None,
                      settings: ProjectSettings | None = None) -> LabelledEvalResult:
    """Run the protocol on ``project``'s labelled images with ``engine`` and ``settings``
    (default: the project's). Raises ValueError when there is nothing to evaluate."""
    state = state or TaskState()
    settings = settings or project.settings
    if config.boxes == "none":
        settings = replace(settings, boxes="none")
    elif config.boxes == "auto":
        settings = replace(settings, boxes="auto", crop="bbox")
    else:
        settings = replace(settings, crop="bbox")
    labelled = [r.path for r in project.images if labelled_instances(project, r.path)]
    if len(labelled) < 2:
        raise ValueError(f"{len(labelled)} labelled image(s): evaluation needs at least 2")
    refs = pick_references(labelled, config.references)
    targets = _spread([p for p in labelled if p not in refs], config.max_targets)
    k = len(project.schema)
    specs = []
    ref_pts, ref_norm = [], []
    for path in refs:
        for inst in labelled_instances(project, path):
            pts, valid = _points(inst)
            box = _box_of(inst)
            # with label boxes, references and targets alike are framed by the labelled
            # keypoints' box, the baselines' box (a drawn box frames the object differently)
            specs.append(ReferenceSpec(path, tuple(map(tuple, pts)), tuple(valid),
                                       box if config.boxes == "labels" else inst.bbox))
            p = np.where(valid[:, None], pts, np.nan)
            ref_pts.append(p)
            if box is not None and box[2] > 0 and box[3] > 0:
                ref_norm.append((p - box[:2]) / np.array(box[2:]))
    copy_pts, norm_pts = _mean_points(ref_pts, k), _mean_points(ref_norm, k)
    target_boxes = []
    if config.boxes == "labels":
        for path in targets:
            boxes = tuple(_box_of(inst) for inst in labelled_instances(project, path))
            target_boxes.append((path, tuple(b for b in boxes if b is not None)))
    flip_pairs = project.schema.flip_pairs if settings.flip else ()
    request = PropagateRequest(project.image_root, tuple(specs), tuple(targets),
                               tuple(flip_pairs), settings, 0, tuple(target_boxes))
    scores = {m: KeypointScores() for m in METHODS}
    failed = []
    start = time.perf_counter()
    head = None
    if config.learn:
        from annotator.jobs.train import TrainRequest, run_training

        train = TrainRequest(project.image_root, tuple(specs), tuple(project.schema.keypoints),
                             tuple(project.schema.flip_pairs), settings)
        head = run_training(train, engine, state, ImageSource.of(project)).head
    for pred in run_propagation(request, engine, state, ImageSource.of(project), head):
        if pred.error is not None:
            failed.append(f"{pred.path}: {pred.error}")
            continue
        rec = project.image(pred.path)
        w, h = pred.size or (rec.width, rec.height)
        image_side = float(max(w or 0, h or 0))
        predicted = pred.instances()
        for inst in labelled_instances(project, pred.path):
            gt, valid = _points(inst)
            box = _box_of(inst)
            if box is None:
                continue
            side = float(max(box[2], box[3], 1.0))
            best = _closest(predicted, gt, valid)
            base_box = np.array(box[:2]) + norm_pts * np.array(box[2:])
            for j in np.flatnonzero(valid):
                if best is not None:
                    p = best.points[j]
                    err = float(np.hypot(*(p - gt[j]))) if best.found[j] and \
                        np.isfinite(p).all() else float("inf")
                    conf = float(best.confidence[j])
                else:
                    err, conf = float("inf"), 0.0
                scores["engine"].add(err, side, image_side, int(j), conf)
                for name, base in (("box copy", base_box), ("copy", copy_pts)):
                    e = float(np.hypot(*(base[j] - gt[j])))
                    scores[name].add(e if np.isfinite(e) else float("inf"), side, image_side,
                                     int(j))
    seconds = time.perf_counter() - start
    return LabelledEvalResult(tuple(project.schema.keypoints), tuple(refs), tuple(targets),
                              config, scores, seconds, tuple(failed))


def _mean_points(points: list[np.ndarray], k: int) -> np.ndarray:
    """(K, 2) per-keypoint mean over (K, 2) arrays with NaN where unlabelled (NaN where no
    array has the keypoint)."""
    if not points:
        return np.full((k, 2), np.nan)
    stack = np.stack(points)
    seen = np.isfinite(stack).all(axis=2)  # (R, K)
    total = np.where(seen[:, :, None], stack, 0.0).sum(axis=0)
    count = seen.sum(axis=0)[:, None]
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _closest(predicted: Sequence[Any], gt: np.ndarray, valid: np.ndarray) -> Any | None:
    """The predicted instance nearest the labelled one (mean error over shared keypoints)."""
    best, best_err = None, float("inf")
    for inst in predicted:
        pts = np.asarray(inst.points, float)
        ok = valid & np.asarray(inst.found, bool) & np.isfinite(pts).all(axis=1)
        if not ok.any():
            err = float("inf")
        else:
            err = float(np.mean(np.hypot(*(pts[ok] - gt[ok]).T)))
        if best is None or err < best_err:
            best, best_err = inst, err
    return best


def render_table(result: LabelledEvalResult) -> str:
    """A markdown report: PCK of box and image per method, per keypoint, confidence."""
    alphas = result.config.alphas
    head = " | ".join(f"{s}@{a:g}" for s in ("box", "image") for a in alphas)
    lines = [
        f"References ({len(result.references)}): {', '.join(result.references)}",
        f"Targets: {len(result.targets)}; boxes: {result.config.boxes}; rule: error <= alpha"
        " x L (L = longest side of the target's keypoint box, or of the image); not found ="
        " miss",
        f"Time: {result.seconds:.1f} s ({result.seconds / max(len(result.targets), 1):.2f} s"
        " per target)",
        "",
        f"| method | points | {head} |",
        "|---" * (2 + 2 * len(alphas)) + "|",
    ]
    for name, s in result.scores.items():
        cells = " | ".join(f"{s.pck(a, scale):.1f}" for scale in ("box", "image")
                           for a in alphas)
        lines.append(f"| {name} | {len(s)} | {cells} |")
    lines += ["", "Per keypoint, PCK of the box (engine / box copy / copy):", "",
              "| keypoint | " + " | ".join(f"@{a:g}" for a in alphas) + " |",
              "|---" * (1 + len(alphas)) + "|"]
    for i, kp in enumerate(result.keypoints):
        cells = " | ".join(
            " / ".join(f"{result.scores[m].pck(a, 'box', i):.1f}" for m in METHODS)
            for a in alphas)
        lines.append(f"| {kp} | {cells} |")
    hit, miss = result.hit_confidence()
    lines += ["", f"Engine confidence: hits {hit:.3f}, misses {miss:.3f} (PCK@0.1 of the box)"]
    if result.failed:
        lines += ["", f"Unreadable targets ({len(result.failed)}): " + "; ".join(result.failed)]
    return "\n".join(lines)


def plot_pck(result: LabelledEvalResult, path: Any) -> Any:
    """PCK of the box vs alpha (0.01 .. 0.3) per method, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = np.linspace(0.01, 0.3, 30)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, s in result.scores.items():
        ax.plot(alphas, [s.pck(a) for a in alphas], label=name)
    ax.set_xlabel("alpha (fraction of the keypoint box's longest side)")
    ax.set_ylabel("PCK (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{len(result.references)} references, {len(result.targets)} targets, "
                 f"boxes: {result.config.boxes}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
