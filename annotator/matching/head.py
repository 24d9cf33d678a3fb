"""A per-project keypoint head on frozen, L2-normalised patch descriptors (DESIGN.md section 12,
"Learned head").

Shapes: descriptors (N, C, G, G) (one (C, G, G) grid per training crop, unit norm per cell);
targets (N, K, 2) float (x, y) in *cell coordinates*: the centre of cell (i, j) is (i, j), so a
canvas point u maps to u / cell_size - 0.5 (cell = floor(u / cell_size), centre = cell_size * c
+ cell_size / 2, as in ``matching.transfer``); valid (N, K) bool; flip_perm (K,) long, each
keypoint's left/right partner (itself when unpaired).

Kinds (``HeadParams.kind``):
- ``linear``: per keypoint a 1 x 1 convolution (C -> K logits), softmax over all G * G cells,
  cross-entropy against a Gaussian (``sigma`` cells) at the label; Adam (DESIGN.md section 12).
- ``mlp``: 1 x 1 convolutions C -> ``hidden`` -> ReLU -> K, trained the same way; the measured
  best (the default).
- ``prototype``: no training; the mean labelled descriptor per keypoint, logits = cosine /
  ``temperature``.

Readout: argmax cell, refined by a soft-argmax over the ``window`` x ``window`` cells around it
(softmax of the logits); confidence = the softmax mass inside that window, in [0, 1].
Horizontal-flip augmentation mirrors the descriptor grid and swaps partners (``flip_perm``).

Saved as safetensors with JSON metadata (:func:`save_head`, :func:`load_head`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from annotator.features.letterbox import Letterbox

KINDS = ("linear", "mlp", "prototype")
FORMAT = "keypoint-annotator-head"
FORMAT_VERSION = 1


class HeadFileError(ValueError):
    """A saved head is missing, unreadable, or for other features or another schema."""


@dataclass(frozen=True)
class HeadParams:
    """Training settings. Defaults: the best measured on the DLC fixtures (BENCHMARKS.md
    "Learning from corrections"): the 2-layer head on 64 principal directions."""

    kind: str = "mlp"
    steps: int = 300
    lr: float = 1e-2
    weight_decay: float = 1e-4
    sigma: float = 1.0  # Gaussian target width, cells
    #: mirror the training grids, partners swapped (measured: no gain, twice the time)
    flip: bool = False
    hidden: int = 32  # mlp only
    temperature: float = 0.02  # prototype only
    window: int = 5  # soft-argmax window (cells, odd; 1 = argmax only)
    #: train in the top ``dim`` principal directions of the training cells (0: all C); the
    #: saved weights are mapped back to C channels. Speed: the steps are memory-bound.
    dim: int = 64
    #: also feed each cell the mean of its ``context`` x ``context`` neighbourhood (0: off);
    #: the head then sees 2C channels per cell
    context: int = 0
    threads: int = 1  # torch intra-op threads while training (0: leave as is); see train_head
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"head kind must be one of {KINDS}, got {self.kind!r}")
        if self.steps < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("steps must be >= 0, lr > 0 and weight_decay >= 0")
        if self.sigma <= 0 or self.temperature <= 0 or self.hidden < 1:
            raise ValueError("sigma, temperature and hidden must be > 0")
        if self.context < 0 or (self.context and self.context % 2 == 0):
            raise ValueError(f"context must be 0 or odd, got {self.context}")
        if self.dim < 0 or self.threads < 0:
            raise ValueError("dim and threads must be >= 0")
        if self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"window must be odd and >= 1, got {self.window}")


@dataclass(frozen=True, eq=False)
class KeypointHead:
    """A trained head: ``tensors`` float32 on the CPU ("weight" (K, C) and "bias" (K,) for
    linear and prototype; plus "hidden_weight" (H, C) and "hidden_bias" (H,) for mlp, where
    "weight" is (K, H); "labelled" (K,) training samples per keypoint); ``meta`` free JSON-able
    facts (what it was trained on)."""

    params: HeadParams
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_keypoints(self) -> int:
        return int(self.tensors["weight"].shape[0])

    @property
    def channels(self) -> int:
        key = "hidden_weight" if self.params.kind == "mlp" else "weight"
        return int(self.tensors[key].shape[1])

    def with_meta(self, **meta: Any) -> KeypointHead:
        return KeypointHead(self.params, self.tensors, {**self.meta, **meta})


# ---- coordinates -----------------------------------------------------------------------------
def pixels_to_cells(points: np.ndarray, letterbox: Letterbox, grid: int) -> np.ndarray:
    """Image (or crop) pixels (K, 2) -> cell coordinates (K, 2) of a ``grid`` descriptor."""
    cell = letterbox.canvas / grid
    return letterbox.to_canvas(points) / cell - 0.5


def cells_to_pixels(cells: np.ndarray, letterbox: Letterbox, grid: int) -> np.ndarray:
    """Cell coordinates (K, 2) -> image (or crop) pixels (K, 2)."""
    cell = letterbox.canvas / grid
    return letterbox.from_canvas((np.asarray(cells, np.float64) + 0.5) * cell)


def flip_permutation_of_names(names: Sequence[str]) -> np.ndarray:
    """(K,) partner per keypoint from left/right names (``domain.schema.infer_flip_pairs``)."""
    from annotator.domain.schema import infer_flip_pairs

    perm = np.arange(len(names))
    for a, b in infer_flip_pairs(list(names)):
        perm[a], perm[b] = b, a
    return perm


# ---- checks ----------------------------------------------------------------------------------
def _check_inputs(descriptors: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                  flip_perm: torch.Tensor) -> tuple[int, int, int, int]:
    if descriptors.ndim != 4 or descriptors.shape[-1] != descriptors.shape[-2]:
        raise ValueError(f"descriptors must be (N, C, G, G), got {tuple(descriptors.shape)}")
    n, c, g, _ = descriptors.shape
    if n < 1:
        raise ValueError("at least one training descriptor is needed")
    if targets.ndim != 3 or targets.shape[0] != n or targets.shape[2] != 2:
        raise ValueError(f"targets must be (N={n}, K, 2), got {tuple(targets.shape)}")
    k = targets.shape[1]
    if tuple(valid.shape) != (n, k):
        raise ValueError(f"valid must be (N={n}, K={k}), got {tuple(valid.shape)}")
    if tuple(flip_perm.shape) != (k,) or sorted(flip_perm.tolist()) != list(range(k)):
        raise ValueError(f"flip_perm must be a permutation of {k} keypoints, got "
                         f"{flip_perm.tolist()}")
    if not bool(valid.any()):
        raise ValueError("no labelled keypoint to train on")
    return n, c, g, k


def _gaussians(targets: torch.Tensor, g: int, sigma: float) -> torch.Tensor:
    """(N, K, 2) cell coords -> (N, K, G*G) normalised Gaussians (row-major cells)."""
    ax = torch.arange(g, dtype=targets.dtype, device=targets.device)
    gx = torch.exp(-(ax[None, None, :] - targets[..., 0:1]) ** 2 / (2 * sigma ** 2))  # (N,K,G)
    gy = torch.exp(-(ax[None, None, :] - targets[..., 1:2]) ** 2 / (2 * sigma ** 2))
    heat = (gy[..., :, None] * gx[..., None, :]).reshape(*targets.shape[:2], g * g)
    return heat / heat.sum(-1, keepdim=True).clamp_min(1e-12)


def _augment(x: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, perm: torch.Tensor,
             g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Append the horizontally mirrored grids with partners swapped."""
    fx = x.flip(-1)
    ft = targets[:, perm].clone()
    ft[..., 0] = (g - 1) - ft[..., 0]
    return torch.cat([x, fx]), torch.cat([targets, ft]), torch.cat([valid, valid[:, perm]])


