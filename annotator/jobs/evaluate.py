"""Benchmark evaluation: run a keypoint predictor over a :class:`PairDataset` and score PCK.

The core works on any :data:`Predictor` ``(src image (H, W, 3) uint8, trg image, src kps (K, 2))
-> predicted trg kps (K, 2)`` with NaN rows for points that were not found;
:func:`engine_predictor` adapts the correspondence engine to it. Progress and cancel go through a
duck-typed object: ``set_progress(done, total, message)`` and ``check()`` (see
:class:`annotator.jobs.progress.TaskState`), or ``report(done, total)`` plus a ``cancelled``
attribute / ``is_cancelled()`` method.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from annotator.io.datasets import (
    DatasetFormatError,
    EvalProtocol,
    ImageRef,
    PairDataset,
    load_rgb,
)
from annotator.jobs.pck import (
    PairScore,
    PCKTable,
    Rule,
    check_rule,
    pck_table,
    score_pair,
)
from annotator.jobs.progress import Cancelled

log = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
CURVE_ALPHAS = tuple(round(0.01 * i, 2) for i in range(1, 31))  # 0.01 .. 0.30


def engine_predictor(engine: Any, flip_pairs: Sequence[tuple[int, int]] = ()) -> Predictor:
    """Adapt ``engine.transfer(ref_image, ref_points, target_image, flip_pairs=...)`` (returning
    ``.points`` (K, 2) and ``.found`` (K,)) to a :data:`Predictor`; not-found points are NaN."""
    pairs = tuple((int(a), int(b)) for a, b in flip_pairs)

    def predict(src: np.ndarray, trg: np.ndarray, kps: np.ndarray) -> np.ndarray:
        kps = np.asarray(kps, dtype=np.float64).reshape(-1, 2)
        if len(kps) == 0:
            return np.zeros((0, 2))
        result = engine.transfer(src, kps, trg, flip_pairs=pairs)
        points = np.array(result.points, dtype=np.float64).reshape(-1, 2)
        found = np.asarray(getattr(result, "found", np.ones(len(points), bool)), dtype=bool)
        points[~found] = np.nan
        return points

    return predict


class CropPredictor:
    """Object-centric transfer for the evaluator: crop source and target around their boxes
    (each enlarged by ``margin`` per side and clipped, DESIGN.md section 10), run ``predictor``
    on the crops, map the points back; a point outside the target crop is not found (NaN).
    :func:`evaluate` calls it with the pair's ``src_bbox`` and ``trg_bbox`` (x, y, w, h)."""

    uses_boxes = True

    def __init__(self, predictor: Predictor, margin: float = 0.15) -> None:
        if margin < 0:
            raise ValueError(f"crop margin {margin} must be >= 0")
        self.predictor = predictor
        self.margin = float(margin)

    def __call__(self, src: np.ndarray, trg: np.ndarray, kps: np.ndarray,
                 src_box: tuple[float, float, float, float],
                 trg_box: tuple[float, float, float, float]) -> np.ndarray:
        from annotator.features.crop import CropRect

        kps = np.asarray(kps, dtype=np.float64).reshape(-1, 2)
        rs = CropRect.around(src_box, src.shape[1], src.shape[0], self.margin)
        rt = CropRect.around(trg_box, trg.shape[1], trg.shape[0], self.margin)
        pred = np.asarray(self.predictor(rs.apply(src), rt.apply(trg), rs.to_crop(kps)),
                          dtype=np.float64).reshape(-1, 2)
        out = rt.to_image(pred)
        out[~rt.contains(out)] = np.nan
        return out


def _predict(predictor: Predictor, sample: Any, src: np.ndarray, trg: np.ndarray
             ) -> np.ndarray:
    if not getattr(predictor, "uses_boxes", False):
        return predictor(src, trg, sample.src_kps)
    boxes = sample.meta.get("src_bbox"), sample.meta.get("trg_bbox")
    if boxes[0] is None or boxes[1] is None:
        raise ValueError(f"pair {sample.pair_id} has no source and target boxes: crop "
                         "transfer needs a dataset with instance boxes (SPair-71k, COCO)")
    return predictor(src, trg, sample.src_kps, *boxes)  # type: ignore[call-arg]


@dataclass(frozen=True)
class EvalConfig:
    """Alphas of the tables (None: the protocol's), comparison rule (None: the protocol's),
    the alpha grid of the PCK curve, and an optional pair limit (round-robin over categories)."""

    alphas: tuple[float, ...] | None = None
    rule: Rule | None = None
    curve_alphas: tuple[float, ...] = CURVE_ALPHAS
    limit: int | None = None
    image_cache: int = 8

    def __post_init__(self) -> None:
        if self.rule is not None:
            check_rule(self.rule)
        for a in (self.alphas or ()) + self.curve_alphas:
            if not a > 0:
                raise ValueError(f"alphas must be > 0, got {a}")


@dataclass(frozen=True)
class EvalResult:
    """Scores of one run: ``table`` at the report alphas, ``curve`` on the curve grid."""

    dataset: str
    split: str
    protocol: EvalProtocol
    rule: Rule
    alphas: tuple[float, ...]
    curve_alphas: tuple[float, ...]
    scores: tuple[PairScore, ...]  # at ``alphas`` (pair-level detail for the JSON)
    table: PCKTable
    curve: PCKTable
    total_pairs: int
    elapsed_s: float
    settings: Mapping[str, Any] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()  # "pair: reason" for pairs whose image cannot be read


