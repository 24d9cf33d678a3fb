"""PCK (percentage of correct keypoints): per-pair counts and their averages.

A predicted point is correct when its Euclidean error to the ground truth is below
``alpha * L`` (``rule="lt"``, strict, as the sd-dino SPair-71k / PF-Pascal code) or at most
``alpha * L`` (``rule="le"``, as the sd-dino / GLU-Net TSS code). L is the pair's threshold
length (target bounding box or image side). A point that was not found (NaN prediction) is
always wrong. The threshold is compared in pixels (``err < alpha * L``), never as a ratio, so a
shift exactly on the threshold is scored by the rule and not by rounding.

Averages:
- per-keypoint (pooled): all correct points / all points, over every pair;
- per-image: the mean over pairs of each pair's own PCK (pairs without points are skipped);
- category mean: the unweighted mean over categories of their per-keypoint PCK (the
  "Average PCK" of the sd-dino script).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Rule = Literal["lt", "le"]
RULE_TEXT = {"lt": "error < alpha * L (strict)", "le": "error <= alpha * L"}


def check_rule(rule: str) -> Rule:
    if rule not in RULE_TEXT:
        raise ValueError(f"comparison rule must be 'lt' (<) or 'le' (<=), got {rule!r}")
    return rule  # type: ignore[return-value]


def keypoint_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Euclidean errors (K,) between predictions (K, 2) and ground truth (K, 2); inf where the
    prediction is not finite (not found)."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 2)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has {len(pred)} points, ground truth {len(gt)}")
    err = np.hypot(pred[:, 0] - gt[:, 0], pred[:, 1] - gt[:, 1])
    err[~np.all(np.isfinite(pred), axis=1)] = np.inf
    return err


def correct_counts(errors: np.ndarray, norm_length: float, alphas: Sequence[float],
                   rule: Rule = "lt") -> np.ndarray:
    """Number of correct points (A,) int64 at each alpha for errors (K,)."""
    errors = np.asarray(errors, dtype=np.float64).reshape(1, -1)
    thr = np.asarray(alphas, dtype=np.float64).reshape(-1, 1) * float(norm_length)
    ok = errors < thr if check_rule(rule) == "lt" else errors <= thr
    return ok.sum(axis=1).astype(np.int64)


@dataclass(frozen=True)
class PairScore:
    """One pair's result: ``correct[i]`` points within alpha i of the evaluation's alpha list."""

    pair_id: str
    category: str
    num_points: int
    correct: tuple[int, ...]
    norm_length: float
    mean_error: float  # mean error in pixels over found points (nan if none found)
    num_found: int

    def pck(self) -> np.ndarray:
        """This pair's PCK (A,) (nan when it has no points)."""
        if self.num_points == 0:
            return np.full(len(self.correct), np.nan)
        return np.asarray(self.correct, dtype=np.float64) / self.num_points


def score_pair(pair_id: str, category: str, pred: np.ndarray, gt: np.ndarray,
               norm_length: float, alphas: Sequence[float], rule: Rule = "lt") -> PairScore:
    """Score one pair's predictions (K, 2) against ground truth (K, 2)."""
    err = keypoint_errors(pred, gt)
    found = np.isfinite(err)
    return PairScore(pair_id, category, int(err.size),
                     tuple(int(c) for c in correct_counts(err, norm_length, alphas, rule)),
                     float(norm_length), float(err[found].mean()) if found.any() else float("nan"),
                     int(found.sum()))


@dataclass(frozen=True)
class PCKStats:
    """Averages over a set of pairs: per-keypoint and per-image PCK (A,) in [0, 1]."""

    per_keypoint: tuple[float, ...]
    per_image: tuple[float, ...]
    num_pairs: int
    num_points: int


def aggregate(scores: Iterable[PairScore], num_alphas: int) -> PCKStats:
    """Pooled per-keypoint and per-image PCK over ``scores`` (nan when there are no points)."""
    counts = np.zeros(num_alphas, dtype=np.float64)
    image_sum = np.zeros(num_alphas, dtype=np.float64)
    n_points = n_pairs = n_images = 0
    for s in scores:
        n_pairs += 1
        if s.num_points == 0:
            continue
        counts += np.asarray(s.correct, dtype=np.float64)
        image_sum += np.asarray(s.correct, dtype=np.float64) / s.num_points
        n_points += s.num_points
        n_images += 1
    nan = (float("nan"),) * num_alphas
    per_kp = tuple(float(v) for v in counts / n_points) if n_points else nan
    per_img = tuple(float(v) for v in image_sum / n_images) if n_images else nan
    return PCKStats(per_kp, per_img, n_pairs, n_points)


@dataclass(frozen=True)
class PCKTable:
    """Overall and per-category PCK at ``alphas``."""

    alphas: tuple[float, ...]
    overall: PCKStats
    per_category: Mapping[str, PCKStats]
    category_mean: tuple[float, ...]


def pck_table(scores: Sequence[PairScore], alphas: Sequence[float]) -> PCKTable:
    """Build the overall and per-category table from pair scores computed at ``alphas``."""
    alphas = tuple(float(a) for a in alphas)
    for s in scores:
        if len(s.correct) != len(alphas):
            raise ValueError(f"pair {s.pair_id} was scored at {len(s.correct)} alphas, "
                             f"expected {len(alphas)}")
    by_cat: dict[str, list[PairScore]] = {}
    for s in scores:
        by_cat.setdefault(s.category, []).append(s)
    per_cat = {c: aggregate(v, len(alphas)) for c, v in sorted(by_cat.items())}
    cat_pks = np.asarray([st.per_keypoint for st in per_cat.values() if st.num_points],
                         dtype=np.float64).reshape(-1, len(alphas))
    cat_mean = (tuple(float(v) for v in cat_pks.mean(axis=0)) if len(cat_pks)
                else (float("nan"),) * len(alphas))
    return PCKTable(alphas, aggregate(scores, len(alphas)), per_cat, cat_mean)
