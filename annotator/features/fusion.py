"""Fusion of raw per-layer maps into grid descriptors (DESIGN.md section 3).

All maps are (C, H, W) tensors; outputs are (C', G, G), float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

SD_ORDER = ("s3", "s4", "s5")


def _check(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.ndim != 3:
        raise ValueError(f"{name} must have shape (C, H, W), got {tuple(t.shape)}")
    return t.float()


def resize(t: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize (C, H, W) -> (C, size, size); identity when already that size."""
    t = _check(t, "map")
    if t.shape[1] == size and t.shape[2] == size:
        return t
    return F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def l2n(t: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """L2-normalise (C, H, W) per cell."""
    return t / t.norm(dim=0, keepdim=True).clamp_min(eps)


def joint_pca(a: torch.Tensor, b: torch.Tensor | None, dim: int
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Project (C, Ha, Wa) [and (C, Hb, Wb)] onto the top ``dim`` principal components of their
    stacked, jointly mean-centred tokens. Exact and deterministic (no random projection): the
    eigenvectors of the C x C covariance, or, when there are fewer tokens N than channels, of the
    N x N Gram matrix mapped back to channel space (same components, much smaller problem).
    Computed in float32 on the tensors' device. Returns (d, Ha, Wa) [and (d, Hb, Wb)],
    d = min(dim, C)."""
    a = _check(a, "a")
    ta = a.flatten(1).T.float()
    tb = _check(b, "b").flatten(1).T.float() if b is not None else None
    if tb is not None and tb.shape[1] != ta.shape[1]:
        raise ValueError(f"channel mismatch {ta.shape[1]} vs {tb.shape[1]}")
    x = ta if tb is None else torch.cat([ta, tb])
    n, c = x.shape
    mean = x.mean(0, keepdim=True)
    xc = x - mean
    d = min(dim, c)
    if n < c:
        vals, u = torch.linalg.eigh(xc @ xc.T)  # ascending
        k = min(d, n)
        vals, u = vals[-k:].flip(0), u[:, -k:].flip(1)
        keep = vals > vals[0].clamp_min(0) * 1e-6  # drop null directions (rank <= n - 1)
        scale = torch.where(keep, vals.clamp_min(1e-30).rsqrt(), torch.zeros_like(vals))
        basis = (xc.T @ u) * scale  # (C, k) unit columns
        if k < d:
            basis = torch.cat([basis, basis.new_zeros(c, d - k)], dim=1)
    else:
        _, vecs = torch.linalg.eigh(xc.T @ xc)
        basis = vecs[:, -d:].flip(1)  # (C, d), largest first
    pa = ((ta - mean) @ basis).T.reshape(d, *a.shape[1:])
    pb = None
    if tb is not None and b is not None:
        pb = ((tb - mean) @ basis).T.reshape(d, *b.shape[1:])
    return pa, pb


def _sd_layers(layers: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    missing = [k for k in SD_ORDER if k not in layers]
    if missing:
        raise ValueError(f"SD fusion needs layers {SD_ORDER}; missing {missing}")
    return tuple(_check(layers[k], k) for k in SD_ORDER)


def sd_part_concat(layers: Mapping[str, torch.Tensor], grid: int) -> torch.Tensor:
    """[s3 | s4 | s5] at grid x grid, no PCA, L2-normalised per cell: (C3+C4+C5, G, G)."""
    s3, s4, s5 = _sd_layers(layers)
    return l2n(torch.cat([resize(s3, grid), resize(s4, grid), resize(s5, grid)]))


def dino_part(layers: Mapping[str, torch.Tensor], grid: int) -> torch.Tensor:
    if "dino" not in layers:
        raise ValueError("DINO fusion needs the 'dino' layer")
    return l2n(resize(_check(layers["dino"], "dino"), grid))


def concat(layers: Mapping[str, torch.Tensor], grid: int) -> torch.Tensor:
    """"concat" fusion: l2n([l2n(SD part) | l2n(DINO)]) -> (3968, G, G) at paper sizes."""
    return l2n(torch.cat([sd_part_concat(layers, grid), dino_part(layers, grid)]))


def dino_only(layers: Mapping[str, torch.Tensor], grid: int) -> torch.Tensor:
    return dino_part(layers, grid)


def sd_only(layers: Mapping[str, torch.Tensor], grid: int) -> torch.Tensor:
    """SD ablation: the pair-independent SD part of "concat"."""
    return sd_part_concat(layers, grid)


def _copca_sd(p3: torch.Tensor, p4: torch.Tensor, p5: torch.Tensor, grid: int) -> torch.Tensor:
    if p4.shape[1] != p4.shape[2]:
        raise ValueError(f"s4 map must be square, got {tuple(p4.shape)}")
    s45 = torch.cat([p4, resize(p5, p4.shape[1])])
    return l2n(torch.cat([resize(p3, grid), resize(s45, grid)]))


def copca_pair(layers_a: Mapping[str, torch.Tensor], layers_b: Mapping[str, torch.Tensor],
               grid: int, pca_dim: int = 256, use_dino: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """"copca" (paper): per layer joint PCA of both images to ``pca_dim``; s5 up to the s4 grid,
    concat, up to G, concat s3 -> SD part (3 * pca_dim ch); L2 per cell; concat the L2-normalised
    DINO part. Returns two (3 * pca_dim [+ C_dino], G, G) tensors."""
    a3, a4, a5 = _sd_layers(layers_a)
    b3, b4, b5 = _sd_layers(layers_b)
    pa, pb = {}, {}
    for key, xa, xb in (("s3", a3, b3), ("s4", a4, b4), ("s5", a5, b5)):
        pa[key], pb[key] = joint_pca(xa, xb, pca_dim)
    sa = _copca_sd(pa["s3"], pa["s4"], pa["s5"], grid)
    sb = _copca_sd(pb["s3"], pb["s4"], pb["s5"], grid)  # type: ignore[arg-type]
    if not use_dino:
        return sa, sb
    return (torch.cat([sa, dino_part(layers_a, grid)]), torch.cat([sb, dino_part(layers_b, grid)]))


def copca_single(layers: Mapping[str, torch.Tensor], grid: int, pca_dim: int = 256,
                 use_dino: bool = True) -> torch.Tensor:
    """Pair-independent copca approximation: PCA on this image alone."""
    s3, s4, s5 = _sd_layers(layers)
    p = [joint_pca(x, None, pca_dim)[0] for x in (s3, s4, s5)]
    sd = _copca_sd(p[0], p[1], p[2], grid)
    return torch.cat([sd, dino_part(layers, grid)]) if use_dino else sd


def fuse(fusion: str, layers: Mapping[str, torch.Tensor], grid: int, pca_dim: int = 256
         ) -> torch.Tensor:
    """Pair-independent descriptor (C, G, G) for any fusion name."""
    if fusion == "concat":
        return concat(layers, grid)
    if fusion == "dino":
        return dino_only(layers, grid)
    if fusion == "sd":
        return sd_only(layers, grid)
    if fusion == "copca":
        return copca_single(layers, grid, pca_dim)
    raise ValueError(f"unknown fusion {fusion!r}")


def fuse_pair(fusion: str, layers_a: Mapping[str, torch.Tensor],
              layers_b: Mapping[str, torch.Tensor], grid: int, pca_dim: int = 256
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Descriptors (C, G, G) of a pair; only copca is pair-dependent."""
    if fusion == "copca":
        return copca_pair(layers_a, layers_b, grid, pca_dim)
    return fuse(fusion, layers_a, grid, pca_dim), fuse(fusion, layers_b, grid, pca_dim)
