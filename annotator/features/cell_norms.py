"""Per-cell squared norms of raw layers resized to the descriptor grid, kept with cached maps.

The parts fast path (``annotator.matching.transfer_parts``) needs, for every layer (C, h, w),
the squared norm of each cell of its bilinear resize to G x G, without materialising the resize:
|up(x)(y, x)|^2 = A_w[x] (sum_{i, i'} A_h[y, i] A_h[y, i'] R[i, i']) A_w[x]^T with the separable
interpolation matrices A_h (G, h), A_w (G, w) and the channel Gram blocks R[i, i'] (w x w) of
equal and adjacent rows (bilinear weights have at most two adjacent taps). For a layer already at
G x G it is the plain per-cell sum of squares.

Computing these costs as much as a third of a transfer, so the feature cache computes them once
when an entry is stored (from the stored-precision values, exactly as the matcher would) and keeps
them in the entry: ``FeatureMaps.norms``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import torch
import torch.nn.functional as F


@lru_cache(maxsize=32)
def interp_matrix(n: int, g: int) -> torch.Tensor:
    """(g, n) weights of ``F.interpolate(..., mode="bilinear", align_corners=False)`` along one
    axis from n to g samples (PyTorch's own weights: an identity of n channels resized)."""
    eye = torch.eye(n, dtype=torch.float32)[None, :, :, None]  # (1, n, n, 1)
    a = F.interpolate(eye, size=(g, 1), mode="bilinear", align_corners=False)[0, :, :, 0].T
    a = a.contiguous()
    nz = (a != 0).float()
    first, last = nz.argmax(1), n - 1 - nz.flip(1).argmax(1)
    if bool((last - first > 1).any()):  # pragma: no cover - bilinear never does this
        raise AssertionError("bilinear weights must have at most two adjacent taps")
    return a


def resized_norm2(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(C, h, w) layer -> (grid * grid,) float32 squared norms of its bilinear resize per cell
    (row-major cells). The layer is used as float32."""
    if x.ndim != 3:
        raise ValueError(f"layer must have shape (C, H, W), got {tuple(x.shape)}")
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    x = x.float()
    c, h, w = x.shape
    if h == grid and w == grid:
        rows = x.permute(1, 2, 0).reshape(h * w, c)  # a view of channel-last layers
        return torch.linalg.vecdot(rows, rows)  # (x * x).sum(0), no temporary
    ah, aw = interp_matrix(h, grid), interp_matrix(w, grid)
    rows = x.permute(1, 2, 0)  # (h, w, C)
    cols = x.permute(1, 0, 2)  # (h, C, w)
    diag = torch.bmm(rows, cols)  # (h, w, w): R[i, i]
    gy = (ah * ah) @ diag.reshape(h, -1)  # (G, w*w)
    if h > 1:
        off = torch.bmm(rows[:-1], cols[1:])  # (h-1, w, w): R[i, i+1]
        off = off + off.transpose(1, 2)
        gy = gy + (ah[:, :-1] * ah[:, 1:]) @ off.reshape(h - 1, -1)
    gy = gy.reshape(grid, w, w)  # per output row: sum A_h A_h R
    n2 = ((gy @ aw.T) * aw.T[None]).sum(1)  # (G rows, G cols)
    return n2.reshape(-1)


def cell_norms(layers: Mapping[str, torch.Tensor], grid: int) -> dict[str, torch.Tensor]:
    """``resized_norm2`` of every layer: name -> (grid * grid,) float32."""
    return {k: resized_norm2(v, grid).contiguous() for k, v in layers.items()}


def usable_norm2(norms: Mapping[str, torch.Tensor] | None, name: str, grid: int
                 ) -> torch.Tensor | None:
    """The stored norms of layer ``name`` when they have the shape a ``grid`` needs, else None
    (the caller computes them)."""
    if norms is None:
        return None
    n = norms.get(name)
    if n is None or n.dtype != torch.float32 or tuple(n.shape) != (grid * grid,):
        return None
    return n