def _inputs(x: torch.Tensor, context: int) -> torch.Tensor:
    """(N, C, G, G) descriptors -> (N, C', G, G) head inputs (C' = 2C with context)."""
    if not context:
        return x
    pooled = torch.nn.functional.avg_pool2d(x, context, stride=1, padding=context // 2,
                                            count_include_pad=False)
    return torch.cat([x, pooled], dim=1)


def _logits(tensors: dict[str, torch.Tensor], kind: str, x: torch.Tensor) -> torch.Tensor:
    """(N, P, C) cell descriptors -> (N, P, K) logits."""
    if kind == "mlp":
        x = torch.relu(x @ tensors["hidden_weight"].T + tensors["hidden_bias"])
    return x @ tensors["weight"].T + tensors["bias"]


# ---- training --------------------------------------------------------------------------------
def train_head(descriptors: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
               flip_perm: torch.Tensor | np.ndarray | Sequence[int],
               params: HeadParams = HeadParams()) -> KeypointHead:
    """Train a head on ``descriptors`` (N, C, G, G), ``targets`` (N, K, 2) cell coordinates and
    ``valid`` (N, K). Runs on the descriptors' device in float32; deterministic for a seed.
    Targets outside the grid are ignored (not valid).

    The steps are small memory-bound matmuls: with ``params.threads`` (default 1) torch's
    intra-op thread count is set for the call and restored after (it is process-wide); one
    thread was 4x faster than two on the project's busy 2-core machine."""
    if params.threads and descriptors.device.type == "cpu":
        before = torch.get_num_threads()
        torch.set_num_threads(params.threads)
        try:
            return _train(descriptors, targets, valid, flip_perm, params)
        finally:
            torch.set_num_threads(before)
    return _train(descriptors, targets, valid, flip_perm, params)


