"""DIY-SC's DINOv2-only feature adapter (DESIGN.md section 9; CC0 checkpoint 0300_dino_spair).

One bottleneck residual block on the raw DINOv2 map (768, 60, 60), convolutions without bias,
GroupNorm of 32 groups (eps 1e-5, affine) after each convolution:

    a = ReLU(GN(conv1x1 768->192 (x)));  b = ReLU(GN(conv3x3 192->192, pad 1 (a)))
    c = GN(conv1x1 192->768 (b));        out = ReLU(c + x)

Run on the whole padded map (GroupNorm statistics depend on it), in eval mode (the training
build drops 20 % of the input). The checkpoint is a plain state dict; its training-only entries
(logit_scale, self_logit_scale, mixing_weights: a single branch has softmax weight 1) are checked
and dropped, every other key must match exactly (strict load). Loaded with
``torch.load(weights_only=True)``: no code from the file runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from annotator.features.config import DIY_SC_SHA256, DIY_SC_URL

log = logging.getLogger(__name__)

PREFIX = "bottleneck_layers.0.0."
TRAINING_ONLY = ("logit_scale", "self_logit_scale", "mixing_weights")
CHECKPOINT_NAME = "diy-sc-0300_dino_spair.pth"


class AdapterLoadError(RuntimeError):
    """The adapter checkpoint is missing, corrupt or does not fit; the message says how to fix."""


class _ConvNorm(nn.Module):
    """Convolution without bias followed by GroupNorm (keys ``weight``, ``norm.*``)."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, kernel, kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.padding = kernel // 2
        self.norm = nn.GroupNorm(groups, cout, eps=1e-5, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(nn.functional.conv2d(x, self.weight, None, 1, self.padding))


class _Bottleneck(nn.Module):
    def __init__(self, channels: int, bottleneck: int, groups: int) -> None:
        super().__init__()
        self.conv1 = _ConvNorm(channels, bottleneck, 1, groups)
        self.conv2 = _ConvNorm(bottleneck, bottleneck, 3, groups)
        self.conv3 = _ConvNorm(bottleneck, channels, 1, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv1(x))
        out = torch.relu(self.conv2(out))
        return torch.relu(self.conv3(out) + x)


class DiyAdapter(nn.Module):
    """(B, C, H, W) raw DINOv2 maps -> (B, C, H, W) adapted maps (non-negative; not normalised:
    the fusion L2-normalises per cell). ``channels`` 768 and ``bottleneck`` 192 for DINOv2-B."""

    def __init__(self, channels: int = 768, bottleneck: int = 192, groups: int = 32) -> None:
        super().__init__()
        if channels % groups or bottleneck % groups:
            raise ValueError(f"channels {channels} and bottleneck {bottleneck} must be "
                             f"multiples of the {groups} groups")
        self.channels = channels
        # key layout of the checkpoint: bottleneck_layers.0.0.conv{1,2,3}.{weight,norm.*}
        self.bottleneck_layers = nn.ModuleList([nn.Sequential(_Bottleneck(channels, bottleneck,
                                                                          groups))])
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"adapter input must be (B, {self.channels}, H, W), got "
                             f"{tuple(x.shape)}")
        return self.bottleneck_layers[0](x)


