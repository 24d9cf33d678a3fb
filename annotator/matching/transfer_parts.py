"""Exact fast path of ``transfer`` for pair-independent fusions ("concat", "sd", "dino"), one
reference to many targets, without materialising the target's fused (C, G, G) descriptor.

The fused descriptor is a per-cell scaling of the concatenated resized layers. For "concat"
(``annotator.features.fusion.concat``, then ``transfer``'s own ``_check_desc`` normalisation)::

    D(cell) = [SD(cell) * a_sd(cell) | DINO(cell) * a_dino(cell)],
    SD = [s3 | up(s4) | up(s5)] at G x G,  DINO = up(dino) (identity at paper sizes),
    a_h = f_h * c2 * c3,  f_h = 1 / max(|h|, eps),  t = sqrt(sum_h (|h| f_h)^2),
    c2 = 1 / max(t, eps),  c3 = 1 / max(t c2, eps)          (so a_h = 1 / (sqrt(2) |h|) normally)

("sd"/"dino": one half, a = f * c3 with c3 = 1 / max(|h| f, eps)). Bilinear resizing is linear
and per channel, so for a query q (a row of the reference's fused descriptor, split by layer)
``q_l . up(x_l)(cell) = up(q_l . x_l)(cell)``: the (K, h, w) layer similarities are resized with
``fusion.resize``'s bilinear weights (PyTorch's own, as matrices A_h (G, h), A_w (G, w)). The
per-cell norms |up(x)|^2 come from the same matrices (bilinear: at most two adjacent taps per row)
and the channel Gram blocks R[i, i'] = x[:, i, :]^T x[:, i', :] (w x w) of equal and adjacent
rows: |up(x)(y, x)|^2 = A_w[x] (sum_{i, i'} A_h[y, i] A_h[y, i'] R[i, i']) A_w[x]^T, all matmuls
(``annotator.features.cell_norms``; the feature cache keeps them with its entries).
Cycle consistency needs the target's fused vectors at the K best cells (gathered from their at
most four bilinear taps) against every reference cell: the same decomposition on the
reference's layers, built once per reference. Hard argmax, soft-argmax, cycle, confidence and
the flip choice are ``annotator.matching.transfer``'s own code (``transfer_with``,
``match_similarity``).

Layers are read as (h * w, C) rows (the feature cache stores them channel-last) and every product is
a float32 1x1 convolution (``rows_similarity``). Results equal ``transfer(fuse(...), fuse(...))`` up
to float32 rounding (different summation order); an argmax can only differ where two cells'
similarities tie to within ~1e-6.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from annotator.features.cell_norms import interp_matrix, resized_norm2, usable_norm2
from annotator.features.letterbox import Letterbox
from annotator.matching.transfer import (
    MatchParams,
    TransferResult,
    _check_desc,
    _Raw,
    match_similarity,
    mutual_nn_distance,
    transfer_with,
)

EPS = 1e-8  # fusion.l2n and transfer._check_desc
#: fusion name -> halves (layer names per half, in the fused channel order)
HALVES: dict[str, tuple[tuple[str, ...], ...]] = {
    "concat": (("s3", "s4", "s5"), ("dino",)),
    "sd": (("s3", "s4", "s5"),),
    "dino": (("dino",),),
}


def supports(fusion: str) -> bool:
    return fusion in HALVES


def rows_similarity(q: torch.Tensor, rows: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(Q, C) queries against the (h * w, C) rows of a channel-last layer -> (Q, h * w) float32
    dot products, as a 1x1 convolution: PyTorch's CPU matmul goes to MKL, whose kernels run at
    about two thirds of oneDNN's on AMD CPUs; oneDNN's convolution on a channel-last input is the
    fastest float32 product here (2.3x MKL for 30 queries, 1.5x for 240; measured in
    BENCHMARKS.md). Half-precision rows are converted to float32 first (a contiguous pass)."""
    if q.ndim != 2 or rows.ndim != 2 or q.shape[1] != rows.shape[1] or rows.shape[0] != h * w:
        raise ValueError(f"queries {tuple(q.shape)} do not match rows {tuple(rows.shape)} of a "
                         f"{h}x{w} layer")
    if q.shape[0] == 0:
        return torch.zeros(0, h * w, dtype=torch.float32)
    r = rows if rows.dtype == torch.float32 else rows.float()
    if not r.is_contiguous():
        r = r.contiguous()
    x = r.view(1, h, w, r.shape[1]).permute(0, 3, 1, 2)  # (1, C, h, w), channels-last strides
    out = F.conv2d(x, q.float()[:, :, None, None])  # (1, Q, h, w)
    return out.reshape(q.shape[0], h * w)