def _report(progress: Any, done: int, total: int, message: str) -> None:
    if progress is None:
        return
    if hasattr(progress, "set_progress"):
        progress.set_progress(done, total, message)
    elif hasattr(progress, "report"):
        progress.report(done, total)


def _check(progress: Any) -> None:
    if progress is None:
        return
    if hasattr(progress, "check"):
        progress.check()
        return
    flag = getattr(progress, "is_cancelled", None)
    cancelled = flag() if callable(flag) else bool(getattr(progress, "cancelled", False))
    if cancelled:
        raise Cancelled()


class _ImageCache:
    """Small LRU of decoded images keyed by path (pairs often share an image)."""

    def __init__(self, size: int) -> None:
        self.size = max(0, size)
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, ref: ImageRef) -> np.ndarray:
        if isinstance(ref, np.ndarray) or self.size == 0:
            return load_rgb(ref)
        key = str(Path(ref))
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        image = load_rgb(ref)
        self._items[key] = image
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return image


def _slice(score: PairScore, idx: slice) -> PairScore:
    return PairScore(score.pair_id, score.category, score.num_points, score.correct[idx],
                     score.norm_length, score.mean_error, score.num_found)


def score_sample(sample: Any, predictor: Predictor, alphas: Sequence[float], rule: Rule,
                 images: _ImageCache | None = None) -> PairScore:
    """Predict one loaded pair (a :class:`~annotator.io.datasets.PairSample`) and score it at
    ``alphas`` (shared by :func:`evaluate` and the Ray run)."""
    images = images or _ImageCache(0)
    src, trg = images.get(sample.src_image), images.get(sample.trg_image)
    pred = np.asarray(_predict(predictor, sample, src, trg), dtype=np.float64)
    if pred.shape != sample.trg_kps.shape:
        raise ValueError(f"predictor returned shape {pred.shape} for pair {sample.pair_id}, "
                         f"expected {sample.trg_kps.shape}")
    return score_pair(sample.pair_id, sample.category, pred, sample.trg_kps,
                      sample.norm_length, tuple(alphas), rule)


def eval_alphas(dataset: PairDataset, config: EvalConfig
                ) -> tuple[tuple[float, ...], tuple[float, ...], Rule]:
    """(table alphas, curve alphas, rule) of a run: the config's or the protocol's."""
    alphas = tuple(float(a) for a in (config.alphas or dataset.protocol.alphas))
    rule = check_rule(config.rule or dataset.protocol.rule)
    return alphas, tuple(float(a) for a in config.curve_alphas), rule


def summarize(dataset: PairDataset, scores: Sequence[PairScore], config: EvalConfig,
              elapsed: float, settings: Mapping[str, Any] | None = None,
              skipped: Sequence[str] = ()) -> EvalResult:
    """The :class:`EvalResult` of ``scores`` (each scored at table + curve alphas);
    ``skipped``: "pair: reason" of the pairs left out."""
    alphas, curve, rule = eval_alphas(dataset, config)
    head = slice(0, len(alphas))
    tail = slice(len(alphas), len(alphas) + len(curve))
    table_scores = tuple(_slice(s, head) for s in scores)
    result = EvalResult(
        dataset=dataset.name, split=dataset.split, protocol=dataset.protocol, rule=rule,
        alphas=alphas, curve_alphas=curve, scores=table_scores,
        table=pck_table(table_scores, alphas),
        curve=pck_table([_slice(s, tail) for s in scores], curve), total_pairs=len(dataset),
        elapsed_s=elapsed, settings=dict(settings or {}), skipped=tuple(skipped))
    pck = result.table.overall.per_keypoint
    log.info("%s: %d pairs in %.1f s; per-keypoint PCK %s", dataset.name, len(scores), elapsed,
             ", ".join(f"@{a:g}={v:.4f}" for a, v in zip(alphas, pck)))
    return result


def evaluate(dataset: PairDataset, predictor: Predictor, config: EvalConfig | None = None, *,
             progress: Any = None, settings: Mapping[str, Any] | None = None) -> EvalResult:
    """Run ``predictor`` on every pair of ``dataset`` (after ``config.limit``) and score it.

    Raises :class:`annotator.jobs.progress.Cancelled` when the progress object asks to stop
    (checked between pairs).
    """
    config = config or EvalConfig()
    alphas, curve, rule = eval_alphas(dataset, config)
    subset = dataset.limited(config.limit)
    total = len(subset)
    cache = _ImageCache(config.image_cache)
    scores: list[PairScore] = []
    skipped: list[str] = []
    start = time.perf_counter()
    _report(progress, 0, total, f"{dataset.name}: 0/{total} pairs")
    for done, record in enumerate(subset.records, start=1):
        _check(progress)
        sample = record.load()
        try:
            scores.append(score_sample(sample, predictor, alphas + curve, rule, cache))
        except DatasetFormatError as exc:  # one unreadable image: skip its pair, go on
            log.warning("pair %s skipped: %s", sample.pair_id, exc)
            skipped.append(f"{sample.pair_id}: {exc}")
        _report(progress, done, total, f"{dataset.name}: {done}/{total} pairs")
    return summarize(dataset, scores, config, time.perf_counter() - start, settings, skipped)
