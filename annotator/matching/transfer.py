"""Vectorised keypoint transfer on grid descriptors (DESIGN.md section 3, "Matching").

Descriptors are (C, G, G) tensors covering a letterbox canvas of S px (cell c = S / G px).
Query cell = floor(u / c) clamped; cosine similarity to all target cells in one matmul; hard
argmax -> cell centre c * cell + c / 2; optional window soft-argmax; cycle consistency (match back
to the reference, distance in cells); confidence = max(sim, 0) * exp(-cycle / cycle_scale).

Multi-reference rule (``combine``): per keypoint, the found match with the highest confidence
across references wins; a keypoint is found if any reference finds it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from annotator.features.letterbox import Letterbox


@dataclass(frozen=True)
class MatchParams:
    """``soft_window`` 0 disables soft-argmax; ``review_threshold`` flags low confidence."""

    soft_window: int = 11
    temperature: float = 0.02
    cycle_scale: float = 2.0
    review_threshold: float = 0.5
    #: flip choice: "cycle" (mean cycle error of the flipped keypoints, then similarity) or
    #: "mutual_nn" (GeoAware-SC: mean distance of mutual nearest neighbours, all cells)
    flip_criterion: str = "cycle"

    def __post_init__(self) -> None:
        if self.flip_criterion not in ("cycle", "mutual_nn"):
            raise ValueError(f"flip_criterion must be 'cycle' or 'mutual_nn', got "
                             f"{self.flip_criterion!r}")
        if self.soft_window < 0 or (self.soft_window and self.soft_window % 2 == 0):
            raise ValueError(f"soft_window must be 0 or odd, got {self.soft_window}")
        if self.temperature <= 0 or self.cycle_scale <= 0:
            raise ValueError("temperature and cycle_scale must be > 0")


@dataclass(frozen=True)
class TransferResult:
    """Per keypoint (K): ``points`` (K, 2) float64 in target original pixels (NaN if not found),
    ``similarity`` (K,), ``cycle_error`` (K,) in cells, ``confidence`` (K,) in [0, 1],
    ``found`` (K,) bool, ``needs_review`` (K,) bool; ``flipped`` whether the flipped reference
    won; ``reference`` (K,) int index of the reference used (multi-reference, else 0)."""

    points: np.ndarray
    similarity: np.ndarray
    cycle_error: np.ndarray
    confidence: np.ndarray
    found: np.ndarray
    needs_review: np.ndarray
    flipped: bool = False
    reference: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @classmethod
    def empty(cls) -> TransferResult:
        z = np.zeros(0)
        return cls(np.zeros((0, 2)), z, z.copy(), z.copy(), np.zeros(0, bool), np.zeros(0, bool),
                   reference=np.zeros(0, np.int64))


def _check_desc(d: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(d, torch.Tensor) or d.ndim != 3 or d.shape[1] != d.shape[2]:
        raise ValueError(f"{name} must be a (C, G, G) tensor, got "
                         f"{tuple(d.shape) if isinstance(d, torch.Tensor) else type(d)}")
    d = d.float()
    return d / d.norm(dim=0, keepdim=True).clamp_min(1e-8)


def _flat(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).T  # (G*G, C)


def query_cells(points_canvas: np.ndarray, cell: float, grid: int) -> np.ndarray:
    """(K, 2) canvas points -> (K, 2) int cells (col, row), clamped to the grid.

    Canvas coordinates are pixel-centre coordinates (letterbox convention): cell c covers
    canvas pixels c * cell .. (c + 1) * cell - 1, i.e. centre coordinates from c * cell - 0.5,
    so the cell is floor((u + 0.5) / cell).
    """
    p = np.asarray(points_canvas, dtype=np.float64).reshape(-1, 2)
    return np.clip(np.floor((p + 0.5) / cell), 0, grid - 1).astype(np.int64)


def cell_centres(cells: np.ndarray, cell: float) -> np.ndarray:
    """(K, 2) (possibly fractional) cells -> canvas pixel-centre coordinates of their centres:
    c * cell + cell / 2 - 0.5 (14 c + 6.5 for 14-pixel cells)."""
    return np.asarray(cells, dtype=np.float64) * cell + cell / 2 - 0.5


def similarity_heatmap(ref_desc: torch.Tensor, tgt_desc: torch.Tensor, point: np.ndarray,
                       cell: float) -> np.ndarray:
    """Cosine similarity (G, G) of the reference cell under canvas ``point`` (2,) to every
    target cell."""
    r, t = _check_desc(ref_desc, "ref_desc"), _check_desc(tgt_desc, "tgt_desc")
    if r.shape != t.shape:
        raise ValueError(f"descriptor shapes differ: {tuple(r.shape)} vs {tuple(t.shape)}")
    g = r.shape[1]
    cx, cy = query_cells(np.asarray(point, dtype=np.float64).reshape(1, 2), cell, g)[0]
    q = r[:, cy, cx]
    return (q @ t.flatten(1)).reshape(g, g).numpy()


def mutual_nn_distance(sim: torch.Tensor) -> float:
    """GeoAware-SC's mask-free pose score from the (N, M) cosine similarities of unit
    descriptors (reference cells x target cells): Euclidean distances sqrt(2 - 2 sim); mutual
    nearest neighbours (a row's argmin whose column argmin is that row); the mean of the row
    minima over reference cells in a mutual pair. Lower is better; inf for an empty matrix."""
    if sim.ndim != 2:
        raise ValueError(f"sim must be (N, M), got {tuple(sim.shape)}")
    if sim.numel() == 0:
        return float("inf")
    dist = (2.0 - 2.0 * sim.float()).clamp_min(0).sqrt()
    row_min, row_arg = dist.min(dim=1)
    col_arg = dist.argmin(dim=0)
    mutual = col_arg[row_arg] == torch.arange(dist.shape[0], device=dist.device)
    return float(row_min[mutual].mean())  # the global minimum is always a mutual pair


def mirrored_queries(points: np.ndarray, valid: np.ndarray, perm: np.ndarray, width: int
                     ) -> np.ndarray:
    """(K, 2) query points in the horizontally flipped reference (original pixels, width
    ``width``): keypoint a is queried at the mirror x' = width - 1 - x of its partner perm[a]
    when both are labelled (GeoAware-SC's permutation of fully visible groups), else at its
    own mirror."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    k = len(pts)
    perm = np.asarray(perm, dtype=np.int64)
    valid = np.asarray(valid, dtype=bool)
    if perm.shape != (k,) or valid.shape != (k,):
        raise ValueError(f"perm and valid must have shape ({k},)")
    src = np.where(valid & valid[perm], perm, np.arange(k))
    out = pts[src].copy()
    out[:, 0] = width - 1 - out[:, 0]
    return out


def _soft_argmax(sim: torch.Tensor, idx: torch.Tensor, g: int, window: int,
                 temperature: float) -> torch.Tensor:
    """sim (K, G*G), idx (K,) argmax -> (K, 2) expected (col, row) in cells within the window."""
    r = window // 2
    off = torch.arange(-r, r + 1)
    row, col = idx // g, idx % g
    rows = row[:, None, None] + off[None, :, None]  # (K, W, 1)
    cols = col[:, None, None] + off[None, None, :]  # (K, 1, W)
    rows, cols = torch.broadcast_tensors(rows, cols)
    valid = (rows >= 0) & (rows < g) & (cols >= 0) & (cols < g)
    flat = (rows.clamp(0, g - 1) * g + cols.clamp(0, g - 1)).flatten(1)
    vals = torch.gather(sim, 1, flat).masked_fill(~valid.flatten(1), float("-inf"))
    w = torch.softmax(vals / temperature, dim=1)
    ex = (w * cols.flatten(1).float()).sum(1)
    ey = (w * rows.flatten(1).float()).sum(1)
    return torch.stack([ex, ey], dim=1)


@dataclass(frozen=True)
class _Raw:
    canvas: np.ndarray  # (K, 2) target canvas points
    sim: np.ndarray
    cycle: np.ndarray


def match_similarity(sim: torch.Tensor, back: Callable[[torch.Tensor], torch.Tensor],
                     qidx: torch.Tensor, g: int, cell: float, params: MatchParams) -> _Raw:
    """Post-processing of one direction of ``transfer`` on a precomputed similarity ``sim``
    (K, G*G) of the K query cells ``qidx`` (flat row * G + col) to every target cell: hard argmax,
    optional soft-argmax, and cycle consistency, where ``back(best)`` gives the (K, G*G)
    similarity of the target cells ``best`` (K,) to every reference cell."""
    best_sim, best = sim.max(dim=1)
    if params.soft_window > 1:
        pos = _soft_argmax(sim, best, g, params.soft_window, params.temperature)
    else:
        pos = torch.stack([best % g, best // g], dim=1).float()
    canvas = cell_centres(pos.double().numpy(), cell)
    back_idx = back(best).argmax(dim=1)  # cycle: target cell -> reference
    dx = (back_idx % g - qidx % g).double()
    dy = (back_idx // g - qidx // g).double()
    cycle = torch.sqrt(dx * dx + dy * dy).numpy()
    return _Raw(canvas, best_sim.double().numpy(), cycle)


def _match(ref: torch.Tensor, tgt: torch.Tensor, cells: np.ndarray, cell: float,
           params: MatchParams) -> _Raw:
    g = ref.shape[1]
    rf, tf = _flat(ref), _flat(tgt)  # (N, C)
    qidx = torch.from_numpy(cells[:, 1] * g + cells[:, 0])
    sim = rf[qidx] @ tf.T  # (K, N)
    return match_similarity(sim, lambda best: tf[best] @ rf.T, qidx, g, cell, params)


def _finish(raw: _Raw, tgt_lb: Letterbox, valid: np.ndarray, params: MatchParams,
            flipped: bool) -> TransferResult:
    inside = tgt_lb.contains(raw.canvas)
    found = valid & inside
    pts = tgt_lb.from_canvas(raw.canvas)
    pts[:, 0] = np.clip(pts[:, 0], 0, tgt_lb.width - 1)
    pts[:, 1] = np.clip(pts[:, 1], 0, tgt_lb.height - 1)
    pts[~found] = np.nan
    conf = np.clip(raw.sim, 0, 1) * np.exp(-raw.cycle / params.cycle_scale)
    conf = np.where(found, conf, 0.0)
    return TransferResult(points=pts, similarity=raw.sim, cycle_error=raw.cycle, confidence=conf,
                          found=found, needs_review=conf < params.review_threshold,
                          flipped=flipped, reference=np.zeros(len(pts), np.int64))


def transfer(ref_desc: torch.Tensor, tgt_desc: torch.Tensor, ref_points: np.ndarray,
             ref_letterbox: Letterbox, tgt_letterbox: Letterbox,
             params: MatchParams | None = None, ref_valid: np.ndarray | None = None,
             flipped_ref_desc: torch.Tensor | None = None,
             flip_perm: Sequence[int] | np.ndarray | None = None,
             flipped_tgt_desc: torch.Tensor | None = None) -> TransferResult:
    """Move reference keypoints (K, 2) in reference original pixels to the target.

    ``ref_valid`` (K,) bool marks labelled reference points (others are not found).
    Flip-aware: given ``flipped_ref_desc`` (descriptor of the horizontally mirrored reference)
    and ``flip_perm`` (K,) (index of each keypoint's left/right partner, itself if none), also
    match keypoint k from the mirror position of its partner in the flipped reference and keep
    the flipped result when ``params.flip_criterion`` says so: "cycle", its mean cycle distance
    is smaller (on a tie: its mean similarity is higher); "mutual_nn" (GeoAware-SC), the mean
    mutual-nearest-neighbour distance of all flipped-reference cells to the target is smaller
    (``mutual_nn_distance``). Keypoints the flipped match cannot place (partner unlabelled)
    keep their direct match.
    ``flipped_tgt_desc`` is the target's descriptor computed together with the flipped
    reference, for pair-dependent fusions (copca projects each pair on its own PCA basis);
    default ``tgt_desc``.
    """
    params = params or MatchParams()
    ref, tgt = _check_desc(ref_desc, "ref_desc"), _check_desc(tgt_desc, "tgt_desc")
    if ref.shape != tgt.shape:
        raise ValueError(f"descriptor shapes differ: {tuple(ref.shape)} vs {tuple(tgt.shape)}")

    def match(cells: np.ndarray, cell: float, flipped: bool) -> _Raw:
        if not flipped:
            return _match(ref, tgt, cells, cell, params)
        fref = _check_desc(flipped_ref_desc, "flipped_ref_desc")  # type: ignore[arg-type]
        if fref.shape != ref.shape:
            raise ValueError("flipped_ref_desc must have the shape of ref_desc")
        ftgt = (tgt if flipped_tgt_desc is None
                else _check_desc(flipped_tgt_desc, "flipped_tgt_desc"))
        if ftgt.shape != tgt.shape:
            raise ValueError("flipped_tgt_desc must have the shape of tgt_desc")
        return _match(fref, ftgt, cells, cell, params)

    def score(flipped: bool) -> float:
        r = _check_desc(flipped_ref_desc, "flipped_ref_desc") if flipped else ref  # type: ignore[arg-type]
        t = tgt if not flipped or flipped_tgt_desc is None else _check_desc(flipped_tgt_desc,
                                                                            "flipped_tgt_desc")
        return mutual_nn_distance(_flat(r) @ _flat(t).T)

    return transfer_with(match, ref.shape[1], ref_points, ref_letterbox, tgt_letterbox, params,
                         ref_valid, flipped_ref_desc is not None, flip_perm, score)


def transfer_with(match: Callable[[np.ndarray, float, bool], _Raw], g: int,
                  ref_points: np.ndarray, ref_letterbox: Letterbox, tgt_letterbox: Letterbox,
                  params: MatchParams, ref_valid: np.ndarray | None = None, flip: bool = False,
                  flip_perm: Sequence[int] | np.ndarray | None = None,
                  flip_score: Callable[[bool], float] | None = None) -> TransferResult:
    """``transfer`` on any matcher: ``match(cells, cell, flipped)`` -> _Raw for the (K, 2) query
    cells (col, row) of the reference (``flipped``: of the mirrored reference) on a ``g`` x ``g``
    grid of ``cell`` px (see ``match_similarity``). Validation, query cells, the flip choice and
    the result are exactly ``transfer``'s. ``flip_score(flipped)`` is the mutual-NN distance of
    the (flipped) reference to the target, needed when ``params.flip_criterion`` is
    "mutual_nn"."""
    params = params or MatchParams()
    pts = np.asarray(ref_points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"ref_points must have shape (K, 2), got {pts.shape}")
    k = pts.shape[0]
    valid = np.ones(k, bool) if ref_valid is None else np.asarray(ref_valid, bool)
    if valid.shape != (k,):
        raise ValueError(f"ref_valid must have shape ({k},), got {valid.shape}")
    valid = valid & np.isfinite(pts).all(axis=1)
    if k == 0:
        return TransferResult.empty()
    if abs(ref_letterbox.canvas / g - tgt_letterbox.canvas / g) > 1e-9:
        raise ValueError("reference and target canvases differ")
    cell = ref_letterbox.canvas / g
    safe = np.where(np.isfinite(pts), pts, 0.0)
    cells = query_cells(ref_letterbox.to_canvas(safe), cell, g)
    result = _finish(match(cells, cell, False), tgt_letterbox, valid, params, False)
    if not flip:
        return result
    perm = np.arange(k) if flip_perm is None else np.asarray(flip_perm, dtype=np.int64)
    if perm.shape != (k,) or (k and (perm.min() < 0 or perm.max() >= k)):
        raise ValueError(f"flip_perm must be a permutation of shape ({k},)")
    # keypoint k in the mirrored reference sits at the mirror of its partner's position
    fpts = mirrored_queries(safe, valid, perm, ref_letterbox.width)
    fcells = query_cells(ref_letterbox.to_canvas(fpts), cell, g)
    fvalid = valid[perm] & valid  # only keypoints with a labelled partner (or self-symmetric)
    fres = _finish(match(fcells, cell, True), tgt_letterbox, fvalid, params, True)
    use = fvalid
    if not use.any():
        return result
    if params.flip_criterion == "mutual_nn":
        if flip_score is None:
            raise ValueError("flip_criterion 'mutual_nn' needs a flip_score")
        better = flip_score(True) < flip_score(False)  # one decision per pair
    else:
        # the more cycle-consistent result wins; ties (whole-cell cycle errors are often both
        # 0) go to the more similar one
        fc, dc = fres.cycle_error[use].mean(), result.cycle_error[use].mean()
        better = fc < dc or (fc == dc and
                             fres.similarity[use].mean() > result.similarity[use].mean())
    if not better:
        return result
    keep = valid & ~fvalid  # the flipped match cannot place these: keep the direct match
    if not keep.any():
        return fres

    def pick(name: str) -> np.ndarray:
        a, b = getattr(result, name), getattr(fres, name)
        return np.where(keep[:, None] if a.ndim == 2 else keep, a, b)

    return TransferResult(points=pick("points"), similarity=pick("similarity"),
                          cycle_error=pick("cycle_error"), confidence=pick("confidence"),
                          found=pick("found"), needs_review=pick("needs_review"), flipped=True,
                          reference=fres.reference)


def combine(results: Sequence[TransferResult]) -> TransferResult:
    """Multi-reference rule: per keypoint keep the found match with the highest confidence
    (ties: the earlier reference). ``reference`` records which result was used."""
    if not results:
        raise ValueError("combine needs at least one result")
    k = len(results[0])
    if any(len(r) != k for r in results):
        raise ValueError("all results must have the same number of keypoints")
    if k == 0:
        return TransferResult.empty()
    conf = np.stack([np.where(r.found, r.confidence, -1.0) for r in results])  # (R, K)
    pick = conf.argmax(axis=0)
    idx = np.arange(k)

    def take(name: str) -> np.ndarray:
        return np.stack([getattr(r, name) for r in results])[pick, idx]

    return TransferResult(points=take("points"), similarity=take("similarity"),
                          cycle_error=take("cycle_error"), confidence=take("confidence"),
                          found=take("found"), needs_review=take("needs_review"),
                          flipped=any(r.flipped for r in results), reference=pick)
