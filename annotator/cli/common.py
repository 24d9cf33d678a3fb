"""Engine options shared by the headless commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from annotator.domain.project import ProjectSettings

EXTRACTORS = ("sd-dino", "content")
PRESET_NAMES = ("paper", "fast", "geoaware", "diy")  # annotator.features.config.PRESETS


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    defaults = ProjectSettings()
    g = p.add_argument_group("engine")
    g.add_argument("--extractor", choices=EXTRACTORS, default="sd-dino",
                   help="sd-dino (the product) or content (weight-free colour/gradient "
                        "descriptor: geometry checks only, not semantic)")
    g.add_argument("--sd-model", default=None,
                   help=f"SD 1.5 hub id or local folder (default: env ANNOTATOR_SD_MODEL or "
                        f"{defaults.sd_model})")
    g.add_argument("--dino-model", default=None,
                   help=f"DINOv2 hub id or local folder (default: env ANNOTATOR_DINO_MODEL or "
                        f"{defaults.dino_model})")
    g.add_argument("--preset", default=None, choices=PRESET_NAMES,
                   help="feature preset: paper (default; A Tale of Two Features), fast, geoaware "
                        "(GeoAware-SC zero-shot) or diy (DIY-SC DINOv2 adapter)")
    g.add_argument("--sd-unet", default=None,
                   help="UNet state dict replacing SD 1.5's: a .safetensors file or "
                        "owner/repo/file.safetensors on the hub (CleanDIFT: CompVis/cleandift/"
                        "cleandift_sd15_unet.safetensors); switches to clean latents, t=261, no "
                        "FreeU and the prompt 'a photo of a {category}' (default: env "
                        "ANNOTATOR_SD_UNET)")
    g.add_argument("--diy-checkpoint", default=None,
                   help="local DIY-SC adapter checkpoint for the diy preset (default: env "
                        "ANNOTATOR_DIY_CHECKPOINT, else downloaded once and sha256-checked)")
    g.add_argument("--flip-criterion", default=None, choices=("cycle", "mutual_nn"),
                   help="how the flipped reference wins (default: the preset's)")
    g.add_argument("--fusion", default=None, choices=("copca", "concat", "dino", "sd"))
    g.add_argument("--feature-config", type=Path, default=None,
                   help="JSON file of FeatureConfig fields overriding the preset")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    g.add_argument("--batch-size", type=int, default=1)
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="flip-aware matching with the schema's left/right partners")
    g.add_argument("--soft-argmax", action=argparse.BooleanOptionalAction, default=None,
                   help="window soft-argmax refinement (default on; off for the content "
                        "descriptor)")
    g.add_argument("--cache-dir", default=None,
                   help="feature cache folder (default: the user cache folder)")
    g.add_argument("--cache-cap-gb", type=_positive_gb, default=20.0,
                   help="feature cache size cap in GB (> 0; default 20)")
    g.add_argument("--no-cache", action="store_true", help="do not use the feature cache")


def _positive_gb(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r}: the cache cap must be a number > 0")
    return value


def feature_config(args: argparse.Namespace) -> Any:
    """The FeatureConfig chosen by ``--preset``, ``--feature-config`` and the flags."""
    from annotator.features.config import FeatureConfig, preset

    overrides: dict[str, Any] = {}
    if args.feature_config is not None:
        try:
            raw = json.loads(args.feature_config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"--feature-config {args.feature_config}: {exc}") from None
        known = set(FeatureConfig.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SystemExit(f"--feature-config {args.feature_config}: unknown fields {unknown}")
        overrides.update({k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    name = args.preset or overrides.pop("preset", None) or "paper"
    if args.fusion:
        overrides["fusion"] = args.fusion
    if args.flip is not None:
        overrides["flip"] = args.flip
    if getattr(args, "flip_criterion", None):
        overrides["flip_criterion"] = args.flip_criterion
    if args.soft_argmax is False:
        overrides["softargmax_window"] = 0
    try:
        base = preset(name) if name in PRESET_NAMES else preset("paper", preset=name)
        return base.replace(**overrides) if overrides else base
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"invalid feature configuration: {exc}") from None


def engine_from_args(args: argparse.Namespace, category: str = "") -> Any:
    """Build the engine the flags describe (models load lazily on first use); ``category``
    fills a "{category}" prompt."""
    from annotator.engine import Engine
    from annotator.features.cache import CacheFolderError, FeatureCache

    try:
        cache = None if args.no_cache else FeatureCache(
            args.cache_dir, disk_bytes=int(args.cache_cap_gb * (1 << 30)))
    except CacheFolderError as exc:
        raise SystemExit(f"--cache-dir: {exc}") from None
    config = feature_config(args)
    if args.extractor == "content":
        from annotator.features.content import ContentExtractor

        if args.soft_argmax is None:  # tuned for SD+DINO similarities; content uses hard argmax
            config = config.replace(softargmax_window=0)
        return Engine(config=config, cache=cache, extractor=ContentExtractor())
    return Engine.from_pretrained(
        sd_model=args.sd_model,
        dino_model=args.dino_model,
        preset=config,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        feature_cache=cache,
        sd_unet=getattr(args, "sd_unet", None),
        adapter_checkpoint=getattr(args, "diy_checkpoint", None),
        category=category,
    )


def tqdm_task_state(total: int, desc: str) -> tuple[Any, Any]:
    """(tqdm bar over ``total`` images, the :class:`~annotator.jobs.progress.TaskState` a job
    reports through, which moves the bar)."""
    from tqdm import tqdm

    from annotator.jobs.progress import TaskState

    bar = tqdm(total=total, unit="img", desc=desc)

    def on_progress(p: Any) -> None:
        bar.n = p.done
        bar.refresh()

    return bar, TaskState(on_progress)
