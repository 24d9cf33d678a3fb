"""Per-keypoint choice between the learned head and zero-shot transfer, by calibrated
confidence (numpy only).

Each source's raw confidence (the head's readout-window softmax mass, the transfer's
similarity x cycle score) is mapped through its own :class:`Calibration` (a monotone
piecewise-linear map to "probability that the point is right", fitted on labelled data with
:func:`fit_calibration`); per keypoint the source with the higher calibrated confidence wins,
and the result records which one (``source``) with the calibrated confidence. Once the head
learned from :data:`HEAD_ONLY_FROM` images it wins wherever it has a point (measured).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SOURCE_NONE, SOURCE_TRANSFER, SOURCE_HEAD = 0, 1, 2
SOURCE_NAMES = ("none", "transfer", "head")


@dataclass(frozen=True)
class Calibration:
    """Monotone piecewise-linear map of a raw confidence to [0, 1] through the knots
    (``xs`` increasing, ``ys`` non-decreasing, both in [0, 1]); the default is the identity."""

    xs: tuple[float, ...] = (0.0, 1.0)
    ys: tuple[float, ...] = (0.0, 1.0)

    def __post_init__(self) -> None:
        xs, ys = np.asarray(self.xs, float), np.asarray(self.ys, float)
        if len(xs) < 2 or xs.shape != ys.shape:
            raise ValueError("a calibration needs two or more (x, y) knots")
        if np.any(np.diff(xs) <= 0) or np.any(np.diff(ys) < 0):
            raise ValueError("calibration knots must increase in x and not decrease in y")
        if ys.min() < 0 or ys.max() > 1:
            raise ValueError("calibrated confidences must lie in [0, 1]")

    def __call__(self, confidence: np.ndarray) -> np.ndarray:
        c = np.asarray(confidence, float)
        out = np.interp(np.nan_to_num(c, nan=-np.inf), self.xs, self.ys)
        return np.where(np.isfinite(c), out, 0.0)


def fit_calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = 8) -> Calibration:
    """A monotone calibration from raw confidences (M,) and whether each point was right (M,):
    the share right per quantile bin (at the bin's mean confidence), made non-decreasing."""
    c = np.asarray(confidence, float).ravel()
    ok = np.asarray(correct, bool).ravel()
    keep = np.isfinite(c)
    c, ok = c[keep], ok[keep]
    if len(c) < 2 * bins:
        raise ValueError(f"{len(c)} points are too few to calibrate with {bins} bins")
    order = np.argsort(c, kind="stable")
    xs, ys = [], []
    for part in np.array_split(order, bins):
        xs.append(float(c[part].mean()))
        ys.append(float(ok[part].mean()))
    ys = list(np.maximum.accumulate(ys))
    # merge bins with equal mean confidence; pin the ends to the raw range [0, 1]
    kx, ky = [], []
    for x, y in zip(xs, ys):
        if kx and x <= kx[-1]:
            ky[-1] = max(ky[-1], y)
        else:
            kx.append(x)
            ky.append(y)
    if kx[0] > 0:
        kx.insert(0, 0.0)
        ky.insert(0, ky[0])
    if kx[-1] < 1:
        kx.append(1.0)
        ky.append(ky[-1])
    return Calibration(tuple(kx), tuple(ky))


#: fitted by ``benchmarks/head_bench.py`` on the DLC fixtures (openfield and Reaching, k = 3, 5,
#: 10, 20 training images, DINOv2-S fast preset, dino fusion, label-box crops): the share of
#: points within PCK@0.1 of the keypoint box per raw-confidence decile (BENCHMARKS.md "Learning
#: from corrections"). The transfer's raw confidence is over-confident against the head's.
HEAD_CALIBRATION = Calibration(
    (0.0, 0.168, 0.279, 0.356, 0.419, 0.481, 0.537, 0.596, 0.669, 0.746, 0.878, 1.0),
    (0.286, 0.286, 0.378, 0.459, 0.643, 0.786, 0.786, 0.786, 0.878, 0.878, 0.878, 0.878))
TRANSFER_CALIBRATION = Calibration(
    (0.0, 0.204, 0.383, 0.55, 0.63, 0.942, 0.96, 0.969, 0.975, 0.982, 0.988, 1.0),
    (0.245, 0.245, 0.378, 0.378, 0.51, 0.51, 0.51, 0.51, 0.51, 0.602, 0.673, 0.673))

#: from this many training images on, the head's point wins wherever it has one: measured on the
#: fixtures, every calibrated combination then lost to the head alone (Reaching k = 10: 65.6-72.0
#: against 76.8 % box PCK@0.1)
HEAD_ONLY_FROM = 10


@dataclass(frozen=True)
class Combined:
    """Per keypoint (K): ``points`` (K, 2) (NaN when neither source found it), calibrated
    ``confidence`` (K,), ``found`` (K,) bool, ``source`` (K,) int8 (SOURCE_* codes)."""

    points: np.ndarray
    confidence: np.ndarray
    found: np.ndarray
    source: np.ndarray

    def source_names(self) -> list[str]:
        return [SOURCE_NAMES[s] for s in self.source]


def combine_head_and_transfer(
    transfer_points: np.ndarray, transfer_confidence: np.ndarray, transfer_found: np.ndarray,
    head_points: np.ndarray | None = None, head_confidence: np.ndarray | None = None, *,
    head_calibration: Calibration = HEAD_CALIBRATION,
    transfer_calibration: Calibration = TRANSFER_CALIBRATION,
    num_images: int | None = None, head_only_from: int = HEAD_ONLY_FROM,
) -> Combined:
    """Per keypoint the source with the higher calibrated confidence (ties: the head); without
    a head (None: too few reviewed images) every point comes from the transfer. With
    ``num_images`` (what the head was trained on) >= ``head_only_from``, the head's point wins
    wherever it has one. Points are in any one pixel frame shared by both sources (K, 2)."""
    tp = np.asarray(transfer_points, float).reshape(-1, 2)
    k = len(tp)
    tf = np.asarray(transfer_found, bool).reshape(k) & np.all(np.isfinite(tp), axis=1)
    tc = np.where(tf, transfer_calibration(np.asarray(transfer_confidence, float).reshape(k)),
                  -1.0)
    if head_points is None:
        src = np.where(tf, SOURCE_TRANSFER, SOURCE_NONE).astype(np.int8)
        pts = np.where(tf[:, None], tp, np.nan)
        return Combined(pts, np.maximum(tc, 0.0), tf, src)
    if head_confidence is None:
        raise ValueError("head points need head confidences")
    hp = np.asarray(head_points, float).reshape(-1, 2)
    if len(hp) != k:
        raise ValueError(f"head has {len(hp)} keypoints, transfer {k}")
    hraw = np.asarray(head_confidence, float).reshape(k)
    hf = np.all(np.isfinite(hp), axis=1) & np.isfinite(hraw)
    hc = np.where(hf, head_calibration(hraw), -1.0)
    head_only = num_images is not None and num_images >= head_only_from
    use_head = hf & ((hc >= tc) | head_only)
    found = hf | tf
    src = np.where(use_head, SOURCE_HEAD, np.where(tf, SOURCE_TRANSFER, SOURCE_NONE))
    pts = np.where(use_head[:, None], hp, np.where(tf[:, None], tp, np.nan))
    conf = np.maximum(np.where(use_head, hc, tc), 0.0)
    return Combined(pts, conf, found, src.astype(np.int8))
