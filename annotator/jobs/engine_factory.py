"""The one way to build an engine: from :class:`ProjectSettings` (the GUI's project, or the
settings the CLI builds from its flags), for the GUI worker, the CLI, Ray actors and the
benchmark alike.

Presets are resolved here only: a setting left ``None`` (fusion, flip, soft_argmax) means the
preset's own value, so a project with ``preset="geoaware"`` gets GeoAware's fusion, window and
flip criterion whichever path wrote the project file. ``annotator.features`` is imported
lazily (its config module is torch-free; the engine and the cache load torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from annotator.domain.project import ProjectSettings

if TYPE_CHECKING:
    from annotator.engine import Engine
    from annotator.features.config import FeatureConfig, ModelSource, RuntimeConfig

#: extractors: "sd-dino" (the product) or "content" (weight-free colour/gradient descriptor)
EXTRACTORS = ("sd-dino", "content")
#: propagation flips (with the schema's left/right partners) unless the project says otherwise
#: or the preset has no flip: DIY-SC's adapter is matched without one (DESIGN.md section 9)
_NO_FLIP_PRESETS = ("diy",)
#: presets whose method includes the window soft-argmax (GeoAware-SC, DIY-SC): on by default.
#: paper and fast default to hard argmax: on real DINOv2 features the window moves points off
#: exact matches (BENCHMARKS.md "Real images"); ``soft_argmax=True`` gives their window (11)
_SOFT_ARGMAX_PRESETS = ("geoaware", "diy")


class EngineSettingsError(ValueError):
    """Settings that describe no valid engine (an unknown field, fusion, device...)."""


def model_load_error() -> type[Exception]:
    """The exception class of weights that cannot be loaded (ModelLoadError, raised on the
    engine's first use), for callers that stay out of annotator.features (the CLI)."""
    from annotator.features.models import ModelLoadError

    return ModelLoadError


def preset_names() -> tuple[str, ...]:
    """The named presets (annotator.features.config.PRESETS)."""
    from annotator.features.config import PRESETS

    return tuple(PRESETS)


def fusion_names() -> tuple[str, ...]:
    """The fusions a setting may name (annotator.features.config.FUSIONS)."""
    from annotator.features.config import FUSIONS

    return tuple(FUSIONS)


@dataclass(frozen=True)
class PresetValues:
    """What the settings that may be left ``None`` mean for a preset."""

    fusion: str
    flip: bool
    soft_argmax: bool


def preset_values(name: str) -> PresetValues:
    """The preset's own fusion, propagation flip and soft-argmax (a custom name: paper's)."""
    base = _base_config(name)
    return PresetValues(base.fusion, name not in _NO_FLIP_PRESETS,
                        name in _SOFT_ARGMAX_PRESETS and base.softargmax_window > 0)


def propagation_flip(settings: ProjectSettings) -> bool:
    """Whether propagation also matches from the mirrored reference: the project's setting,
    else the preset's own."""
    if settings.flip is not None:
        return settings.flip
    return preset_values(settings.preset).flip


def _base_config(name: str) -> FeatureConfig:
    from annotator.features.config import PRESETS, preset

    return preset(name) if name in PRESETS else preset("paper", preset=name)


def resolve(settings: ProjectSettings, *, extractor: str = "sd-dino", batch_size: int = 1,
            config_overrides: Mapping[str, Any] | None = None, category: str = ""
            ) -> tuple[FeatureConfig, ModelSource, RuntimeConfig]:
    """(FeatureConfig, ModelSource, RuntimeConfig) of ``settings``: the preset, then
    ``config_overrides`` (FeatureConfig fields), then the settings that are not ``None``.
    Model fields left "" fall back to the environment (ANNOTATOR_SD_MODEL, ...) or the
    defaults. A UNet replacement switches to the CleanDIFT settings; ``category`` fills a
    "{category}" prompt. Raises EngineSettingsError for an invalid combination."""
    from annotator.features.config import (
        FeatureConfig,
        ModelSource,
        RuntimeConfig,
        with_clean_unet,
    )

    if extractor not in EXTRACTORS:
        raise EngineSettingsError(f"extractor must be one of {EXTRACTORS}, got {extractor!r}")
    overrides = dict(config_overrides or {})
    unknown = sorted(set(overrides) - set(FeatureConfig.__dataclass_fields__))
    if unknown:
        raise EngineSettingsError(f"unknown FeatureConfig fields {unknown}")
    if settings.fusion is not None:
        overrides["fusion"] = settings.fusion
    if settings.flip is not None:
        overrides["flip"] = settings.flip
    soft = settings.soft_argmax
    if soft is None:  # the preset's own; the content descriptor always uses hard argmax
        soft = extractor != "content" and preset_values(settings.preset).soft_argmax
    if not soft:
        overrides["softargmax_window"] = 0
    try:
        base = _base_config(settings.preset)
        config = base.replace(**overrides) if overrides else base
        runtime = RuntimeConfig(settings.device, settings.dtype, batch_size)
    except (TypeError, ValueError) as exc:
        raise EngineSettingsError(str(exc)) from None
    source = ModelSource.from_env(sd_model=settings.sd_model or None,
                                  dino_model=settings.dino_model or None,
                                  sd_unet=settings.sd_unet or None,
                                  adapter_checkpoint=settings.diy_checkpoint or None)
    if source.sd_unet and config.uses_sd:
        config = with_clean_unet(config)
    if category:  # else a "{category}" template stays for ``Engine.for_category``
        config = config.replace(prompt=config.prompt_for(category))
    return config, source, runtime


def build_engine(settings: ProjectSettings, *, extractor: str = "sd-dino",
                 use_cache: bool = True, cache_dir: str | None = None, batch_size: int = 1,
                 config_overrides: Mapping[str, Any] | None = None, category: str = ""
                 ) -> Engine:
    """The engine for ``settings`` (models load lazily on first use) with a disk feature
    cache in ``cache_dir`` or ``settings.cache_dir`` (None/"": the user cache folder), capped
    at ``settings.cache_cap_gb``, unless ``use_cache`` is False. Picklable with
    ``functools.partial`` (Ray actors). Raises EngineSettingsError, or CacheFolderError (a
    ValueError) for an unusable cache folder."""
    from annotator.engine import Engine
    from annotator.features.cache import FeatureCache

    config, source, runtime = resolve(settings, extractor=extractor, batch_size=batch_size,
                                      config_overrides=config_overrides, category=category)
    cache = FeatureCache(cache_dir or settings.cache_dir or None,
                         disk_bytes=int(settings.cache_cap_gb * (1 << 30))) if use_cache else None
    if extractor == "content":
        from annotator.features.content import ContentExtractor

        return Engine(source, config, runtime, cache, extractor=ContentExtractor())
    return Engine(source, config, runtime, cache)