def _train(descriptors: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
           flip_perm: torch.Tensor | np.ndarray | Sequence[int], params: HeadParams
           ) -> KeypointHead:
    dev = descriptors.device
    x = descriptors.detach().to(dev, torch.float32)
    t = torch.as_tensor(targets, dtype=torch.float32).to(dev)
    v = torch.as_tensor(valid, dtype=torch.bool).to(dev)
    perm = torch.as_tensor(np.asarray(flip_perm), dtype=torch.long).to(dev)
    n, c, g, k = _check_inputs(x, t, v, perm)
    inside = torch.isfinite(t).all(-1) & (t >= -0.5).all(-1) & (t <= g - 0.5).all(-1)
    v = v & inside
    if not bool(v.any()):
        raise ValueError("no labelled keypoint lies on the descriptor grid")
    t = torch.nan_to_num(t)
    if params.flip:
        x, t, v = _augment(x, t, v, perm, g)
    flat = _inputs(x, params.context).flatten(2).transpose(1, 2).contiguous()  # (N', G*G, C')
    start = time.perf_counter()
    if params.kind == "prototype":
        tensors = _prototypes(flat, t, v, g, params.temperature)
    else:
        basis = _basis(flat, params.dim, params.seed)
        if basis is not None:
            flat = flat @ basis
        tensors = _fit(flat, _gaussians(t, g, params.sigma), v, k, params)
        if basis is not None:  # back to C channels: x @ basis @ w.T = x @ (w @ basis.T).T
            first = "hidden_weight" if params.kind == "mlp" else "weight"
            tensors[first] = tensors[first].detach() @ basis.T
    meta = {"train_seconds": time.perf_counter() - start, "grid": g,
            "train_instances": n, "labelled_points": int(v[:n].sum())}
    tensors["labelled"] = v.sum(0).float()  # (K,) samples per keypoint (0: never learned)
    return KeypointHead(params, {name: w.detach().to("cpu", torch.float32).contiguous()
                                 for name, w in tensors.items()}, meta)


def _prototypes(flat: torch.Tensor, t: torch.Tensor, v: torch.Tensor, g: int,
                temperature: float) -> dict[str, torch.Tensor]:
    cells = t.round().clamp(0, g - 1).long()
    idx = cells[..., 1] * g + cells[..., 0]  # (N, K)
    picked = torch.gather(flat, 1, idx[..., None].expand(-1, -1, flat.shape[-1]))  # (N, K, C)
    w = (picked * v[..., None]).sum(0) / v.sum(0).clamp_min(1)[:, None]
    w = torch.nn.functional.normalize(w, dim=-1) / temperature
    return {"weight": w, "bias": torch.zeros(w.shape[0], device=w.device)}


