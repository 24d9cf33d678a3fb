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
tokens dropped -> (C, dino_size/14, dino_size/14).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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


def unet_features(unet: Any, latents: torch.Tensor, timestep: int,
                  encoder_hidden_states: torch.Tensor, stop_early: bool = True
                  ) -> dict[str, torch.Tensor]:
    """Run the UNet on (B, 4, h, w) latents and return {"s5","s4","s3"} -> (B, C, h', w').

    With ``stop_early`` the forward is aborted right after s3 (same values, less compute).
    """
    feats: dict[str, torch.Tensor] = {}

    def hook(name: str, stop: bool):
        def fn(_module: Any, _inputs: Any, output: Any) -> None:
            feats[name] = _first(output)
            if stop:
                raise _StopUNet

        return fn

    handles = [
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
                 batch_size: int = 1, identity: str | None = None) -> None:
        if config.uses_sd and sd is None:
            raise ValueError(f"fusion {config.fusion!r} needs the SD components")
        if config.uses_dino and dino is None:
            raise ValueError(f"fusion {config.fusion!r} needs the DINOv2 model")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
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
            ids = tok([self.config.prompt], padding="max_length", truncation=True,
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
        t = torch.tensor([self.config.timestep], dtype=torch.long)
        noisy = sched.add_noise(lat.float().cpu(), noise.float().cpu(), t)
        noisy = noisy.to(self.device, self.dtype)
        emb = self.prompt_embedding().expand(lat.shape[0], -1, -1)
        feats = unet_features(self.sd.unet, noisy, self.config.timestep, emb, stop_early)
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
        return tokens.reshape(h.shape[0], g, g, -1).permute(0, 3, 1, 2).float().cpu()

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
