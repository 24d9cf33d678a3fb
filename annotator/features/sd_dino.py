"""The product's extractor: Stable Diffusion 1.5 UNet decoder features + DINOv2 (DESIGN.md 3).

SD: letterbox to ``sd_size``; tiles of ``sd_tile`` at every (y, x) of ``sd_tile_offsets``; all tiles
of a batch of images in one forward; pixels to [-1, 1]; VAE posterior mean * scaling factor;
one fixed noise tensor (1, 4, tile/8, tile/8) from a CPU generator seeded ``seed``; DDPM
``add_noise`` at ``timestep``; prompt embedding encoded once. Hooks on up_blocks[0].resnets[1]
(s5), up_blocks[1].attentions[1] (s4), up_blocks[2].attentions[1] (s3); the s3 hook stops the UNet.

Stitching: per tile the maps have strides 64 (s5), 32 (s4), 16 (s3) canvas px (a 512 tile gives
8, 16, 32 cells). Each tile map is placed at offset/stride in a canvas map of sd_size/stride cells
and overlaps are averaged, at native resolution, so nothing is resampled: at S=960 this gives
exactly s5 15 x 15, s4 30 x 30, s3 60 x 60 (tile offsets must be multiples of 64).

DINOv2: letterbox to ``dino_size``, ImageNet mean/std, hidden_states[dino_layer], CLS and register
tokens dropped -> (C, dino_size/14, dino_size/14); with ``config.adapter`` "diy-sc" the DIY-SC
adapter (annotator.features.adapter) runs on that whole map and its output is the "dino" layer.

FreeU (``config.freeu``; GeoAware-SC's feature code, DESIGN.md section 9): before every UNet
decoder resnet, whose input is cat([h, skip]), where h has C_hi channels (the last entry of
``block_out_channels``: 1280 in SD 1.5) h[:, :C_hi/2] *= b1 = 1.2 and the skip's central 2 x 2
box of its fftshifted spectrum is scaled by s1 = 0.9; where h has C_hi/2 channels (640),
h[:, :C_hi/4] *= b2 = 1.4 and the skip box by s2 = 0.2. Applied by forward pre-hooks on the
diffusers resnets (diffusers' own FreeU is keyed by block index instead: different tensors).
GeoAware records s5, s4, s3 as the h of the next resnet and scales it in place, so the recorded
maps carry the b factor of their channel count too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from annotator.features import fusion
from annotator.features.config import FeatureConfig, fingerprint
from annotator.features.extractor import FeatureMaps, check_image
from annotator.features.letterbox import Letterbox
from annotator.features.models import DinoComponents, SDComponents

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _StopUNet(Exception):
    """Raised by the s3 hook to end the UNet forward early."""


def _first(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output.sample  # Transformer2DModelOutput


@dataclass(frozen=True)
class FreeU:
    """GeoAware-SC's FreeU factors; ``channels`` is C_hi (1280 for SD 1.5)."""

    channels: int
    b1: float = 1.2
    b2: float = 1.4
    s1: float = 0.9
    s2: float = 0.2

    @classmethod
    def for_unet(cls, unet: Any) -> FreeU:
        return cls(int(unet.config.block_out_channels[-1]))

    def factors(self, h_channels: int) -> tuple[float, float] | None:
        """(backbone factor, skip factor) for a decoder input h of ``h_channels``."""
        if h_channels == self.channels:
            return self.b1, self.s1
        if h_channels == self.channels // 2:
            return self.b2, self.s2
        return None

    def backbone(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, C, H, W) with its first C/2 channels scaled (a copy; h is not modified)."""
        f = self.factors(h.shape[1])
        if f is None:
            return h
        out = h.clone()
        out[:, :h.shape[1] // 2] *= f[0]
        return out


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """(B, C, H, W): scale the central (2 threshold)^2 box of the fftshifted 2-D spectrum by
    ``scale`` and return the real part of the inverse (computed in float32, returned in x's
    dtype). Box rows/cols H//2 - threshold .. H//2 + threshold - 1, as GeoAware-SC."""
    if x.ndim != 4:
        raise ValueError(f"x must be (B, C, H, W), got {tuple(x.shape)}")
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = x.shape[-2:]
    cy, cx = h // 2, w // 2
    mask = torch.ones(h, w, device=x.device)
    mask[max(cy - threshold, 0):cy + threshold, max(cx - threshold, 0):cx + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def _decoder_inputs(unet: Any) -> list[tuple[Any, int]]:
    """(resnet, channels of h in its input cat([h, skip])) for every decoder resnet, in order."""
    prev = int(unet.mid_block.resnets[-1].out_channels)
    out = []
    for block in unet.up_blocks:
        for resnet in block.resnets:
            out.append((resnet, prev))
            prev = int(resnet.out_channels)
    return out


def _freeu_hooks(unet: Any, freeu: FreeU) -> list[Any]:
    """Forward pre-hooks applying FreeU to the input of every decoder resnet."""
    handles = []
    for resnet, h_ch in _decoder_inputs(unet):
        f = freeu.factors(h_ch)
        if f is None:
            continue

        def pre(_module: Any, args: tuple, kwargs: dict, h_ch: int = h_ch,
                f: tuple[float, float] = f) -> tuple[tuple, dict]:
            x = args[0] if args else kwargs["input_tensor"]
            if x.shape[1] <= h_ch:
                raise RuntimeError(f"FreeU: decoder input has {x.shape[1]} channels, expected "
                                   f"more than h's {h_ch}")
            h, skip = x[:, :h_ch], x[:, h_ch:]
            h = torch.cat([h[:, :h_ch // 2] * f[0], h[:, h_ch // 2:]], dim=1)
            x = torch.cat([h, fourier_filter(skip, 1, f[1])], dim=1)
            if args:
                return (x, *args[1:]), kwargs
            return args, {**kwargs, "input_tensor": x}

        handles.append(resnet.register_forward_pre_hook(pre, with_kwargs=True))
    return handles


def unet_features(unet: Any, latents: torch.Tensor, timestep: int,
                  encoder_hidden_states: torch.Tensor, stop_early: bool = True,
                  freeu: FreeU | None = None) -> dict[str, torch.Tensor]:
    """Run the UNet on (B, 4, h, w) latents and return {"s5","s4","s3"} -> (B, C, h', w').

    With ``stop_early`` the forward is aborted right after s3 (same values, less compute).
    With ``freeu`` the decoder runs with GeoAware-SC's FreeU and the maps carry its backbone
    factor (see the module docstring).
    """
    feats: dict[str, torch.Tensor] = {}
    post: Callable[[torch.Tensor], torch.Tensor] = freeu.backbone if freeu else (lambda t: t)

    def hook(name: str, stop: bool):
        def fn(_module: Any, _inputs: Any, output: Any) -> None:
            feats[name] = post(_first(output))
            if stop:
                raise _StopUNet

        return fn

    handles = _freeu_hooks(unet, freeu) if freeu else []
    handles += [
        unet.up_blocks[0].resnets[1].register_forward_hook(hook("s5", False)),
        unet.up_blocks[1].attentions[1].register_forward_hook(hook("s4", False)),
        unet.up_blocks[2].attentions[1].register_forward_hook(hook("s3", stop_early)),
    ]
    try:
        t = torch.full((latents.shape[0],), timestep, dtype=torch.long, device=latents.device)
        unet(latents, t, encoder_hidden_states=encoder_hidden_states)
    except _StopUNet:
        pass
    finally:
        for h in handles:
            h.remove()
    if set(feats) != {"s5", "s4", "s3"}:
        raise RuntimeError(f"UNet hooks did not fire for all layers, got {sorted(feats)}")
    return feats


def stitch(tile_maps: torch.Tensor, offsets: Sequence[int], tile: int, canvas: int
           ) -> torch.Tensor:
    """Place (T, C, h, h) tile maps (T = len(offsets)**2, row-major over (y, x) offsets) into a
    (C, canvas/stride, canvas/stride) map, averaging overlaps. stride = tile / h."""
    n = len(offsets)
    if tile_maps.ndim != 4 or tile_maps.shape[0] != n * n:
        raise ValueError(f"expected ({n * n}, C, h, w) tile maps, got {tuple(tile_maps.shape)}")
    h = tile_maps.shape[-1]
    if tile % h or canvas * h % tile:
        raise ValueError(f"tile {tile} / map size {h} is not an integer stride for canvas {canvas}")
    stride = tile // h
    if any(o % stride for o in offsets):
        raise ValueError(f"tile offsets {tuple(offsets)} must be multiples of the stride {stride}")
    size = canvas // stride
    acc = tile_maps.new_zeros((tile_maps.shape[1], size, size), dtype=torch.float32)
    cnt = tile_maps.new_zeros((1, size, size), dtype=torch.float32)
    i = 0
    for oy in offsets:
        for ox in offsets:
            y, x = oy // stride, ox // stride
            acc[:, y:y + h, x:x + h] += tile_maps[i].float()
            cnt[:, y:y + h, x:x + h] += 1
            i += 1
    return acc / cnt


class SDDinoExtractor:
    """SD 1.5 + DINOv2 extractor (``components`` may be None for the part the fusion skips)."""

    name = "sd_dino"

    def __init__(self, sd: SDComponents | None, dino: DinoComponents | None,
                 config: FeatureConfig, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 batch_size: int = 1, identity: str | None = None,
                 adapter: torch.nn.Module | None = None) -> None:
        if config.uses_sd and sd is None:
            raise ValueError(f"fusion {config.fusion!r} needs the SD components")
        if config.uses_dino and dino is None:
            raise ValueError(f"fusion {config.fusion!r} needs the DINOv2 model")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if config.adapter and config.uses_dino and adapter is None:
            raise ValueError(f"adapter {config.adapter!r} is configured but not given")
        self.adapter = adapter.to(device=device, dtype=dtype).eval() if adapter is not None \
            else None
        self.sd, self.dino, self.config = sd, dino, config
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self._identity = identity
        if sd is not None:
            # channels_last convolutions: about 10 % less time for the UNet and the VAE encoder
            # on the CPU (``annotator bench`` ablations, BENCHMARKS.md); results unchanged
            for module in (sd.unet, sd.vae):
                module.to(memory_format=torch.channels_last)
        self._prompt_emb: torch.Tensor | None = None
        self._noise: torch.Tensor | None = None

    @property
    def fingerprint(self) -> str:
        if self._identity is not None:
            return self._identity
        parts: dict[str, object] = {"config": self.config.feature_fields(),
                                    "dtype": str(self.dtype)}
        parts["sd"] = self.sd.source if self.sd else None
        parts["dino"] = self.dino.source if self.dino else None
        return fingerprint(self.name, parts)

    # ---- SD ---------------------------------------------------------------------------------
    def prompt_embedding(self) -> torch.Tensor:
        """(1, 77, D) text embedding of ``config.prompt`` (encoded once, kept)."""
        if self._prompt_emb is None:
            assert self.sd is not None
            tok = self.sd.tokenizer
            ids = tok([self.config.prompt_for("")], padding="max_length", truncation=True,
                      max_length=tok.model_max_length, return_tensors="pt").input_ids
            with torch.inference_mode():
                emb = self.sd.text_encoder(ids.to(self.device))[0]
            self._prompt_emb = emb.to(self.dtype)
        return self._prompt_emb

    def noise(self) -> torch.Tensor:
        """(1, 4, tile/8, tile/8) fixed noise from a CPU generator seeded ``config.seed``."""
        if self._noise is None:
            assert self.sd is not None
            lat = self.config.sd_tile // 8
            gen = torch.Generator(device="cpu").manual_seed(self.config.seed)
            ch = self.sd.unet.config.in_channels
            self._noise = torch.randn((1, ch, lat, lat), generator=gen)
        return self._noise

    def tiles(self, canvas: np.ndarray) -> torch.Tensor:
        """(S, S, 3) uint8 canvas -> (T, 3, tile, tile) float in [-1, 1], row-major (y, x)."""
        t, offs = self.config.sd_tile, self.config.sd_tile_offsets
        crops = [canvas[oy:oy + t, ox:ox + t] for oy in offs for ox in offs]
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()
        return x / 127.5 - 1.0

    @torch.inference_mode()
    def sd_tile_features(self, pixels: torch.Tensor, stop_early: bool = True
                         ) -> dict[str, torch.Tensor]:
        """(B, 3, tile, tile) pixels in [-1, 1] -> {"s5", "s4", "s3"}: (B, C, h, w) float32."""
        assert self.sd is not None
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
        vae, sched = self.sd.vae, self.sd.scheduler
        x = pixels.to(self.device, self.dtype)
        lat = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        noise = self.noise().to(lat.device, lat.dtype).expand_as(lat)
        if self.config.add_noise:
            t = torch.tensor([self.config.timestep], dtype=torch.long)
            noisy = sched.add_noise(lat.float().cpu(), noise.float().cpu(), t)
            noisy = noisy.to(self.device, self.dtype)
        else:  # CleanDIFT: the clean latent
            noisy = lat
        emb = self.prompt_embedding().expand(lat.shape[0], -1, -1)
        freeu = FreeU.for_unet(self.sd.unet) if self.config.freeu else None
        feats = unet_features(self.sd.unet, noisy, self.config.timestep, emb, stop_early, freeu)
        return {k: v.float().cpu() for k, v in feats.items()}

    def _sd_maps(self, canvases: list[np.ndarray]) -> list[dict[str, torch.Tensor]]:
        cfg = self.config
        pix = torch.cat([self.tiles(c) for c in canvases])
        feats = self.sd_tile_features(pix)
        n_t = len(cfg.sd_tile_offsets) ** 2
        out = []
        for i in range(len(canvases)):
            out.append({k: stitch(feats[k][i * n_t:(i + 1) * n_t], cfg.sd_tile_offsets,
                                  cfg.sd_tile, cfg.sd_size) for k in cfg.sd_layers})
        return out

    # ---- DINO -------------------------------------------------------------------------------
    @torch.inference_mode()
    def dino_features(self, canvases: list[np.ndarray]) -> torch.Tensor:
        """(S, S, 3) uint8 canvases -> (B, C, S/14, S/14) float32 from hidden_states[dino_layer]."""
        assert self.dino is not None
        model = self.dino.model
        x = torch.from_numpy(np.stack(canvases)).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.device, self.dtype)
        out = model(pixel_values=x, output_hidden_states=True)
        n_hidden = len(out.hidden_states)
        if not 0 <= self.config.dino_layer < n_hidden:
            raise ValueError(f"dino_layer {self.config.dino_layer} out of range: the model has "
                             f"{n_hidden} hidden states")
        h = out.hidden_states[self.config.dino_layer]
        g = x.shape[-1] // self.config.dino_patch
        skip = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
        tokens = h[:, skip:]
        if tokens.shape[1] != g * g:
            raise RuntimeError(f"expected {g * g} patch tokens, got {tokens.shape[1]}")
        maps = tokens.reshape(h.shape[0], g, g, -1).permute(0, 3, 1, 2)
        if self.adapter is not None:  # on each whole padded map (GroupNorm statistics)
            maps = self.adapter(maps.contiguous())
        return maps.float().cpu()

    # ---- interface --------------------------------------------------------------------------
    def extract(self, images: Sequence[np.ndarray]) -> list[FeatureMaps]:
        cfg = self.config
        imgs = [check_image(im) for im in images]
        result: list[FeatureMaps] = []
        for start in range(0, len(imgs), self.batch_size):
            batch = imgs[start:start + self.batch_size]
            layers: list[dict[str, torch.Tensor]] = [{} for _ in batch]
            if cfg.uses_sd:
                lbs = [Letterbox.fit(im.shape[1], im.shape[0], cfg.sd_size) for im in batch]
                for d, m in zip(layers, self._sd_maps([lb.apply(im)
                                                       for lb, im in zip(lbs, batch)])):
                    d.update(m)
            if cfg.uses_dino:
                lbs = [Letterbox.fit(im.shape[1], im.shape[0], cfg.dino_size) for im in batch]
                dino = self.dino_features([lb.apply(im) for lb, im in zip(lbs, batch)])
                for d, m in zip(layers, dino):
                    d["dino"] = m.contiguous()
            for im, d in zip(batch, layers):
                lb = Letterbox.fit(im.shape[1], im.shape[0], cfg.canvas_size)
                result.append(FeatureMaps(layers=d, letterbox=lb, grid=cfg.grid))
        return result

    def describe(self, maps: FeatureMaps) -> torch.Tensor:
        return fusion.fuse(self.config.fusion, maps.layers, maps.grid, self.config.pca_dim)

    def describe_pair(self, maps_a: FeatureMaps, maps_b: FeatureMaps
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        return fusion.fuse_pair(self.config.fusion, maps_a.layers, maps_b.layers, maps_a.grid,
                                self.config.pca_dim)