def _basis(flat: torch.Tensor, dim: int, seed: int, sample: int = 16384
           ) -> torch.Tensor | None:
    """(C, dim) orthonormal top principal directions (uncentred) of up to ``sample`` random
    cells of ``flat`` (N, P, C); None when ``dim`` is 0 or not below C."""
    c = flat.shape[-1]
    if dim <= 0 or dim >= c:
        return None
    cells = flat.reshape(-1, c)
    if len(cells) > sample:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        cells = cells[torch.randperm(len(cells), generator=gen)[:sample].to(cells.device)]
    _, vecs = torch.linalg.eigh(cells.T @ cells)  # ascending eigenvalues
    return vecs[:, -dim:].flip(-1).contiguous()


def _fit(flat: torch.Tensor, heat: torch.Tensor, v: torch.Tensor, k: int, params: HeadParams
         ) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(params.seed)
    c, dev = flat.shape[-1], flat.device
    if params.kind == "mlp":
        h = params.hidden
        tensors = {"hidden_weight": torch.randn(h, c, generator=gen) * math.sqrt(2.0 / c),
                   "hidden_bias": torch.zeros(h),
                   "weight": torch.randn(k, h, generator=gen) * math.sqrt(1.0 / h),
                   "bias": torch.zeros(k)}
    else:
        tensors = {"weight": torch.zeros(k, c), "bias": torch.zeros(k)}
    tensors = {name: w.to(dev).requires_grad_(True) for name, w in tensors.items()}
    opt = torch.optim.Adam(tensors.values(), lr=params.lr, weight_decay=params.weight_decay)
    mask = v.to(flat.dtype)  # (N, K)
    denom = mask.sum().clamp_min(1)
    target = heat.transpose(1, 2)  # (N, P, K)
    for _ in range(params.steps):
        opt.zero_grad(set_to_none=True)
        logp = torch.log_softmax(_logits(tensors, params.kind, flat), dim=1)  # over cells
        loss = -((target * logp).sum(1) * mask).sum() / denom
        loss.backward()
        opt.step()
    return tensors


# ---- prediction ------------------------------------------------------------------------------
def heatmap(head: KeypointHead, descriptor: torch.Tensor) -> torch.Tensor:
    """(C, G, G) descriptor -> (K, G, G) logits, float32 on the descriptor's device."""
    if descriptor.ndim != 3 or descriptor.shape[1] != descriptor.shape[2]:
        raise ValueError(f"descriptor must be (C, G, G), got {tuple(descriptor.shape)}")
    x = _inputs(descriptor.detach().to(torch.float32)[None], head.params.context)[0]
    c, g, _ = x.shape
    if c != head.channels:
        raise ValueError(f"descriptor gives {c} input channels, the head was trained on "
                         f"{head.channels}")
    dev = descriptor.device
    tensors = {n: w.to(dev) for n, w in head.tensors.items()}
    flat = x.flatten(1).T  # (P, C')
    return _logits(tensors, head.params.kind, flat).T.reshape(-1, g, g)


