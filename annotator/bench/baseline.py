"""Reference-style baseline for the benchmark: what the sd-dino research code does per image.

fp32, one tile at a time (batch 1), the prompt tokenised and encoded again for every image, the
full UNet pass (no early stop; s5/s4/s3 taken by hooks), the VAE decoder run on the UNet's x0
estimate as the reference pipeline did, the classic (non-SDPA) attention in the UNet, the VAE and
DINOv2, and matching with a Python loop over the target cells. The raw s5/s4/s3/DINO maps are
the same as the product extractor's (same weights, noise, timestep, stitching), so the benchmark's
ratio compares like with like (tests/test_bench.py checks it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from annotator.features.config import FeatureConfig
from annotator.features.letterbox import Letterbox
from annotator.features.models import DinoComponents, SDComponents
from annotator.features.sd_dino import IMAGENET_MEAN, IMAGENET_STD, stitch

log = logging.getLogger(__name__)


@contextlib.contextmanager
def classic_attention(sd: SDComponents | None, dino: DinoComponents | None) -> Iterator[None]:
    """Temporarily switch the UNet/VAE to diffusers' classic AttnProcessor (explicit
    baddbmm + softmax, as before PyTorch SDPA) and DINOv2 to eager attention."""
    from diffusers.models.attention_processor import AttnProcessor

    saved: list[tuple[Any, Any]] = []
    if sd is not None:
        for m in (sd.unet, sd.vae):
            saved.append((m, m.attn_processors))
            m.set_attn_processor(AttnProcessor())
    dino_impl = None
    if dino is not None:
        dino_impl = dino.model.config._attn_implementation
        dino.model.set_attn_implementation("eager")
    try:
        yield
    finally:
        for m, procs in saved:
            m.set_attn_processor(procs)
        if dino is not None and dino_impl is not None:
            dino.model.set_attn_implementation(dino_impl)


class BaselineExtractor:
    """Raw maps {"s5", "s4", "s3", "dino"} of one image the way the reference code computes
    them. ``stage_seconds`` accumulates time per stage (text, vae_encode, unet, vae_decode,
    dino) when ``timer`` is given (a callable returning seconds, synchronising the device)."""

    def __init__(self, sd: SDComponents | None, dino: DinoComponents | None,
                 config: FeatureConfig, device: str = "cpu", decode: bool = True,
                 timer: Any = None) -> None:
        self.sd, self.dino, self.config, self.device = sd, dino, config, device
        self.decode = decode
        self.timer = timer
        self.stage_seconds: dict[str, float] = {}

    def _mark(self, stage: str, start: float | None) -> float | None:
        if self.timer is None:
            return None
        now = self.timer()
        if start is not None:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + now - start
        return now

    @torch.inference_mode()
    def _tile(self, pixels: torch.Tensor, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self.sd is not None
        vae, unet, sched = self.sd.vae, self.sd.unet, self.sd.scheduler
        cfg = self.config
        t0 = self._mark("", None)
        lat = vae.encode(pixels.to(self.device)).latent_dist.mean * vae.config.scaling_factor
        t0 = self._mark("vae_encode", t0)
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        noise = torch.randn((1, unet.config.in_channels, cfg.sd_tile // 8, cfg.sd_tile // 8),
                            generator=gen)
        t = torch.tensor([cfg.timestep], dtype=torch.long)
        noisy = sched.add_noise(lat.float().cpu(), noise, t).to(self.device)
        feats: dict[str, torch.Tensor] = {}

        def hook(name: str):
            def fn(_m: Any, _i: Any, out: Any) -> None:
                feats[name] = (out if isinstance(out, torch.Tensor) else out[0]
                               if isinstance(out, (tuple, list)) else out.sample)
            return fn

        handles = [unet.up_blocks[0].resnets[1].register_forward_hook(hook("s5")),
                   unet.up_blocks[1].attentions[1].register_forward_hook(hook("s4")),
                   unet.up_blocks[2].attentions[1].register_forward_hook(hook("s3"))]
        try:
            eps = unet(noisy, t.to(self.device), encoder_hidden_states=emb).sample
        finally:
            for h in handles:
                h.remove()
        t0 = self._mark("unet", t0)
        if self.decode:
            a = sched.alphas_cumprod[cfg.timestep].to(noisy.device)
            x0 = (noisy - (1 - a).sqrt() * eps) / a.sqrt()
            vae.decode(x0 / vae.config.scaling_factor)
            self._mark("vae_decode", t0)
        return {k: v.float().cpu() for k, v in feats.items()}

    @torch.inference_mode()
    def _encode_prompt(self) -> torch.Tensor:
        assert self.sd is not None
        t0 = self._mark("", None)
        tok = self.sd.tokenizer
        ids = tok([self.config.prompt], padding="max_length", truncation=True,
                  max_length=tok.model_max_length, return_tensors="pt").input_ids
        emb = self.sd.text_encoder(ids.to(self.device))[0]
        self._mark("text", t0)
        return emb

    @torch.inference_mode()
    def _dino(self, canvas: np.ndarray) -> torch.Tensor:
        assert self.dino is not None
        t0 = self._mark("", None)
        x = torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255.0
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
            IMAGENET_STD).view(1, 3, 1, 1)
        out = self.dino.model(pixel_values=x.to(self.device), output_hidden_states=True)
        h = out.hidden_states[self.config.dino_layer][0, 1:]
        g = canvas.shape[0] // self.config.dino_patch
        res = h.reshape(g, g, -1).permute(2, 0, 1).float().cpu()
        self._mark("dino", t0)
        return res

    def extract_one(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        cfg = self.config
        layers: dict[str, torch.Tensor] = {}
        with classic_attention(self.sd, self.dino):
            if cfg.uses_sd:
                emb = self._encode_prompt()  # again for every image, as the reference did
                canvas = Letterbox.fit(image.shape[1], image.shape[0], cfg.sd_size).apply(image)
                t, offs = cfg.sd_tile, cfg.sd_tile_offsets
                tiles = []
                for oy in offs:
                    for ox in offs:
                        crop = torch.from_numpy(np.ascontiguousarray(canvas[oy:oy + t,
                                                                            ox:ox + t]))
                        pix = crop.permute(2, 0, 1)[None].float() / 127.5 - 1.0
                        tiles.append(self._tile(pix, emb))
                for k in cfg.sd_layers:
                    layers[k] = stitch(torch.cat([f[k] for f in tiles]), offs, t, cfg.sd_size)
            if cfg.uses_dino:
                canvas = Letterbox.fit(image.shape[1], image.shape[0],
                                       cfg.dino_size).apply(image)
                layers["dino"] = self._dino(canvas)
        return layers


def loop_match(ref_desc: torch.Tensor, tgt_desc: torch.Tensor, cells: np.ndarray
               ) -> np.ndarray:
    """Reference-style matching: for each keypoint, a Python loop over every target cell
    computing the cosine similarity; returns (K, 2) best (col, row) cells."""
    g = ref_desc.shape[1]
    out = np.zeros((len(cells), 2), np.int64)
    for k, (cx, cy) in enumerate(cells):
        q = ref_desc[:, cy, cx]
        qn = q / q.norm().clamp_min(1e-8)
        best, best_sim = (0, 0), -float("inf")
        for row in range(g):
            for col in range(g):
                v = tgt_desc[:, row, col]
                s = float(qn @ v / v.norm().clamp_min(1e-8))
                if s > best_sim:
                    best_sim, best = s, (col, row)
        out[k] = best
    return out