def adapter_state(raw: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The module's state dict from a checkpoint: training-only keys checked and dropped."""
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise AdapterLoadError(f"{source}: not a plain state dict of tensors")
    state = {k: v for k, v in raw.items() if k not in TRAINING_ONLY}
    mixing = raw.get("mixing_weights")
    if mixing is not None and mixing.numel() != 1:
        raise AdapterLoadError(f"{source}: {mixing.numel()} mixing weights; the DINOv2-only "
                               "adapter has a single branch")
    return state


def build_adapter(raw: Mapping[str, torch.Tensor], source: str = "checkpoint") -> DiyAdapter:
    """A DiyAdapter with ``raw`` loaded strictly (every key and shape must match)."""
    state = adapter_state(raw, source)
    w1 = state.get(PREFIX + "conv1.weight")
    if w1 is None or w1.ndim != 4:
        raise AdapterLoadError(f"{source}: no {PREFIX}conv1.weight; keys {sorted(state)[:6]}")
    model = DiyAdapter(channels=int(w1.shape[1]), bottleneck=int(w1.shape[0]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise AdapterLoadError(f"{source} does not fit the DIY-SC adapter: {exc}") from exc
    return model.eval().requires_grad_(False)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_checkpoint_file(path: Path, sha256: str | None = DIY_SC_SHA256) -> DiyAdapter:
    """Verify ``path`` against ``sha256`` (None: no check) and load it strictly."""
    if not path.is_file():
        raise AdapterLoadError(f"DIY-SC adapter checkpoint {path} does not exist")
    if sha256 is not None:
        got = sha256_file(path)
        if got != sha256:
            raise AdapterLoadError(
                f"DIY-SC adapter checkpoint {path} has sha256 {got}, expected {sha256}: the "
                f"file is corrupt or a different checkpoint. Fix: delete it and download "
                f"{DIY_SC_URL} again.")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise AdapterLoadError(f"cannot read the DIY-SC adapter checkpoint {path}: {exc}") from exc
    return build_adapter(raw, str(path))


def default_checkpoint_dir() -> Path:
    from platformdirs import user_cache_dir

    from annotator.features.cache import APP_NAME

    return Path(user_cache_dir(APP_NAME)) / "weights"


Downloader = Callable[[str, Path], None]


#: the checkpoint is 2.5 MB; a download that grows past this is not it (a wrong URL, a
#: hostile server) and is stopped before it fills the disk
MAX_DOWNLOAD_BYTES = 16 << 20


def _download(url: str, dest: Path, limit: int = MAX_DOWNLOAD_BYTES) -> None:
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:  # noqa: S310
        copy_capped(resp, out, limit, url)


def copy_capped(src: Any, out: Any, limit: int, what: str) -> int:
    """Copy ``src`` (a file-like ``read``) to ``out`` in 1 MiB chunks; OSError once more than
    ``limit`` bytes arrived. Returns the bytes copied."""
    total = 0
    while chunk := src.read(1 << 20):
        total += len(chunk)
        if total > limit:
            raise OSError(f"{what}: more than {limit >> 20} MiB; not the DIY-SC checkpoint")
        out.write(chunk)
    return total


def load_diy_adapter(checkpoint: str | None = None, *, cache_dir: str | Path | None = None,
                     offline: bool = False, download: Downloader = _download) -> DiyAdapter:
    """The DIY-SC adapter from ``checkpoint`` (a local file), else from the weights cache,
    downloading it on first use from the DIY-SC repository (sha256-verified before use)."""
    if checkpoint:
        return load_checkpoint_file(Path(os.path.expanduser(checkpoint)))
    folder = Path(cache_dir) if cache_dir else default_checkpoint_dir()
    path = folder / CHECKPOINT_NAME
    if not path.is_file():
        if offline:
            raise AdapterLoadError(
                f"the DIY-SC adapter checkpoint is not in {folder} and downloads are off "
                f"(offline mode). Fix: download {DIY_SC_URL} on another machine and set its "
                f"path in Settings (DIY-SC checkpoint) or ANNOTATOR_DIY_CHECKPOINT.")
        folder.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part")
        log.info("downloading the DIY-SC adapter from %s", DIY_SC_URL)
        try:
            download(DIY_SC_URL, part)
            got = sha256_file(part)
            if got != DIY_SC_SHA256:
                raise AdapterLoadError(f"the downloaded DIY-SC checkpoint has sha256 {got}, "
                                       f"expected {DIY_SC_SHA256}; not used")
            part.replace(path)
        except OSError as exc:
            raise AdapterLoadError(
                f"could not download the DIY-SC adapter from {DIY_SC_URL}: {exc}. Fix: download "
                f"it by hand and set its path in Settings or ANNOTATOR_DIY_CHECKPOINT.") from exc
        finally:
            part.unlink(missing_ok=True)
    return load_checkpoint_file(path)
