"""Tiny random models with the real SD 1.5 / DINOv2 layouts, saved to disk for loading tests.

``build_tiny_models(path)`` writes a diffusers-style SD folder (unet/, vae/, text_encoder/,
tokenizer/, scheduler/, model_index.json) and a transformers DINOv2 folder, all safetensors, so
the engine loads them through exactly the same code path as real weights. ``TINY`` is a feature
configuration with the paper preset's structure (2 x 2 overlapping SD tiles, DINOv2 layer 12)
at small sizes: SD canvas 192 = tiles of 128 at offsets {0, 64}; DINOv2 at 168 -> 12 x 12 grid.
"""

from __future__ import annotations

import json
from pathlib import Path

from annotator.features.config import FeatureConfig

TINY = FeatureConfig(preset="tiny", sd_size=192, sd_tile=128, sd_tile_offsets=(0, 64),
                     dino_size=168, grid=12, pca_dim=16, dino_layer=12)
TINY_FAST = FeatureConfig(preset="tiny-fast", sd_size=128, sd_tile=128, sd_tile_offsets=(0,),
                          dino_size=112, grid=8, pca_dim=16, dino_layer=12)


def _write_tokenizer(folder: Path, specials_last: bool = False) -> None:
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tokens = list(letters) + [c + "</w>" for c in letters]
    # OWL detectors mask a query whose first token id is 0: real CLIP has BOS = 49406
    tokens = tokens + specials if specials_last else specials + tokens
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                        model_max_length=77)
    tok.save_pretrained(str(folder))


def build_tiny_models(path: str | Path) -> tuple[Path, Path]:
    """Build and save tiny SD 1.5-shaped and DINOv2 models under ``path``; return the folders."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, Dinov2Config, Dinov2Model

    root = Path(path)
    sd_dir, dino_dir = root / "tiny-sd", root / "tiny-dino"
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 16, 32, 32),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=4, sample_size=128, scaling_factor=0.18215)
    text = CLIPTextModel(CLIPTextConfig(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
        vocab_size=54, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False)
    unet.save_pretrained(str(sd_dir / "unet"), safe_serialization=True)
    vae.save_pretrained(str(sd_dir / "vae"), safe_serialization=True)
    text.save_pretrained(str(sd_dir / "text_encoder"), safe_serialization=True)
    scheduler.save_config(str(sd_dir / "scheduler"))
    _write_tokenizer(sd_dir / "tokenizer")
    (sd_dir / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"]}))
    dino = Dinov2Model(Dinov2Config(
        hidden_size=16, num_hidden_layers=12, num_attention_heads=2, intermediate_size=24,
        patch_size=14, image_size=56))
    dino.save_pretrained(str(dino_dir), safe_serialization=True)
    return sd_dir, dino_dir


def build_tiny_detector(path: str | Path) -> Path:
    """Save a tiny random Owlv2ForObjectDetection (the real class; 64 px input, 16 px patches,
    16 boxes) with its CLIP tokenizer under ``path``; returns the folder."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection

    folder = Path(path) / "tiny-owlv2"
    torch.manual_seed(0)
    cfg = Owlv2Config(
        text_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                         num_hidden_layers=2, vocab_size=54, max_position_embeddings=16,
                         bos_token_id=52, eos_token_id=53, pad_token_id=53),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                           num_hidden_layers=2, image_size=64, patch_size=16),
        projection_dim=16)
    model = Owlv2ForObjectDetection(cfg)
    with torch.no_grad():  # scores spread over (0, 1) and boxes near their patch cells
        model.class_head.logit_shift.weight.zero_()
        model.class_head.logit_shift.bias.zero_()
        model.class_head.logit_scale.weight.zero_()
        model.class_head.logit_scale.bias.fill_(2.0)  # scale elu(2) + 1 = 3
        model.box_head.dense2.weight.mul_(0.1)
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(str(folder), safe_serialization=True)
    _write_tokenizer(folder, specials_last=True)
    return folder


def build_tiny_dino768(path: str | Path) -> Path:
    """A DINOv2 with DINOv2-B's width (768 channels, what the DIY-SC adapter takes) but only 2
    layers and a narrow MLP, saved under ``path``; use ``dino_layer=2`` with it."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    folder = Path(path) / "tiny-dino768"
    torch.manual_seed(1)
    model = Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                                     intermediate_size=64, patch_size=14, image_size=56))
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder
