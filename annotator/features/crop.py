"""Object-centric crops (DESIGN.md section 10): a box enlarged by a margin, treated as an image.

numpy only. A :class:`CropRect` is an integer pixel rectangle of an image; an :class:`ImageCrop`
carries the cropped pixels plus the rectangle, so the engine letterboxes and featurizes it
exactly as a whole image and the feature cache keys it by content + rectangle. Points map
crop -> image by the crop offset (x + x0, y + y0), and back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Box = tuple[float, float, float, float]  # (x, y, w, h), original pixels

DEFAULT_MARGIN = 0.15
MIN_CROP_SIDE = 16  # a crop is never smaller than this (nor than the image)


def _points(points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (K, 2), got {pts.shape}")
    return pts


@dataclass(frozen=True)
class CropRect:
    """Pixels ``x0 <= x < x1``, ``y0 <= y < y1`` of an image (integers, non-empty)."""

    x0: int
    y0: int
    x1: int
    y1: int

    def __post_init__(self) -> None:
        if not (self.x1 > self.x0 >= 0 and self.y1 > self.y0 >= 0):
            raise ValueError(f"empty or negative crop rectangle {self}")

    @classmethod
    def around(cls, box: Box, width: int, height: int, margin: float = DEFAULT_MARGIN,
               min_side: int = MIN_CROP_SIDE) -> CropRect:
        """``box`` (x, y, w, h) enlarged by ``margin`` of its width (height) on each side,
        at least ``min_side`` px per side, clipped to the ``width`` x ``height`` image."""
        if width < 1 or height < 1:
            raise ValueError(f"invalid image size {width}x{height}")
        x, y, w, h = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
            raise ValueError(f"invalid box {box}")
        if margin < 0:
            raise ValueError(f"margin {margin} must be >= 0")
        cx, cy = x + w / 2, y + h / 2
        half_w = max(w * (1 + 2 * margin), min_side) / 2
        half_h = max(h * (1 + 2 * margin), min_side) / 2
        x0 = min(max(int(math.floor(cx - half_w)), 0), width - 1)
        y0 = min(max(int(math.floor(cy - half_h)), 0), height - 1)
        x1 = max(min(int(math.ceil(cx + half_w)), width), x0 + 1)
        y1 = max(min(int(math.ceil(cy + half_h)), height), y0 + 1)
        return cls(x0, y0, x1, y1)

    @classmethod
    def whole(cls, width: int, height: int) -> CropRect:
        return cls(0, 0, int(width), int(height))

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def tag(self) -> str:
        return f"{self.x0},{self.y0},{self.x1},{self.y1}"

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) image -> (h, w, C) contiguous crop; the rectangle must fit the image."""
        img = np.asarray(image)
        if img.ndim < 2 or self.x1 > img.shape[1] or self.y1 > img.shape[0]:
            raise ValueError(f"crop {self.tag} does not fit an image of shape {img.shape}")
        return np.ascontiguousarray(img[self.y0:self.y1, self.x0:self.x1])

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Image pixel coords (K, 2) -> crop pixel coords (K, 2)."""
        return _points(points) - (self.x0, self.y0)

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Crop pixel coords (K, 2) -> image pixel coords (K, 2)."""
        return _points(points) + (self.x0, self.y0)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(K,) bool: image points (pixel centres) inside the rectangle; NaN is outside."""
        p = _points(points)
        with np.errstate(invalid="ignore"):
            return ((p[:, 0] >= self.x0 - 0.5) & (p[:, 0] < self.x1 - 0.5)
                    & (p[:, 1] >= self.y0 - 0.5) & (p[:, 1] < self.y1 - 0.5))


@dataclass(frozen=True, eq=False)
class ImageCrop:
    """Pixels of ``rect`` of an image (``mirrored``: flipped left-right), to be featurized as
    an image of their own. ``key`` names the rectangle for the feature cache. ``box`` (x, y,
    w, h, image pixels), when known, is the object box the crop was framed around (the crop
    is the box plus a margin, clipped to the image); it is not part of the key."""

    pixels: np.ndarray
    rect: CropRect
    mirrored: bool = False
    box: Box | None = None

    def __post_init__(self) -> None:
        px = np.asarray(self.pixels)
        if px.ndim != 3 or px.shape[:2] != (self.rect.height, self.rect.width):
            raise ValueError(f"crop pixels of shape {px.shape} do not match rectangle "
                             f"{self.rect.tag}")

    @classmethod
    def of(cls, image: np.ndarray, rect: CropRect, box: Box | None = None) -> ImageCrop:
        return cls(rect.apply(image), rect, box=box)

    def crop_box(self) -> Box | None:
        """``box`` in this crop's own pixels (mirrored with it); None when unknown."""
        if self.box is None:
            return None
        x, y, w, h = (float(v) for v in self.box)
        x -= self.rect.x0
        if self.mirrored:
            x = self.rect.width - x - w
        return (x, y - self.rect.y0, w, h)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)

    @property
    def key(self) -> str:
        return f"crop={self.rect.tag}{',mirrored' if self.mirrored else ''}"

    def flipped(self) -> ImageCrop:
        return ImageCrop(np.ascontiguousarray(self.pixels[:, ::-1]), self.rect, not self.mirrored,
                         self.box)


def keypoint_box(points: np.ndarray) -> Box | None:
    """Tight (x, y, w, h) around finite points (K, 2), or None when there is none."""
    p = _points(points)
    p = p[np.all(np.isfinite(p), axis=1)]
    if len(p) == 0:
        return None
    lo, hi = p.min(0), p.max(0)
    return (float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1]))
