"""A deterministic, weight-free content descriptor with the FeatureExtractor interface.

Per grid cell: band-passed and blurred colour plus gradient magnitude at several scales. Built
from isotropic filters only, so it is mirror invariant (a flipped copy gives the flipped map) and
translation equivariant. Used for geometry tests and the geometry benchmark.
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


@dataclass(frozen=True)
class ContentConfig:
    """Canvas ``size`` covered by ``grid`` x ``grid`` cells; Gaussian ``sigmas`` in canvas px."""

    size: int = 256
    grid: int = 32
    sigmas: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
    fusion: str = "content"
    pca_dim: int = 0

    def __post_init__(self) -> None:
        if self.size < 1 or self.grid < 1 or self.size % self.grid:
            raise ValueError(f"size {self.size} must be a positive multiple of grid {self.grid}")
        if not self.sigmas or min(self.sigmas) <= 0:
            raise ValueError("sigmas must be positive")


class ContentExtractor:
    """Content descriptor extractor: layers {"content": (C, G, G)}."""

    name = "content"

    def __init__(self, config: ContentConfig | None = None) -> None:
        self.config = config or ContentConfig()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(repr(self.config).encode()).hexdigest()[:32]

    def _canvas_features(self, canvas: np.ndarray) -> np.ndarray:
        cfg = self.config
        img = canvas.astype(np.float32) / 255.0
        gray = img.mean(axis=2)
        gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
        base = np.concatenate([img - 0.5, np.sqrt(gx * gx + gy * gy)[..., None]], axis=2)
        chans = []
        prev = base
        for s in cfg.sigmas:
            blur = cv2.GaussianBlur(base, (0, 0), s, borderType=cv2.BORDER_CONSTANT)
            chans.append(blur)
            chans.append(prev - blur)
            prev = blur
        feat = np.concatenate(chans, axis=2)
        pooled = cv2.resize(feat, (cfg.grid, cfg.grid), interpolation=cv2.INTER_AREA)
        return pooled.reshape(cfg.grid, cfg.grid, -1).transpose(2, 0, 1)

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
