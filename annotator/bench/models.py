"""Full-size random-weight models for the benchmark (DESIGN.md sections 6 and 8).

The JSON configurations of SD 1.5's UNet, VAE, CLIP text encoder, DDPM scheduler and of DINOv2-base
ship in ``benchmarks/configs`` (same shapes and FLOPs as the real weights; nothing to download).
``build_components`` builds them with ``from_config`` and seeded random weights and returns the
same ``SDComponents`` / ``DinoComponents`` containers that ``annotator.features.models`` loads, so
the product's ``SDDinoExtractor`` runs on them unchanged. Tests pass scaled-down configurations.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from annotator.features.models import DinoComponents, SDComponents

log = logging.getLogger(__name__)

CONFIG_NAMES = ("unet", "vae", "text_encoder", "scheduler", "dinov2")


def default_config_dir() -> Path:
    """``benchmarks/configs`` of the source checkout this package lives in."""
    return Path(__file__).resolve().parents[2] / "benchmarks" / "configs"


def load_configs(directory: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """{name: config dict} for every name of CONFIG_NAMES from ``directory``/name.json."""
    folder = Path(directory) if directory is not None else default_config_dir()
    out = {}
    for name in CONFIG_NAMES:
        path = folder / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"benchmark config {path} is missing (expected the JSON "
                                    f"configs {', '.join(CONFIG_NAMES)} in {folder})")
        out[name] = json.loads(path.read_text())
    return out


def _tokenizer(max_length: int) -> Any:
    """A CLIP tokenizer with a tiny vocabulary: the empty prompt gives the same (1, 77) id shape
    as the real one, which is all the benchmark needs (the text encoder's cost is per token)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        letters = "abcdefghijklmnopqrstuvwxyz"
        tokens = (["<|startoftext|>", "<|endoftext|>"] + list(letters)
                  + [c + "</w>" for c in letters])
        (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(vocab_file=str(folder / "vocab.json"),
                             merges_file=str(folder / "merges.txt"), model_max_length=max_length)


def _clean(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k != "model_type"}


def build_components(configs: dict[str, dict[str, Any]] | None = None, device: str = "cpu",
                     seed: int = 0, keep_decoder: bool = True
                     ) -> tuple[SDComponents, DinoComponents]:
    """Random-weight SD 1.5 parts and DINOv2 from ``configs`` (default: the shipped full-size
    ones), fp32, eval mode, on ``device``. ``keep_decoder=False`` drops the VAE decoder (the
    product never needs it; the reference-style baseline does)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, Dinov2Config, Dinov2Model

    cfg = configs if configs is not None else load_configs()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(_clean(cfg["unet"]))
    vae = AutoencoderKL.from_config(_clean(cfg["vae"]))
    if not keep_decoder:
        vae.decoder = None
        vae.post_quant_conv = None
    text = CLIPTextModel(CLIPTextConfig(**_clean(cfg["text_encoder"])))
    sched = DDPMScheduler.from_config(_clean(cfg["scheduler"]))
    dino = Dinov2Model(Dinov2Config(**_clean(cfg["dinov2"])))
    for m in (unet, vae, text, dino):
        m.to(device=device).eval().requires_grad_(False)
    tok = _tokenizer(int(cfg["text_encoder"].get("max_position_embeddings", 77)))
    sd = SDComponents(vae=vae, unet=unet, text_encoder=text, tokenizer=tok, scheduler=sched,
                      source="random:" + "-".join(str(c) for c in
                                                  cfg["unet"]["block_out_channels"]))
    dn = DinoComponents(model=dino, source=f"random:dinov2-{cfg['dinov2']['hidden_size']}")
    log.info("built random-weight models: UNet %.0f M, VAE %.0f M, text %.0f M, DINOv2 %.0f M "
             "parameters", *(sum(p.numel() for p in m.parameters()) / 1e6
                             for m in (unet, vae, text, dino)))
    return sd, dn


def tiny_configs() -> dict[str, dict[str, Any]]:
    """Scaled-down configurations with the SD 1.5 / DINOv2 layouts (for tests)."""
    return {
        "unet": {"sample_size": 16, "in_channels": 4, "out_channels": 4,
                 "block_out_channels": [16, 16, 32, 32], "layers_per_block": 2,
                 "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
                 "cross_attention_dim": 16, "attention_head_dim": 8, "norm_num_groups": 8},
        "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 4,
                "block_out_channels": [8, 8, 16, 16],
                "down_block_types": ["DownEncoderBlock2D"] * 4,
                "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 1,
                "norm_num_groups": 4, "sample_size": 128, "scaling_factor": 0.18215},
        "text_encoder": {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
                         "num_hidden_layers": 2, "vocab_size": 54, "max_position_embeddings": 77,
                         "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        "scheduler": {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                      "beta_schedule": "scaled_linear", "clip_sample": False},
        "dinov2": {"hidden_size": 16, "num_hidden_layers": 12, "num_attention_heads": 2,
                   "intermediate_size": 24, "patch_size": 14, "image_size": 56},
    }