@torch.no_grad()
def predict(head: KeypointHead, descriptor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, G, G) -> (cells (K, 2) float64 cell coordinates (x, y), confidence (K,) float64 in
    [0, 1]: the softmax mass of the readout window), on the CPU. A keypoint the head never saw
    labelled gets NaN cells and confidence 0."""
    logits = heatmap(head, descriptor)
    k, g, _ = logits.shape
    prob = torch.softmax(logits.reshape(k, -1), dim=1).reshape(k, g, g).double().cpu()
    idx = prob.reshape(k, -1).argmax(1)
    iy, ix = idx // g, idx % g
    r = head.params.window // 2
    offs = torch.arange(-r, r + 1)
    ys = (iy[:, None] + offs[None, :]).clamp(0, g - 1)  # (K, W); clamped rows repeat: mask
    xs = (ix[:, None] + offs[None, :]).clamp(0, g - 1)
    okx = ((ix[:, None] + offs[None, :]) >= 0) & ((ix[:, None] + offs[None, :]) < g)
    oky = ((iy[:, None] + offs[None, :]) >= 0) & ((iy[:, None] + offs[None, :]) < g)
    win = prob[torch.arange(k)[:, None, None], ys[:, :, None], xs[:, None, :]]  # (K, W, W)
    win = win * (oky[:, :, None] & okx[:, None, :])
    mass = win.sum((1, 2))
    w = win / mass.clamp_min(1e-12)[:, None, None]
    cx = (w * xs[:, None, :].double()).sum((1, 2))
    cy = (w * ys[:, :, None].double()).sum((1, 2))
    cells, conf = torch.stack([cx, cy], 1), mass.clamp(0, 1)
    seen = head.tensors.get("labelled")
    if seen is not None:
        unseen = seen.cpu() <= 0
        cells[unseen] = float("nan")
        conf[unseen] = 0.0
    return cells, conf


# ---- files -----------------------------------------------------------------------------------
def save_head(head: KeypointHead, path: str | Path, *, fingerprint: str,
              keypoints: Sequence[str], images: Sequence[str] = ()) -> Path:
    """Write ``head`` to ``path`` (safetensors; metadata: the feature fingerprint, the schema's
    keypoint names, the training images and the time), atomically."""
    from safetensors.torch import save_file

    if len(keypoints) != head.num_keypoints:
        raise ValueError(f"{len(keypoints)} keypoint names for a head of {head.num_keypoints}")
    path = Path(path)
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "fingerprint": fingerprint,
            "keypoints": list(keypoints), "images": list(images), "num_images": len(images),
            "saved": time.time(), "params": asdict(head.params), "meta": head.meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(dict(head.tensors), str(tmp), metadata={"head": json.dumps(meta)})
    tmp.replace(path)
    return path


def read_head_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a saved head (raises HeadFileError)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("head")
        meta = json.loads(raw) if raw else None
    except FileNotFoundError:
        raise HeadFileError(f"no trained head at {path}") from None
    except Exception as exc:  # noqa: BLE001 - safetensors' own errors derive from Exception
        raise HeadFileError(f"{path} is not a readable head file ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise HeadFileError(f"{path} is not a keypoint head file")
    if meta.get("version") != FORMAT_VERSION:
        raise HeadFileError(f"{path}: head format version {meta.get('version')} is not "
                            f"{FORMAT_VERSION}; retrain")
    return meta


def load_head(path: str | Path, *, fingerprint: str | None = None,
              keypoints: Sequence[str] | None = None) -> KeypointHead:
    """Read a head saved by :func:`save_head`; with ``fingerprint`` / ``keypoints`` given,
    refuse (HeadFileError) one trained on other features or for another schema."""
    from safetensors.torch import load_file

    meta = read_head_metadata(path)
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise HeadFileError(f"{path} was trained on other features (feature settings changed); "
                            "retrain")
    if keypoints is not None and list(meta.get("keypoints", [])) != list(keypoints):
        raise HeadFileError(f"{path} was trained for keypoints {meta.get('keypoints')}, the "
                            f"schema has {list(keypoints)}; retrain")
    try:
        tensors = load_file(str(path))
        params = HeadParams(**meta["params"])
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise HeadFileError(f"{path} is not a readable head file ({exc})") from None
    needed = {"weight", "bias"} | ({"hidden_weight", "hidden_bias"}
                                   if params.kind == "mlp" else set())
    if not needed <= set(tensors):
        raise HeadFileError(f"{path} lacks tensors {sorted(needed - set(tensors))}")
    info = {k: meta[k] for k in ("fingerprint", "keypoints", "images", "num_images", "saved")}
    return KeypointHead(params, {n: t.float() for n, t in tensors.items()},
                        {**meta.get("meta", {}), **info})
