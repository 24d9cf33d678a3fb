"""A simulated annotator finishing a labelled set: how much work is left to a person?

The person labels one image by hand, then works as the application invites: propagate, open
the worst image first (lowest keypoint confidence), move every point farther than the tolerance
from its label (``tolerance`` x the longest side of the instance's keypoint box; a point not
found counts too) and accept the image; after every ``every`` accepted images the application
propagates again from every accepted image, with the learned head retrained on them (when
``learn`` and enough images are reviewed). The labels stand for the person's eye. Counted: the
corrections per image, in the order the images were done, against placing every point by hand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from annotator.domain.project import Project, ProjectSettings
from annotator.features.crop import keypoint_box
from annotator.io.video import ImageSource
from annotator.jobs.engine_factory import propagation_flip
from annotator.jobs.eval_labelled import labelled_instances
from annotator.jobs.progress import TaskState
from annotator.jobs.propagate import PropagateRequest, ReferenceSpec, run_propagation

if TYPE_CHECKING:
    from annotator.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulationConfig:
    """``boxes``: "labels" (each target's labelled keypoint box is given, as a person who drew
    boxes first) or "auto" (found from the references); ``first``: the image labelled by hand
    (default: the middle labelled image); ``max_images``: stop after this many."""

    tolerance: float = 0.1
    every: int = 10
    learn: bool = True
    boxes: str = "labels"
    first: str | None = None
    max_images: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.tolerance <= 1:
            raise ValueError("tolerance must be in (0, 1]")
        if self.every < 1:
            raise ValueError("every must be >= 1")
        if self.boxes not in ("labels", "auto"):
            raise ValueError(f"boxes must be 'labels' or 'auto', got {self.boxes!r}")


@dataclass
class Step:
    """One accepted image: its place in the session, corrections made, points it has, how
    many images the references counted, and whether the head was in use."""

    index: int
    path: str
    corrections: int
    points: int
    references: int
    head: bool


@dataclass
class SimulationResult:
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0
    train_seconds: list[float] = field(default_factory=list)

    @property
    def corrections(self) -> int:
        return sum(s.corrections for s in self.steps)

    @property
    def by_hand(self) -> int:
        """Every labelled point placed by hand."""
        return sum(s.points for s in self.steps)

    def curve(self, window: int = 10) -> list[tuple[int, float]]:
        """(images done, mean corrections per image over the last ``window`` images)."""
        c = np.array([s.corrections for s in self.steps], float)
        out = []
        for i in range(window, len(c) + 1, window):
            out.append((i, float(c[i - window:i].mean())))
        if len(c) % window:
            out.append((len(c), float(c[-(len(c) % window):].mean())))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"corrections": self.corrections, "by_hand": self.by_hand,
                "images": len(self.steps), "seconds": self.seconds,
                "train_seconds": self.train_seconds,
                "steps": [vars(s) for s in self.steps]}


def _specs(project: Project, path: str) -> list[ReferenceSpec]:
    out = []
    for inst in labelled_instances(project, path):
        out.append(ReferenceSpec(path, tuple((kp.x, kp.y) for kp in inst.keypoints),
                                 tuple(kp.labelled for kp in inst.keypoints), inst.bbox))
    return out


def _corrections(project: Project, path: str, pred: Any, tolerance: float) -> tuple[int, int]:
    """(points to move, labelled points) of one predicted image against its labels."""
    predicted = [] if pred is None or pred.error else pred.instances()
    moves = points = 0
    for inst in labelled_instances(project, path):
        gt = np.array([(kp.x, kp.y) for kp in inst.keypoints], float)
        valid = np.array([kp.labelled for kp in inst.keypoints], bool)
        box = keypoint_box(gt[valid])
        side = max(box[2], box[3], 1.0) if box is not None else 1.0
        best = None
        for cand in predicted:
            p = np.asarray(cand.points, float)
            ok = valid & np.asarray(cand.found, bool) & np.isfinite(p).all(axis=1)
            err = np.where(ok, np.hypot(*(p - gt).T), np.inf)
            hits = int(np.sum(err[valid] <= tolerance * side))
            if best is None or hits > best:
                best = hits
        points += int(valid.sum())
        moves += int(valid.sum()) - (best or 0)
    return moves, points


def _label_boxes(project: Project, path: str) -> tuple:
    """Each labelled instance's box, or its labelled keypoints' box."""
    out = []
    for inst in labelled_instances(project, path):
        pts = np.array([(kp.x, kp.y) for kp in inst.keypoints if kp.labelled], float)
        box = inst.bbox or keypoint_box(pts.reshape(-1, 2))
        if box is not None:
            out.append(box)
    return tuple(out)


def _worst_first(preds: dict[str, Any], remaining: Sequence[str]) -> list[str]:
    def key(path: str) -> tuple[float, int]:
        pred = preds.get(path)
        if pred is None or pred.error:
            return (-1.0, remaining.index(path))
        confs = [c for inst in pred.instances() for c in np.asarray(inst.confidence, float)]
        return (min(confs) if confs else -1.0, remaining.index(path))

    return sorted(remaining, key=key)


def simulate_review(project: Project, engine: Engine, config: SimulationConfig,
                    state: TaskState | None = None,
                    settings: ProjectSettings | None = None) -> SimulationResult:
    """Run the simulated session on ``project``'s labelled images (see the module)."""
    from annotator.jobs.train import MIN_TRAINING_IMAGES, TrainRequest, run_training

    state = state or TaskState()
    settings = replace(settings or project.settings, crop="bbox",
                       boxes="auto" if config.boxes == "auto" else "none")
    labelled = [r.path for r in project.images if labelled_instances(project, r.path)]
    if len(labelled) < 2:
        raise ValueError(f"{len(labelled)} labelled image(s): nothing to simulate")
    first = config.first or labelled[len(labelled) // 2]
    if first not in labelled:
        raise ValueError(f"first image {first!r} is not a labelled image")
    limit = min(config.max_images or len(labelled), len(labelled))
    source = ImageSource.of(project)
    result = SimulationResult()
    start = time.perf_counter()
    _, points = _corrections(project, first, None, config.tolerance)
    result.steps.append(Step(0, first, points, points, 0, False))
    done = [first]
    remaining = [p for p in labelled if p != first]
    while remaining and len(done) < limit:
        state.check()
        head = None
        if config.learn and len(done) >= MIN_TRAINING_IMAGES:
            samples = tuple(s for p in done for s in _specs(project, p))
            request = TrainRequest(project.image_root, samples, tuple(project.schema.keypoints),
                                   tuple(project.schema.flip_pairs), settings)
            trained = run_training(request, engine, state, source)
            result.train_seconds.append(trained.train_seconds)
            head = trained.head
        boxes = ()
        if config.boxes == "labels":
            boxes = tuple((p, _label_boxes(project, p)) for p in remaining)
        refs = tuple(s for p in done for s in _specs(project, p))
        flip = project.schema.flip_pairs if propagation_flip(settings) else ()
        request = PropagateRequest(project.image_root, refs, tuple(remaining), tuple(flip),
                                   settings, 0, boxes)
        preds = {p.path: p for p in run_propagation(request, engine, state, source, head)}
        batch = _worst_first(preds, remaining)[:config.every]
        for path in batch:
            moves, points = _corrections(project, path, preds.get(path), config.tolerance)
            result.steps.append(Step(len(done), path, moves, points, len(done),
                                     head is not None))
            done.append(path)
            remaining.remove(path)
            if len(done) >= limit:
                break
        state.set_progress(len(done), limit, f"{len(done)} images reviewed")
        log.info("simulated review: %d / %d images, %d corrections so far", len(done), limit,
                 result.corrections)
    result.seconds = time.perf_counter() - start
    return result


def render_simulation(results: dict[str, SimulationResult], tolerance: float) -> str:
    """Markdown: totals per run (corrections, share of placing every point by hand) and the
    corrections-per-image curve."""
    lines = [f"Tolerance: {tolerance:g} x the keypoint box's longest side; a point farther (or "
             "not found) is corrected.", "",
             "| run | images | corrections | by hand | share | time (s) |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        share = 100.0 * r.corrections / max(r.by_hand, 1)
        lines.append(f"| {name} | {len(r.steps)} | {r.corrections} | {r.by_hand} | "
                     f"{share:.1f} % | {r.seconds:.0f} |")
    lines += ["", "Mean corrections per image (per 10 images done):", "",
              "| images done | " + " | ".join(results) + " |",
              "|---" * (1 + len(results)) + "|"]
    curves = {n: dict(r.curve()) for n, r in results.items()}
    for i in sorted({i for c in curves.values() for i in c}):
        lines.append(f"| {i} | " + " | ".join(
            f"{curves[n][i]:.2f}" if i in curves[n] else "-" for n in results) + " |")
    return "\n".join(lines)


def plot_simulation(results: dict[str, SimulationResult], path: Any) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=120)
    for name, r in results.items():
        xs, ys = zip(*r.curve()) if r.curve() else ((), ())
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel("images done")
    ax.set_ylabel("corrections per image")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
