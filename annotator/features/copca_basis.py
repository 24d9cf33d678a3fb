"""copca with one joint PCA basis per run instead of one per pair (one-to-many transfer).

The paper's copca (``fusion.copca_pair``) projects each (reference, target) pair on the top
principal components of that pair's stacked tokens, so a run over N targets fits 3 N PCAs
(s3, s4, s5) and describes the reference N times. ``fit_copca_basis`` fits each layer's basis once
on the tokens of a set of images (the references and a sample of the targets);
``CopcaBasis.describe`` then describes any image on its own (pair-independent), with the same
layout as copca: s5 up to the s4 grid, concat, up to G, concat s3, L2 per cell, then the
L2-normalised DINO part. ``RunBasisExtractor`` wraps an extractor so that the engine treats the
result like any pair-independent fusion (each image described once).

The accuracy cost against per-pair PCA is measured by ``benchmarks/copca_geometry.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from annotator.features import fusion
from annotator.features.extractor import FeatureMaps

SD_LAYERS = fusion.SD_ORDER


@dataclass(frozen=True)
class CopcaBasis:
    """Per SD layer: token ``means`` (C,) and ``bases`` (C, d) with unit columns, largest
    component first. ``use_dino`` appends the DINO part as copca does."""

    means: Mapping[str, torch.Tensor]
    bases: Mapping[str, torch.Tensor]
    use_dino: bool = True

    def describe(self, layers: Mapping[str, torch.Tensor], grid: int) -> torch.Tensor:
        """(3 d [+ C_dino], G, G) descriptor of one image's raw layers (float32)."""
        sd = fusion._sd_layers(layers)
        proj = []
        for key, x in zip(SD_LAYERS, sd):
            mean, basis = self.means[key], self.bases[key]
            if x.shape[0] != basis.shape[0]:
                raise ValueError(f"layer {key} has {x.shape[0]} channels, basis {basis.shape[0]}")
            t = x.flatten(1).T  # (N, C)
            proj.append(((t - mean) @ basis).T.reshape(basis.shape[1], *x.shape[1:]))
        out = fusion._copca_sd(proj[0], proj[1], proj[2], grid)
        return torch.cat([out, fusion.dino_part(layers, grid)]) if self.use_dino else out


def fit_copca_basis(layer_sets: Sequence[Mapping[str, torch.Tensor]], pca_dim: int = 256,
                    use_dino: bool = True) -> CopcaBasis:
    """One basis per SD layer from the stacked, jointly mean-centred tokens of every image in
    ``layer_sets`` (each a {name: (C, H, W)} dict). Exact, deterministic: eigenvectors of the
    C x C covariance (float32, the tensors' device); directions with no variance are zero
    columns."""
    if not layer_sets:
        raise ValueError("fit_copca_basis needs at least one image")
    if pca_dim < 1:
        raise ValueError(f"pca_dim must be >= 1, got {pca_dim}")
    means, bases = {}, {}
    for i, key in enumerate(SD_LAYERS):
        xs = [fusion._sd_layers(ls)[i].flatten(1).T.float() for ls in layer_sets]  # (N_j, C)
        c = xs[0].shape[1]
        if any(x.shape[1] != c for x in xs):
            raise ValueError(f"layer {key}: channel counts differ between images")
        n = sum(x.shape[0] for x in xs)
        mean = sum(x.sum(0) for x in xs) / n
        cov = sum((x - mean).T @ (x - mean) for x in xs)  # (C, C), image by image
        vals, vecs = torch.linalg.eigh(cov)  # ascending
        d = min(pca_dim, c)
        vals, basis = vals[-d:].flip(0), vecs[:, -d:].flip(1)
        # directions the fitted tokens do not span (rank <= n - 1) are arbitrary: drop them,
        # as fusion.joint_pca does, so that new images are not projected on noise
        keep = vals > vals[0].clamp_min(0) * 1e-6
        means[key] = mean[None]
        bases[key] = (basis * keep).contiguous()
    return CopcaBasis(means, bases, use_dino)


class RunBasisExtractor:
    """``extractor`` with copca on a fixed run basis: features (and their cache entries) are the
    inner extractor's; ``describe`` uses ``basis``; pair-independent."""

    pair_dependent = False
    parts_transfer = False

    def __init__(self, extractor: Any, basis: CopcaBasis) -> None:
        self.inner, self.basis = extractor, basis
        self.config = extractor.config
        self.name = f"{getattr(extractor, 'name', 'extractor')}+copca-run-basis"

    @property
    def fingerprint(self) -> str:
        return str(self.inner.fingerprint)  # same raw maps: same cache entries

    @property
    def batch_size(self) -> int:
        return int(getattr(self.inner, "batch_size", 1))

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.inner.batch_size = value

    def extract(self, images: Sequence[Any]) -> list[FeatureMaps]:
        return self.inner.extract(images)

    def describe(self, maps: FeatureMaps) -> torch.Tensor:
        return self.basis.describe(maps.layers, maps.grid)

    def describe_pair(self, maps_a: FeatureMaps, maps_b: FeatureMaps
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.describe(maps_a), self.describe(maps_b)
