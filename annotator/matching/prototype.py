"""Keypoint prototypes from several references, with a box-normalised spatial prior.

Zero-shot transfer from several labelled instances: each keypoint's query is the mean of the
references' descriptors at that keypoint (a *prototype*: the cells under the points, averaged,
L2-normalised), matched to every target cell in one product. An optional spatial prior adds a
Gaussian log-density of where the keypoint sits in the references' crops (box-normalised
coordinates, mean and spread over the references) to the similarity, so that among similar
cells the one at the expected place of the object wins (the "box copy" baseline as a prior).

Descriptors are (C, G, G) tensors; points are canvas pixel-centre coordinates (see
``annotator.matching.transfer.query_cells``: cell c covers canvas pixels c * cell - 0.5 ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from annotator.matching.transfer import _soft_argmax, cell_centres, query_cells


def _unit(d: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(d, torch.Tensor) or d.ndim != 3 or d.shape[1] != d.shape[2]:
        raise ValueError(f"{name} must be a (C, G, G) tensor, got "
                         f"{tuple(d.shape) if isinstance(d, torch.Tensor) else type(d)}")
    d = d.float()
    return d / d.norm(dim=0, keepdim=True).clamp_min(1e-8)


def sample_descriptors(desc: torch.Tensor, points_canvas: np.ndarray, cell: float
                       ) -> torch.Tensor:
    """(K, C) unit descriptors of ``desc`` (C, G, G) at the cells under canvas points (K, 2)
    (``query_cells``: the cell that holds the point, as the paper's query). (0, C) for no
    points. A bilinear blend of the four nearest cells was tried and dropped: on a byte copy
    of the reference it can prefer the neighbour cell, a whole cell away."""
    d = _unit(desc, "desc")
    c, g = d.shape[0], d.shape[1]
    pts = np.asarray(points_canvas, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return torch.zeros((0, c))
    cells = query_cells(pts, cell, g)
    return d[:, torch.from_numpy(cells[:, 1]), torch.from_numpy(cells[:, 0])].T.contiguous()


@dataclass(frozen=True)
class Prototypes:
    """Per keypoint (K): ``vectors`` (K, C) unit prototypes (zero where no reference has the
    keypoint), ``count`` (K,) references that have it, ``prior_mean`` / ``prior_std`` (K, 2)
    box-normalised position in the reference crops (x / w, y / h)."""

    vectors: torch.Tensor
    count: np.ndarray
    prior_mean: np.ndarray
    prior_std: np.ndarray

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def build_prototypes(samples: Sequence[torch.Tensor], valid: Sequence[np.ndarray],
                     normalised: Sequence[np.ndarray]) -> Prototypes:
    """Prototypes from R references: ``samples`` (K, C) descriptors each (sample_descriptors),
    ``valid`` (K,) labelled flags each, ``normalised`` (K, 2) box-normalised positions each."""
    if not samples or not (len(samples) == len(valid) == len(normalised)):
        raise ValueError("build_prototypes needs the same number (>= 1) of samples, valid "
                         "flags and positions")
    k, c = samples[0].shape
    s = torch.stack([x.float() for x in samples])  # (R, K, C)
    if s.shape[1:] != (k, c):
        raise ValueError("every reference must give (K, C) descriptors of the same shape")
    v = np.stack([np.asarray(x, bool).reshape(k) for x in valid])  # (R, K)
    n = np.stack([np.asarray(x, np.float64).reshape(k, 2) for x in normalised])  # (R, K, 2)
    w = torch.from_numpy(v.astype(np.float32))[:, :, None]
    mean = (s * w).sum(0)
    vectors = mean / mean.norm(dim=1, keepdim=True).clamp_min(1e-8)
    count = v.sum(0)
    seen = v.sum(0)[:, None]  # (K, 1) references that have each keypoint
    wv = v[:, :, None]
    prior_mean = np.where(seen > 0, np.where(wv, n, 0.0).sum(0) / np.maximum(seen, 1), 0.5)
    var = np.where(wv, (n - prior_mean) ** 2, 0.0).sum(0) / np.maximum(seen, 1)
    prior_std = np.where(seen > 0, np.sqrt(var), 0.0)
    return Prototypes(vectors, count, prior_mean, prior_std)


@dataclass(frozen=True)
class PrototypeMatch:
    """Per keypoint (K): ``canvas`` (K, 2) matched canvas points, ``similarity`` (K,) cosine
    of the prototype and the chosen cell, ``found`` (K,) bool (a prototype exists and a
    content cell was chosen)."""

    canvas: np.ndarray
    similarity: np.ndarray
    found: np.ndarray


def prior_log_density(protos: Prototypes, content: tuple[float, float, float, float],
                      grid: int, cell: float, min_std: float) -> torch.Tensor:
    """(K, G*G) Gaussian log-density (up to a constant) of each target cell under the spatial
    prior, for a target whose object frame covers canvas ``content`` = (x0, y0, w, h) px.
    ``min_std`` is added to the references' spread (box-normalised units)."""
    x0, y0, w, h = content
    centres = cell_centres(np.arange(grid, dtype=np.float64), cell)
    gx = (centres - x0) / max(w, 1e-9)
    gy = (centres - y0) / max(h, 1e-9)
    sx = np.sqrt(protos.prior_std[:, 0] ** 2 + min_std ** 2)[:, None]
    sy = np.sqrt(protos.prior_std[:, 1] ** 2 + min_std ** 2)[:, None]
    lx = -0.5 * ((gx[None, :] - protos.prior_mean[:, :1]) / sx) ** 2  # (K, G) over columns
    ly = -0.5 * ((gy[None, :] - protos.prior_mean[:, 1:]) / sy) ** 2  # (K, G) over rows
    logp = ly[:, :, None] + lx[:, None, :]  # (K, rows, cols)
    return torch.from_numpy(logp.reshape(len(protos), grid * grid)).float()


def box_layout(protos: Prototypes, content: tuple[float, float, float, float]) -> np.ndarray:
    """(K, 2) canvas points where the references put each keypoint, placed in ``content``
    (x0, y0, w, h): the box copy."""
    x0, y0, w, h = content
    return np.stack([x0 + protos.prior_mean[:, 0] * w, y0 + protos.prior_mean[:, 1] * h], 1)


def match_prototypes(protos: Prototypes, target: torch.Tensor, cell: float,
                     content_mask: np.ndarray | None = None,
                     prior: torch.Tensor | None = None, prior_weight: float = 0.0,
                     soft_window: int = 0, temperature: float = 0.02) -> PrototypeMatch:
    """Each prototype's best target cell (hard argmax of similarity + prior_weight * prior);
    ``content_mask`` (G, G) bool restricts the choice to cells on image content; ``prior``
    (K, G*G) from :func:`prior_log_density`. ``soft_window`` > 1 refines the argmax by the
    window soft-argmax of the similarity (``annotator.matching.transfer``'s, off by default)."""
    t = _unit(target, "target")
    g = t.shape[1]
    k = len(protos)
    if protos.vectors.shape[1:] != (t.shape[0],):
        raise ValueError(f"prototypes have {tuple(protos.vectors.shape)} channels, target "
                         f"{t.shape[0]}")
    if k == 0:
        return PrototypeMatch(np.zeros((0, 2)), np.zeros(0), np.zeros(0, bool))
    sim = protos.vectors @ t.flatten(1)  # (K, G*G)
    score = sim.clone()
    if prior is not None and prior_weight > 0:
        if prior.shape != sim.shape:
            raise ValueError(f"prior must be {tuple(sim.shape)}, got {tuple(prior.shape)}")
        score = score + prior_weight * prior
    if content_mask is not None:
        mask = torch.from_numpy(np.asarray(content_mask, bool).reshape(-1))
        if mask.shape[0] != g * g:
            raise ValueError(f"content_mask must be ({g}, {g})")
        score = score.masked_fill(~mask[None, :], float("-inf"))
    best = score.argmax(dim=1)
    best_sim = sim.gather(1, best[:, None])[:, 0]
    if soft_window > 1:
        cells = _soft_argmax(sim, best, g, soft_window, temperature).double().numpy()
    else:
        cells = torch.stack([best % g, best // g], dim=1).double().numpy()
    found = (protos.count > 0) & torch.isfinite(score.max(dim=1).values).numpy()
    return PrototypeMatch(cell_centres(cells, cell), best_sim.double().numpy(), found)


def keep_layout(protos: Prototypes, target: torch.Tensor, match: PrototypeMatch,
                layout: np.ndarray, cell: float, radius: float, margin: float
                ) -> PrototypeMatch:
    """Keep each keypoint at its ``layout`` point (K, 2 canvas: where the references put it in
    this target's box) unless ``match`` found a cell clearly more similar to its prototype:
    by more than ``margin`` (cosine) over the best cell within ``radius`` canvas pixels of the
    layout point (at least the cell under it). The prior says where the keypoint should be;
    features override it only when they disagree clearly (a box copy refined where the
    features are sure)."""
    t = _unit(target, "target")
    g = t.shape[1]
    lay = np.asarray(layout, np.float64).reshape(-1, 2)
    if len(lay) != len(protos) or len(match.canvas) != len(protos):
        raise ValueError(f"layout {lay.shape} and match ({len(match.canvas)}) must have one "
                         f"row per prototype ({len(protos)})")
    if len(lay) == 0:
        return match
    sim = (protos.vectors @ t.flatten(1)).double().numpy()  # (K, G*G)
    centres = cell_centres(np.arange(g, dtype=np.float64), cell)
    gx, gy = np.meshgrid(centres, centres)  # (rows, cols) -> flat index row * g + col
    d = np.hypot(gx.ravel()[None, :] - lay[:, :1], gy.ravel()[None, :] - lay[:, 1:])
    near = d <= max(radius, 0.75 * cell)
    local = np.where(near, sim, -np.inf).max(axis=1)
    ok = np.isfinite(lay).all(axis=1) & np.isfinite(local)
    move = ~ok | (match.similarity - np.where(ok, local, 0.0) > margin)
    canvas = np.where(move[:, None], match.canvas, np.where(ok[:, None], lay, 0.0))
    return PrototypeMatch(canvas, np.where(move, match.similarity, local), match.found)
