"""Feature-extractor interface and the per-image raw feature container."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from annotator.features.letterbox import Letterbox

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class FeatureMaps:
    """Raw per-layer maps of one image.

    ``layers``: name -> float tensor (C, h, w) on the CPU (keys among "s5", "s4", "s3", "dino";
    other extractors may use their own names). ``letterbox`` maps original pixels to the canvas
    the descriptor grid covers (``grid`` x ``grid`` cells of ``letterbox.canvas / grid`` px).
    ``norms``: optional name -> (grid * grid,) float32 squared norms of each layer resized to the
    grid (``annotator.features.cell_norms``), kept by the feature cache with its entries so that
    transfers do not recompute them; None where not computed.
    """

    layers: dict[str, torch.Tensor] = field(hash=False)
    letterbox: Letterbox
    grid: int
    norms: dict[str, torch.Tensor] | None = field(default=None, hash=False, compare=False)

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the original image."""
        return self.letterbox.width, self.letterbox.height

    @property
    def cell_size(self) -> float:
        return self.letterbox.canvas / self.grid

    def nbytes(self) -> int:
        tensors = [*self.layers.values(), *(self.norms or {}).values()]
        return int(sum(t.numel() * t.element_size() for t in tensors))


@runtime_checkable
class FeatureExtractor(Protocol):
    """Computes raw maps per image and fuses them into (C, G, G) descriptors."""

    name: str
    config: Any

    @property
    def fingerprint(self) -> str:
        """Hash of everything that changes the raw maps (cache key part)."""
        ...

    def extract(self, images: Sequence[np.ndarray]) -> list[FeatureMaps]:
        """(H, W, 3) uint8 RGB images -> one FeatureMaps each."""
        ...

    def describe(self, maps: FeatureMaps) -> torch.Tensor:
        """Pair-independent descriptor (C, G, G), L2-normalised per cell."""
        ...

    def describe_pair(self, maps_a: FeatureMaps,
                      maps_b: FeatureMaps) -> tuple[torch.Tensor, torch.Tensor]:
        """Descriptors (C, G, G) of both images of a pair (pair-dependent for copca)."""
        ...


def pair_dependent(extractor: Any) -> bool:
    """Whether ``extractor``'s descriptors depend on the pair (copca's joint PCA). Then each
    pair is fused anew; otherwise one descriptor per image serves every pair. Extractors may
    say so with a ``pair_dependent`` attribute; without it, copca fusion is the one that is."""
    flag = getattr(extractor, "pair_dependent", None)
    if flag is not None:
        return bool(flag)
    return getattr(getattr(extractor, "config", None), "fusion", None) == "copca"


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an (H, W, 3) uint8 RGB array and return it contiguous."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"image must be an RGB array of shape (H, W, 3), got {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    return np.ascontiguousarray(img)
