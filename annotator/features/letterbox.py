"""Letterbox mapping between original image pixels and a square canvas (numpy only).

Convention: coordinates are pixel-centre coordinates (pixel i has centre i), as used by
``cv2.resize``: canvas u = (x + 0.5) * scale_x - 0.5 + offset_x.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def _as_points(points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (K, 2), got {pts.shape}")
    return pts


@dataclass(frozen=True)
class Letterbox:
    """Longest side scaled to ``canvas``, content centred, black padding.

    ``content_w`` x ``content_h`` is the resized image placed at (``offset_x``, ``offset_y``).
    """

    width: int
    height: int
    canvas: int
    content_w: int
    content_h: int
    offset_x: int
    offset_y: int

    @classmethod
    def fit(cls, width: int, height: int, size: int) -> Letterbox:
        if width < 1 or height < 1 or size < 1:
            raise ValueError(f"invalid letterbox sizes: image {width}x{height}, canvas {size}")
        scale = size / max(width, height)
        cw = min(size, max(1, round(width * scale)))
        ch = min(size, max(1, round(height * scale)))
        return cls(int(width), int(height), int(size), cw, ch, (size - cw) // 2, (size - ch) // 2)

    @property
    def scale_x(self) -> float:
        return self.content_w / self.width

    @property
    def scale_y(self) -> float:
        return self.content_h / self.height

    @property
    def scale(self) -> float:
        """Nominal scale (canvas / longest side)."""
        return self.canvas / max(self.width, self.height)

    def to_canvas(self, points: np.ndarray) -> np.ndarray:
        """Original pixel coords (K, 2) -> canvas coords (K, 2), float64."""
        p = _as_points(points)
        out = np.empty_like(p)
        out[:, 0] = (p[:, 0] + 0.5) * self.scale_x - 0.5 + self.offset_x
        out[:, 1] = (p[:, 1] + 0.5) * self.scale_y - 0.5 + self.offset_y
        return out

    def from_canvas(self, points: np.ndarray) -> np.ndarray:
        """Canvas coords (K, 2) -> original pixel coords (K, 2), float64."""
        p = _as_points(points)
        out = np.empty_like(p)
        out[:, 0] = (p[:, 0] + 0.5 - self.offset_x) / self.scale_x - 0.5
        out[:, 1] = (p[:, 1] + 0.5 - self.offset_y) / self.scale_y - 0.5
        return out

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(K,) bool: canvas points that fall on image content (not padding, not off-canvas)."""
        p = _as_points(points)
        u = p[:, 0] + 0.5 - self.offset_x
        v = p[:, 1] + 0.5 - self.offset_y
        return (u >= 0) & (u < self.content_w) & (v >= 0) & (v < self.content_h)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 image -> (S, S, 3) uint8 canvas."""
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image must have shape (H, W, 3), got {img.shape}")
        if img.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"image is {img.shape[1]}x{img.shape[0]}, letterbox is for "
                f"{self.width}x{self.height}")
        shrink = self.content_w < self.width or self.content_h < self.height
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        resized = cv2.resize(np.ascontiguousarray(img), (self.content_w, self.content_h),
                             interpolation=interp)
        canvas = np.zeros((self.canvas, self.canvas, 3), dtype=img.dtype)
        canvas[self.offset_y:self.offset_y + self.content_h,
               self.offset_x:self.offset_x + self.content_w] = resized
        return canvas