@lru_cache(maxsize=32)
def _tap_table(n: int, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear resize n -> g along one axis as taps: per output sample (g,), the first input
    index i and the float32 weights of inputs i and i + 1 (the second is 0 where there is one
    tap), read from ``interp_matrix`` (PyTorch's own weights)."""
    a = interp_matrix(n, g).numpy()
    first = (a != 0).argmax(1)
    second = np.minimum(first + 1, n - 1)
    rows = np.arange(g)
    w1 = np.where(second > first, a[rows, second], np.float32(0)).astype(np.float32)
    return first, a[rows, first].astype(np.float32), w1


class _Layer:
    """One raw layer (C, h, w) as a part of a G x G descriptor (bilinear resize when h, w != G).

    The layer is used as its (h * w, C) rows: a view of the feature cache's channel-last layers
    (any other layout is copied once). Products are float32 (``rows_similarity``); the rows are
    converted to float32 once, on first use."""

    def __init__(self, x: torch.Tensor, grid: int, norm2: torch.Tensor | None = None) -> None:
        if x.ndim != 3:
            raise ValueError(f"layer must have shape (C, H, W), got {tuple(x.shape)}")
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            x = x.float()
        self.x = x
        self.c, self.h, self.w = self.x.shape
        self.g = grid
        self.same = self.h == grid and self.w == grid
        self.rows = x.permute(1, 2, 0).reshape(self.h * self.w, self.c)  # (h*w, C)
        self._rows32: torch.Tensor | None = None
        self._norm2 = norm2  # stored norms (FeatureMaps.norms), else computed on demand
        if not self.same:
            self.ah = interp_matrix(self.h, grid)  # (G, h)
            self.aw = interp_matrix(self.w, grid)  # (G, w)

    def rows32(self) -> torch.Tensor:
        """(h*w, C) float32 contiguous rows (converted once)."""
        if self._rows32 is None:
            r = self.rows.float()
            self._rows32 = r if r.is_contiguous() else r.contiguous()
        return self._rows32

    def norm2(self) -> torch.Tensor:
        """(G*G,) squared norms of the resized layer per cell (annotator.features.cell_norms)."""
        if self._norm2 is None:
            self._norm2 = resized_norm2(self.x, self.g)
        return self._norm2

    def similarity(self, q: torch.Tensor) -> torch.Tensor:
        """(Q, C) queries -> (Q, G*G) dot products with the resized layer."""
        m = rows_similarity(q, self.rows32(), self.h, self.w)  # (Q, h*w)
        if self.same:
            return m
        # bilinear resize of the (Q, h, w) maps with PyTorch's own weights as two matmuls
        # (A_h m A_w^T; 2-3x faster than F.interpolate here, equal to float32 rounding)
        nq = q.shape[0]
        t = (m.reshape(nq * self.h, self.w) @ self.aw.T).reshape(nq, self.h, self.g)
        return torch.matmul(self.ah, t).reshape(nq, -1)

    def at(self, idx: torch.Tensor) -> torch.Tensor:
        """(K,) flat cells -> (K, C) float32 resized layer vectors there, from the (at most
        four) bilinear taps of each cell (row gathers)."""
        cells = idx.numpy()
        if not self.same:
            g, w, k = self.g, self.w, len(cells)
            ty, tx = _tap_table(self.h, g), _tap_table(self.w, g)
            iy, ix = np.divmod(cells, g)
            y0, x0 = ty[0][iy], tx[0][ix]
            y1, x1 = np.minimum(y0 + 1, self.h - 1), np.minimum(x0 + 1, w - 1)
            cells = np.concatenate([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1])
            wts = np.stack([ty[1][iy] * tx[1][ix], ty[1][iy] * tx[2][ix],
                            ty[2][iy] * tx[1][ix], ty[2][iy] * tx[2][ix]])  # (4, K) float32
        v = self.rows32().index_select(0, torch.from_numpy(cells))  # (K or 4K, C)
        if not self.same:
            v = torch.einsum("tkc,tk->kc", v.reshape(4, k, self.c), torch.from_numpy(wts))
        return v


class PartsDescriptor:
    """The fused (C, G, G) descriptor of one image, kept as its raw layers and per-cell scales.

    ``similarity(q)`` equals ``q @ D.flatten(1)`` and ``vectors(idx)`` equals
    ``D.flatten(1)[:, idx].T`` for D = ``_check_desc(fusion.fuse(fusion, layers, grid))``."""

    def __init__(self, fusion: str, layers: Mapping[str, torch.Tensor], grid: int,
                 norms: Mapping[str, torch.Tensor] | None = None) -> None:
        if fusion not in HALVES:
            raise ValueError(f"no parts fast path for fusion {fusion!r}")
        missing = [k for half in HALVES[fusion] for k in half if k not in layers]
        if missing:
            raise ValueError(f"fusion {fusion!r} needs layers {missing}")
        self.grid = grid
        self.halves = [[_Layer(layers[k], grid, usable_norm2(norms, k, grid)) for k in half]
                       for half in HALVES[fusion]]
        self.channels = sum(p.c for half in self.halves for p in half)
        norms = [torch.stack([p.norm2() for p in half]).sum(0).sqrt() for half in self.halves]
        f = [1.0 / n.clamp_min(EPS) for n in norms]  # l2n of each half
        unit = [n * fi for n, fi in zip(norms, f)]  # each half's norm after its l2n
        if len(self.halves) > 1:  # concat: l2n of the concatenation, then _check_desc's l2n
            t = torch.stack(unit).square().sum(0).sqrt()
            c2 = 1.0 / t.clamp_min(EPS)
            c3 = 1.0 / (t * c2).clamp_min(EPS)
            self.scales = [fi * c2 * c3 for fi in f]
        else:  # single half: _check_desc's l2n only
            self.scales = [f[0] / unit[0].clamp_min(EPS)]

    def _split(self, q: torch.Tensor) -> list[list[torch.Tensor]]:
        out, o = [], 0
        for half in self.halves:
            out.append([q[:, o + sum(p.c for p in half[:j]): o + sum(p.c for p in half[:j + 1])]
                        for j in range(len(half))])
            o += sum(p.c for p in half)
        return out

    def similarity(self, q: torch.Tensor) -> torch.Tensor:
        """(Q, C) -> (Q, G*G) cosine similarities with every cell of the fused descriptor."""
        if q.shape[1] != self.channels:
            raise ValueError(f"queries have {q.shape[1]} channels, descriptor {self.channels}")
        total = None
        for half, qs, scale in zip(self.halves, self._split(q.float()), self.scales):
            s = half[0].similarity(qs[0])
            for p, qp in zip(half[1:], qs[1:]):
                s = s + p.similarity(qp)
            s = s * scale[None]
            total = s if total is None else total + s
        assert total is not None
        return total

    def vectors(self, idx: torch.Tensor) -> torch.Tensor:
        """(K,) flat cells -> (K, C) fused unit vectors there."""
        return torch.cat([p.at(idx) * scale[idx][:, None]
                          for half, scale in zip(self.halves, self.scales) for p in half], dim=1)


class PartsReference:
    """A reference prepared once for many targets: its fused descriptor (query rows, exactly
    what ``transfer`` uses) and its parts (the cycle's matching back)."""

    def __init__(self, fusion: str, desc: torch.Tensor, layers: Mapping[str, torch.Tensor],
                 grid: int, norms: Mapping[str, torch.Tensor] | None = None) -> None:
        d = _check_desc(desc, "ref_desc")
        if d.shape[1] != grid:
            raise ValueError(f"descriptor grid {d.shape[1]} differs from {grid}")
        self.flat = d.flatten(1).T.contiguous()  # (N, C)
        # float32 once: the reference's layers are multiplied with every target's vectors
        self.parts = PartsDescriptor(fusion, {k: v.float() for k, v in layers.items()}, grid,
                                     norms)
        if self.parts.channels != self.flat.shape[1]:
            raise ValueError("descriptor channels differ from the layers'")
        self.grid = grid


def transfer_parts(ref: PartsReference, tgt: PartsDescriptor, ref_points: np.ndarray,
                   ref_letterbox: Letterbox, tgt_letterbox: Letterbox,
                   params: MatchParams | None = None, ref_valid: np.ndarray | None = None,
                   flipped_ref: PartsReference | None = None,
                   flip_perm: Sequence[int] | np.ndarray | None = None) -> TransferResult:
    """``transfer(ref_desc, tgt_desc, ...)`` with the target kept as parts (same arguments and
    result; ``flipped_ref`` is the mirrored reference prepared the same way)."""
    params = params or MatchParams()
    g = ref.grid
    if tgt.grid != g or tgt.channels != ref.parts.channels:
        raise ValueError("reference and target descriptors differ in shape")

    def match(cells: np.ndarray, cell: float, flipped: bool) -> _Raw:
        r = ref
        if flipped:
            if flipped_ref is None or flipped_ref.flat.shape != ref.flat.shape:
                raise ValueError("flipped_ref must have the shape of ref")
            r = flipped_ref
        qidx = torch.from_numpy(cells[:, 1] * g + cells[:, 0])
        sim = tgt.similarity(r.flat[qidx])  # (K, N)
        return match_similarity(sim, lambda best: r.parts.similarity(tgt.vectors(best)),
                                qidx, g, cell, params)

    def score(flipped: bool) -> float:  # all reference cells against all target cells
        r = flipped_ref if flipped and flipped_ref is not None else ref
        return mutual_nn_distance(tgt.similarity(r.flat))

    return transfer_with(match, g, ref_points, ref_letterbox, tgt_letterbox, params, ref_valid,
                         flipped_ref is not None, flip_perm, score)


def parts_fusion(extractor: object) -> str | None:
    """The fusion to run through the parts fast path for ``extractor``, or None where it does not
    apply. It applies where ``extractor.describe(maps)`` is ``fusion.fuse(config.fusion,
    maps.layers, maps.grid)`` for a supported fusion: the SD + DINOv2 extractor, or any extractor
    that says so with a true ``parts_transfer`` attribute (False opts out)."""
    fusion = getattr(getattr(extractor, "config", None), "fusion", None)
    if not isinstance(fusion, str) or not supports(fusion):
        return None
    flag = getattr(extractor, "parts_transfer", None)
    if flag is None:
        import sys

        mod = sys.modules.get("annotator.features.sd_dino")
        flag = mod is not None and isinstance(extractor, mod.SDDinoExtractor)
    return fusion if flag else None
