"""A deterministic, weight-free content descriptor with the FeatureExtractor interface.

DAISY-like spatial layout descriptor, computed on the letterbox canvas:

* channels: opponent colour (L, R-G, (R+G)/2-B) and ``orientations`` half-wave rectified
  directional derivatives of L (oriented gradient energy, DAISY style);
* ring ``i`` (``i = 0 .. len(sigmas) - 1``) blurs every channel with a Gaussian of
  ``sigmas[i]`` cells, pools it over each cell and samples it at the cell itself (ring 0) or at
  the 8 cells ``2 ** (i - 1)`` cells away (horizontally, vertically, diagonally): with the
  default 4 rings the cell, its 8 neighbours and the cells 2 and 4 cells away, so the descriptor
  encodes the spatial layout around the cell (the far ring separates repeated structure such as
  stripes);
* each sample's orientation histogram is normalised on its own (contrast invariance, with a
  floor so flat areas stay near zero), the ring samples' colour is taken relative to the cell's
  own colour; ``describe`` L2-normalises the whole vector per cell.

The blur (half a cell near the centre, more further out) makes a sub-cell shift change the
descriptor little, while the rings make neighbouring cells distinct. Translation equivariant
(up to pixel rounding) but *not* mirror invariant: mirrored targets are matched through the
engine's flip-aware path (``Engine.transfer(..., flip=True)``). Black padding, letterbox bars
and the area outside the canvas all give zero channels, so padding adds no spurious structure.
Meant for geometry tests and the geometry benchmark, with hard argmax (``softargmax_window=0``
/ ``MatchParams(soft_window=0)``): the soft-argmax temperature is tuned for SD + DINOv2
similarities, not for these.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from annotator.features.extractor import FeatureMaps, check_image
from annotator.features.letterbox import Letterbox

# the 8 ring directions (dx, dy) in cells
_RING = ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1))
# floor of the orientation-histogram norm (gradient units: L per pixel, Sobel / 8)
_HIST_FLOOR = 0.02


@dataclass(frozen=True)
class ContentConfig:
    """Canvas ``size`` covered by ``grid`` x ``grid`` cells.

    ``sigmas[i]``: Gaussian blur (in cells) of ring ``i``, sampled ``2 ** (i - 1)`` cells from
    the cell in 8 directions (ring 0 is the cell itself). ``orientations``: gradient direction
    bins. ``colour_weight``: weight of the colour part against the (unit) orientation
    histograms.
    """

    size: int = 256
    grid: int = 32
    sigmas: tuple[float, ...] = (0.5, 0.5, 0.75, 1.5)
    orientations: int = 8
    colour_weight: float = 0.5
    fusion: str = "content"
    pca_dim: int = 0

    def __post_init__(self) -> None:
        if self.size < 1 or self.grid < 1 or self.size % self.grid:
            raise ValueError(f"size {self.size} must be a positive multiple of grid {self.grid}")
        if not self.sigmas or min(self.sigmas) <= 0:
            raise ValueError("sigmas must be positive")
        if self.orientations < 1 or self.colour_weight < 0:
            raise ValueError("orientations must be >= 1 and colour_weight >= 0")

    @property
    def channels(self) -> int:
        """Descriptor length C."""
        samples = 1 + 8 * (len(self.sigmas) - 1)
        return samples * (3 + self.orientations)


def _shift(grid_map: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """out[y, x] = grid_map[y + dy, x + dx], zero outside."""
    g_h, g_w = grid_map.shape[:2]
    out = np.zeros_like(grid_map)
    ys, yd = (slice(dy, g_h), slice(0, g_h - dy)) if dy >= 0 else (slice(0, g_h + dy),
                                                                     slice(-dy, g_h))
    xs, xd = (slice(dx, g_w), slice(0, g_w - dx)) if dx >= 0 else (slice(0, g_w + dx),
                                                                     slice(-dx, g_w))
    out[yd, xd] = grid_map[ys, xs]
    return out


class ContentExtractor:
    """Content descriptor extractor: layers {"content": (C, G, G)}."""

    name = "content"

    def __init__(self, config: ContentConfig | None = None) -> None:
        self.config = config or ContentConfig()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(("content-v2" + repr(self.config)).encode()).hexdigest()[:32]

    def _channels(self, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Canvas (S, S, 3) uint8 -> colour (S, S, 3) and oriented gradients (S, S, O)."""
        img = canvas.astype(np.float32) / 255.0
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        lum = (r + g + b) / 3.0
        colour = np.stack([lum, r - g, 0.5 * (r + g) - b], axis=2)
        gx = cv2.Sobel(lum, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_CONSTANT) / 8.0
        gy = cv2.Sobel(lum, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_CONSTANT) / 8.0
        n = self.config.orientations
        angles = 2 * np.pi * np.arange(n) / n
        orient = np.stack([np.maximum(np.cos(a) * gx + np.sin(a) * gy, 0.0) for a in angles],
                          axis=2).astype(np.float32)
        return colour, orient

    def _canvas_features(self, canvas: np.ndarray) -> np.ndarray:
        cfg = self.config
        cell = cfg.size / cfg.grid
        colour, orient = self._channels(canvas)
        base = np.concatenate([colour, orient], axis=2)
        nc = colour.shape[2]
        parts = []
        centre_colour = None
        for ring, sigma in enumerate(cfg.sigmas):
            blur = cv2.GaussianBlur(base, (0, 0), sigma * cell, borderType=cv2.BORDER_CONSTANT)
            pooled = cv2.resize(blur, (cfg.grid, cfg.grid), interpolation=cv2.INTER_AREA)
            pooled = pooled.reshape(cfg.grid, cfg.grid, -1)
            rad = 2 ** (ring - 1) if ring else 0
            offsets = [(rad * dx, rad * dy) for dx, dy in _RING] if ring else [(0, 0)]
            for dx, dy in offsets:
                s = pooled if (dx, dy) == (0, 0) else _shift(pooled, dx, dy)
                col, hist = s[..., :nc], s[..., nc:]
                if centre_colour is None:
                    centre_colour = col
                else:
                    col = col - centre_colour
                hist = hist / (np.linalg.norm(hist, axis=2, keepdims=True) + _HIST_FLOOR)
                parts.append(cfg.colour_weight * col)
                parts.append(hist)
        feat = np.concatenate(parts, axis=2).astype(np.float32)
        return feat.transpose(2, 0, 1)

    def extract(self, images: Sequence[np.ndarray]) -> list[FeatureMaps]:
        out = []
        for image in images:
            im = check_image(image)
            lb = Letterbox.fit(im.shape[1], im.shape[0], self.config.size)
            feat = torch.from_numpy(np.ascontiguousarray(self._canvas_features(lb.apply(im))))
            out.append(FeatureMaps(layers={"content": feat}, letterbox=lb, grid=self.config.grid))
        return out

    def describe(self, maps: FeatureMaps) -> torch.Tensor:
        t = maps.layers["content"].float()
        return t / t.norm(dim=0, keepdim=True).clamp_min(1e-8)

    def describe_pair(self, maps_a: FeatureMaps, maps_b: FeatureMaps
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.describe(maps_a), self.describe(maps_b)
