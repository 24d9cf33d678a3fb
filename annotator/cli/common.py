"""Options and run endings shared by the headless commands."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from annotator.domain.project import ProjectSettings
from annotator.jobs.engine_factory import EXTRACTORS, preset_names

PRESET_NAMES = preset_names()
PROJECT_OR_COCO = "project file (.kpproj, .kpproj.json) or COCO file"


def add_input_arguments(p: argparse.ArgumentParser, images_help: str, name: str = "input",
                        input_help: str = PROJECT_OR_COCO) -> None:
    """The positional project or COCO file (``name``) and the ``--images`` folder."""
    p.add_argument(name, type=Path, help=input_help)
    p.add_argument("--images", type=Path, default=None, help=images_help)


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


def settings_from_args(args: argparse.Namespace) -> tuple[ProjectSettings, dict[str, Any]]:
    """The engine flags as (ProjectSettings, FeatureConfig overrides from ``--feature-config``
    and ``--flip-criterion``), for :mod:`annotator.jobs.engine_factory`. SystemExit names a
    bad flag or file."""
    overrides: dict[str, Any] = {}
    if args.feature_config is not None:
        try:
            raw = json.loads(args.feature_config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"--feature-config {args.feature_config}: {exc}") from None
        if not isinstance(raw, dict):
            raise SystemExit(f"--feature-config {args.feature_config}: not a JSON object")
        overrides.update({k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    if getattr(args, "flip_criterion", None):
        overrides["flip_criterion"] = args.flip_criterion
    settings = ProjectSettings(
        sd_model=args.sd_model or "", dino_model=args.dino_model or "",
        preset=args.preset or overrides.pop("preset", None) or "paper",
        fusion=args.fusion or None, device=args.device, dtype=args.dtype, flip=args.flip,
        soft_argmax=args.soft_argmax, cache_dir=args.cache_dir or "",
        cache_cap_gb=args.cache_cap_gb, sd_unet=getattr(args, "sd_unet", None) or "",
        diy_checkpoint=getattr(args, "diy_checkpoint", None) or "")
    return settings, overrides


def feature_config(args: argparse.Namespace) -> Any:
    """The FeatureConfig chosen by ``--preset``, ``--feature-config`` and the flags."""
    from annotator.jobs.engine_factory import EngineSettingsError, resolve

    settings, overrides = settings_from_args(args)
    try:
        return resolve(settings, extractor=args.extractor, config_overrides=overrides)[0]
    except EngineSettingsError as exc:
        raise SystemExit(f"invalid feature configuration: {exc}") from None


def engine_builder(args: argparse.Namespace, category: str = "") -> Callable[[], Any]:
    """A picklable callable building the engine the flags describe: the engine factory with
    the settings and options of the flags bound (what each Ray actor calls)."""
    from annotator.jobs.engine_factory import build_engine

    settings, overrides = settings_from_args(args)
    return functools.partial(build_engine, settings, extractor=args.extractor,
                             use_cache=not args.no_cache, batch_size=args.batch_size,
                             config_overrides=overrides, category=category)


def engine_from_args(args: argparse.Namespace, category: str = "") -> Any:
    """Build the engine the flags describe (models load lazily on first use); ``category``
    fills a "{category}" prompt."""
    from annotator.jobs.engine_factory import EngineSettingsError

    build = engine_builder(args, category)
    try:
        return build()
    except EngineSettingsError as exc:
        raise SystemExit(f"invalid feature configuration: {exc}") from None
    except ValueError as exc:  # the cache folder (CacheFolderError)
        raise SystemExit(f"--cache-dir: {exc}") from None


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


def stopped(bar: Any, exc: BaseException, interrupted: str) -> int:
    """Close ``bar`` and say why a run ended early; its exit status. ``exc``: an interruption
    (Ctrl-C or a cancel: ``interrupted`` is printed, 130), a ValueError (bad input, 2) or a
    ModelLoadError (2)."""
    from annotator.jobs.progress import Cancelled

    bar.close()
    if isinstance(exc, (KeyboardInterrupt, Cancelled)):
        print(interrupted, file=sys.stderr)
        return 130
    if isinstance(exc, ValueError):
        print(f"error: {exc}", file=sys.stderr)
    else:
        print(f"cannot load the models:\n{exc}", file=sys.stderr)
    return 2
