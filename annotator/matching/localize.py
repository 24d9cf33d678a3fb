"""Boxes without a detector: find the labelled kind of object in a target by feature similarity.

The reference instances give two prototypes on whole-image descriptors: the mean descriptor of
the cells inside their boxes (object) and of the content cells well outside them (background).
A target cell scores ``cos(object) - cos(background)``; the positive cells form connected
regions, and each strong region, well separated from the stronger ones, is one object: its box
is the region's extent. Descriptors are (C, G, G); boxes are canvas pixel rectangles
(x0, y0, x1, y1) in pixel-centre coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from annotator.matching.transfer import cell_centres

CanvasBox = tuple[float, float, float, float]  # x0, y0, x1, y1 (canvas px)


def _unit(d: torch.Tensor) -> torch.Tensor:
    if not isinstance(d, torch.Tensor) or d.ndim != 3 or d.shape[1] != d.shape[2]:
        raise ValueError(f"descriptor must be a (C, G, G) tensor, got "
                         f"{tuple(d.shape) if isinstance(d, torch.Tensor) else type(d)}")
    d = d.float()
    return d / d.norm(dim=0, keepdim=True).clamp_min(1e-8)


def cells_in_boxes(boxes: Sequence[CanvasBox], grid: int, cell: float) -> np.ndarray:
    """(G, G) bool: cells whose centre lies inside any canvas box."""
    c = cell_centres(np.arange(grid, dtype=np.float64), cell)
    out = np.zeros((grid, grid), bool)
    for x0, y0, x1, y1 in boxes:
        out |= ((c[:, None] >= y0) & (c[:, None] <= y1)) & ((c[None, :] >= x0) &
                                                              (c[None, :] <= x1))
    return out


@dataclass(frozen=True)
class ObjectModel:
    """Unit ``object`` and ``background`` prototypes (C,) and the references' object area as
    a fraction of their content (median), used to size boxes."""

    object: torch.Tensor
    background: torch.Tensor
    area_fraction: float


def object_model(descs: Sequence[torch.Tensor], object_masks: Sequence[np.ndarray],
                 background_masks: Sequence[np.ndarray]) -> ObjectModel:
    """Prototypes from reference descriptors (C, G, G) and (G, G) masks of their object cells
    and of their background cells (content cells away from every instance)."""
    if not descs or not (len(descs) == len(object_masks) == len(background_masks)):
        raise ValueError("object_model needs as many masks as descriptors (>= 1)")
    fg, bg, areas = [], [], []
    for d, om, bm in zip(descs, object_masks, background_masks):
        u = _unit(d).flatten(1)  # (C, G*G)
        om = torch.from_numpy(np.asarray(om, bool).reshape(-1))
        bm = torch.from_numpy(np.asarray(bm, bool).reshape(-1))
        if om.any():
            fg.append(u[:, om].mean(1))
        if bm.any():
            bg.append(u[:, bm].mean(1))
        content = int(om.sum() + bm.sum())
        if content:
            areas.append(float(om.sum()) / content)
    if not fg:
        raise ValueError("no reference instance covers a cell: cannot model the object")
    obj = torch.stack(fg).mean(0)
    back = torch.stack(bg).mean(0) if bg else torch.zeros_like(obj)
    return ObjectModel(obj / obj.norm().clamp_min(1e-8), back / back.norm().clamp_min(1e-8),
                       float(np.median(areas)) if areas else 0.0)


def object_score(model: ObjectModel, target: torch.Tensor) -> np.ndarray:
    """(G, G) score cos(object) - cos(background) of every target cell."""
    t = _unit(target)
    g = t.shape[1]
    flat = t.flatten(1)
    score = model.object @ flat - model.background @ flat
    return score.reshape(g, g).numpy().astype(np.float64)


@dataclass(frozen=True)
class FoundBox:
    """A found object: canvas box (x0, y0, x1, y1) and its strength (sum of positive
    scores of its region)."""

    box: CanvasBox
    strength: float


def find_objects(score: np.ndarray, content: np.ndarray, cell: float, max_objects: int = 1,
                 min_relative_strength: float = 0.25, relative_threshold: float = 0.5,
                 join: int = 1) -> list[FoundBox]:
    """Regions of ``score`` (G, G) above ``relative_threshold`` of the best content cell's
    score (and above zero) on ``content`` (G, G) cells, strongest first: at most
    ``max_objects``, each at least ``min_relative_strength`` of the strongest. A region's box
    spans its cells (cell edges). Empty when no cell scores above zero. (A fixed threshold at
    zero lets a background that is a little closer to the object than to the references'
    background join the object's region.) Cells at most ``join`` cells apart belong to one
    region."""
    score = np.asarray(score, np.float64)
    g = score.shape[0]
    if score.shape != (g, g) or np.asarray(content).shape != (g, g):
        raise ValueError("score and content must be (G, G)")
    if max_objects < 1:
        return []
    content = np.asarray(content, bool)
    if not content.any():
        return []
    top = float(score[content].max())
    if top <= 0:
        return []
    pos = (score > relative_threshold * top) & content
    # parts of one object that score differently (a lit body, a dark tail) are joined when
    # at most ``join`` cells apart; the region keeps only its own cells
    joined = pos.astype(np.uint8)
    if join > 0:
        joined = cv2.dilate(joined, np.ones((2 * join + 1, 2 * join + 1), np.uint8))
    n, labels = cv2.connectedComponents(joined, connectivity=8)
    labels = np.where(pos, labels, 0)
    strengths = np.bincount(labels.reshape(-1), weights=np.where(pos, score, 0).reshape(-1),
                            minlength=n)
    strengths[0] = 0.0
    order = [i for i in np.argsort(-strengths) if strengths[i] > 0]
    out: list[FoundBox] = []
    for i in order[:max_objects]:
        if strengths[i] < min_relative_strength * strengths[order[0]]:
            break
        rows, cols = np.nonzero(labels == i)
        x0, x1 = cols.min() * cell - 0.5, (cols.max() + 1) * cell - 0.5
        y0, y1 = rows.min() * cell - 0.5, (rows.max() + 1) * cell - 0.5
        out.append(FoundBox((float(x0), float(y0), float(x1), float(y1)), float(strengths[i])))
    return out
